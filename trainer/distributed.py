"""Collectives between the training processes, on the device their backend accepts.

NCCL (plain DDP on GPUs) only moves CUDA tensors: a CPU tensor fails on the first call. Gloo (the CPU
runs, ``sft_config`` sets it for more than one CPU process) takes CPU tensors. So every collective in
``trainer/`` builds its tensor on ``collective_device(backend, local_rank)``: ``cuda:<local_rank>`` (the
process's GPU, the one accelerate made current) when the backend is NCCL, the CPU otherwise. A mixed
backend such as ``cpu:gloo,cuda:nccl`` takes CPU tensors through its gloo half.
"""

from __future__ import annotations

import torch


def collective_device(backend: str, local_rank: int) -> torch.device:
    """The device a collective's tensor must live on under ``backend`` (``dist.get_backend()``'s name)."""
    parts = {p.split(":")[-1].strip().lower() for p in str(backend).split(",")}
    if "nccl" in parts and "gloo" not in parts:
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def any_rank(flag: bool, world_size: int, local_rank: int) -> bool:
    """True on every process when ``flag`` is true on any (a MAX all-reduce); ``flag`` for one process.

    All processes must stop at the same step, or the others hang in the next collective.
    """
    if world_size <= 1:
        return flag
    import torch.distributed as dist

    device = collective_device(dist.get_backend(), local_rank)
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
