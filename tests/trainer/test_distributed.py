"""Collectives on the device the backend takes: NCCL refuses CPU tensors, gloo takes them.

tests/trainer/test_ddp.py runs two real processes under gloo, which cannot see a CPU tensor handed to NCCL.
Here the stop check runs under a fake NCCL that refuses any tensor not on this process's GPU (no GPU is
needed: the tensor's requested device is checked, the tensor itself stays on the CPU)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

from trainer.checkpoint import CheckpointCallback
from trainer.distributed import any_rank, collective_device


@pytest.mark.parametrize(
    ("backend", "local_rank", "device"),
    [
        ("nccl", 0, torch.device("cuda", 0)),
        ("nccl", 3, torch.device("cuda", 3)),
        ("NCCL", 1, torch.device("cuda", 1)),
        ("gloo", 0, torch.device("cpu")),
        ("gloo", 2, torch.device("cpu")),
        ("cpu:gloo,cuda:nccl", 1, torch.device("cpu")),  # the gloo half takes CPU tensors
    ],
)
def test_collective_device_follows_the_backend(backend, local_rank, device):
    assert collective_device(backend, local_rank) == device


class FakeBackend:
    """A process group's all_reduce that refuses tensors off ``device``, as NCCL does with CPU tensors.

    ``torch.tensor`` is wrapped to remember the device each tensor was asked for and to build it on the
    CPU (there is no GPU here); every other process is taken to have ``others`` as its flag."""

    def __init__(self, monkeypatch, name: str, device: torch.device, others: int = 0) -> None:
        self.name, self.device, self.others = name, device, others
        self.asked: dict[int, torch.device] = {}
        self.reduced: list[torch.device] = []
        real_tensor = torch.tensor

        def tensor(data, *args, device=None, **kwargs):
            made = real_tensor(data, *args, **kwargs)
            self.asked[id(made)] = torch.device(device) if device is not None else made.device
            return made

        monkeypatch.setattr(torch, "tensor", tensor)
        monkeypatch.setattr(dist, "get_backend", lambda group=None: self.name)
        monkeypatch.setattr(dist, "all_reduce", self.all_reduce)

    def all_reduce(self, value, op=None, group=None, async_op=False):
        device = self.asked.get(id(value), value.device)
        if device != self.device:
            raise RuntimeError(f"{self.name}: tensors must be on {self.device}, got one on {device}")
        assert op == dist.ReduceOp.MAX
        self.reduced.append(device)
        value.fill_(max(int(value.item()), self.others))


def _step_end(
    stop: bool, world_size: int, local_rank: int, event: threading.Event | None = None
) -> SimpleNamespace:
    event = event or threading.Event()
    if stop:
        event.set()
    args = SimpleNamespace(world_size=world_size, local_process_index=local_rank)
    control = SimpleNamespace(should_save=False, should_training_stop=False)
    CheckpointCallback(0, event).on_step_end(args, SimpleNamespace(), control)
    return control


@pytest.mark.parametrize("stop_here", [True, False])
def test_stop_check_under_nccl_reduces_on_this_process_gpu(monkeypatch, stop_here):
    backend = FakeBackend(monkeypatch, "nccl", torch.device("cuda", 1), others=int(not stop_here))
    control = _step_end(stop_here, world_size=2, local_rank=1)
    assert backend.reduced == [torch.device("cuda", 1)]
    assert control.should_training_stop and control.should_save  # one rank stopping stops them all


def test_another_pods_sigterm_stops_this_process_as_stopped(monkeypatch):
    """Multi-node: SIGTERM reaches one pod's processes; the others stop at the same step and must end
    as stopped too (exit 143, resumable), not as finished (writing an unfinished adapter as complete)."""
    FakeBackend(monkeypatch, "gloo", torch.device("cpu"), others=1)
    here = threading.Event()
    assert _step_end(False, world_size=4, local_rank=0, event=here).should_training_stop
    assert here.is_set()


def test_stop_check_under_gloo_reduces_on_the_cpu(monkeypatch):
    backend = FakeBackend(monkeypatch, "gloo", torch.device("cpu"))
    control = _step_end(False, world_size=2, local_rank=1)
    assert backend.reduced == [torch.device("cpu")]
    assert not control.should_training_stop


def test_the_fake_nccl_refuses_a_cpu_tensor(monkeypatch):
    """What the stop check did before (a CPU tensor) fails under the fake, as it did under NCCL."""
    FakeBackend(monkeypatch, "nccl", torch.device("cuda", 0))
    with pytest.raises(RuntimeError, match="must be on cuda:0"):
        dist.all_reduce(torch.tensor([1]), op=dist.ReduceOp.MAX)


def test_one_process_needs_no_collective(monkeypatch):
    monkeypatch.setattr(dist, "all_reduce", lambda *a, **k: pytest.fail("no collective for one process"))
    assert any_rank(True, 1, 0) is True and any_rank(False, 1, 0) is False
    assert not _step_end(False, world_size=1, local_rank=0).should_training_stop
