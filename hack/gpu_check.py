"""The GPU check behind ``hack/gpu-check.sh``: phi-3-mini-shaped QLoRA through the shipped code path.

    python3 hack/gpu_check.py                 # on one CUDA GPU (hack/gpu-check.sh installs the wheels first)
    .venv/bin/python hack/gpu_check.py --cpu-smoke   # here: the same steps on a tiny shape, on the CPU

Steps, each measured in a process of its own (so peak memory is its own):
1. ``deps``: the environment against the pinned requirements of what the check imports (fails fast, with
   the missing or conflicting packages named, before any model is built).
2. Random weights of phi-3-mini's dimensions built on the GPU (bfloat16) and saved, with the tiny preset's
   tokenizer (vocabulary padded to 32064), and generated dolly-like conversations (as in
   ``benchmarks/trainer_throughput.py``).
3. ``ours``: ``trainer.train.build_trainer`` on this project's qlora template (4-bit NF4, one example per
   step, the memory estimator's checkpointing): tokens/s after warm-up, MFU (6 x matmul parameters per
   token over the GPU's dense bf16 peak), peak ``torch.cuda.max_memory_allocated`` against
   ``presets.memory.estimate`` for the same micro-batch, sequence length and checkpointing. Then
   ``ours+packing``: the same with ``packing: true`` (bfd, a step is one row of up to max_length tokens),
   the estimate for that row.
4. ``baseline``: KAITO's default beside it (TRL SFTTrainer, default collator, one example per step, no
   packing, gradient checkpointing, cache flush every step): the same figures, estimated for its longest
   example.
5. ``parity``: where flash-attn is installed, one packed row (three conversations end to end, positions
   restarting, no attention mask and no cache, as TRL's padding-free collator and training pass them) through
   sdpa and through flash_attention_2, each against the conversations run one by one: max and mean absolute
   logit difference, and how many argmax tokens agree. Skipped, saying so, without it (the CPU smoke run
   compares sdpa with eager attention instead).

Prints one JSON object on stdout (progress on stderr). The status sink's ``kubernetes`` client is imported by
``trainer.train`` at module level but used only in the controller's pods; where the package is missing, a
stub stands in for it (said in the JSON), since its wheels and theirs would cost ~10 MiB of the budget.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import trainer_throughput as bench  # noqa: E402

# A CPU smoke shape: the check's steps in a minute or two, nothing measured that means anything.
bench.ARCHS["gpu-check-tiny"] = {
    "architecture": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 1024,
    "target_modules": bench.LLAMA_TARGETS,
}
# What the check imports beyond the device's torch, transformers, peft and accelerate, at the project's pins.
REQUIREMENTS = ("trl", "bitsandbytes", "datasets", "transformers", "peft", "accelerate")
LEARNING_RATE = 2e-4
SEED = 0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def stub_kubernetes() -> bool:
    """Put a stub ``kubernetes`` module in place when the package is missing; True if it did."""
    try:
        import kubernetes  # noqa: F401
    except ImportError:
        stub = types.ModuleType("kubernetes")
        parts = {
            "client": types.ModuleType("kubernetes.client"),
            "config": types.ModuleType("kubernetes.config"),
        }
        for name, module in parts.items():
            setattr(stub, name, module)
            sys.modules[f"kubernetes.{name}"] = module
        sys.modules["kubernetes"] = stub
        return True
    return False


def _unmet(name: str) -> list[str]:
    """The requirements of installed package ``name`` that the environment does not meet."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    problems = []
    for text in md.requires(name) or []:
        req = Requirement(text)
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            found = md.version(req.name)
        except md.PackageNotFoundError:
            problems.append(f"{name} needs {req}: not installed")
            continue
        if req.specifier and not req.specifier.contains(found, prereleases=True):
            problems.append(f"{name} needs {req}: {found} installed")
    return problems


def _bitsandbytes_library() -> str | None:
    """A problem when bitsandbytes lacks the CUDA library of torch's CUDA (fetch kept another), else None."""
    import importlib.util

    import torch

    spec = importlib.util.find_spec("bitsandbytes")
    if not torch.cuda.is_available() or spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent
    wanted = f"libbitsandbytes_cuda{(torch.version.cuda or '').replace('.', '')}.so"
    if (folder / wanted).exists():
        return None
    kept = sorted(p.name for p in folder.glob("libbitsandbytes_cuda*.so"))
    return f"bitsandbytes has no {wanted} for torch's CUDA {torch.version.cuda} (it has {kept}): fetch --cuda"


def check_deps() -> dict[str, Any]:
    """Installed versions of what the check needs, and every unmet requirement of theirs (pip check-like)."""
    import importlib.metadata as md

    versions: dict[str, str | None] = {}
    problems: list[str] = []
    for name in ("torch", *REQUIREMENTS):
        try:
            versions[name] = md.version(name)
            problems += _unmet(name) if name != "torch" else []
        except md.PackageNotFoundError:
            versions[name] = None
            problems.append(f"{name}: not installed")
    out: dict[str, Any] = {"versions": versions, "problems": problems, "flash_attn": _flash_attn_version()}
    if versions["torch"]:
        import torch

        out["torch_cuda"] = torch.version.cuda
        library = _bitsandbytes_library() if versions["bitsandbytes"] else None
        problems += [library] if library else []
    return out


def _flash_attn_version() -> str | None:
    import importlib.metadata as md

    try:
        return md.version("flash_attn")
    except md.PackageNotFoundError:
        return None


def estimate_gib(arch: str, micro_batch: int, seq_len: int, checkpointing: bool) -> float | None:
    """presets.memory's allocator peak (what max_memory_allocated reports) for a catalog shape."""
    name = bench.ARCHS[arch].get("catalog")
    if not name:
        return None
    from presets.catalog import get_model
    from presets.memory import estimate

    found = estimate(
        get_model(name),
        "qlora",
        micro_batch=micro_batch,
        seq_len=seq_len,
        gradient_checkpointing=checkpointing,
        lora_r=8,
        target_modules=tuple(bench.ARCHS[arch]["target_modules"]),
    )
    return round(found.allocator_peak_gib, 2)


def parity(workdir: Path, arch: str) -> dict[str, Any]:
    """sdpa and flash_attention_2 on one packed row, each against the conversations run one by one."""
    import torch

    model_dir = workdir / f"model-{arch}"
    if not torch.cuda.is_available():  # the smoke run: the same code, with eager attention for flash's part
        smoke = packed_logits(model_dir, ("sdpa", "eager"), "cpu", "float32")
        return {"skipped": "no CUDA device", "cpu_sdpa_vs_eager": smoke}
    if _flash_attn_version() is None:
        return {"skipped": "flash_attn is not installed: no variable-length kernel to compare"}
    return packed_logits(model_dir, ("sdpa", "flash_attention_2"), "cuda", "bfloat16")


def packed_logits(model_dir: Path, kernels: tuple[str, str], device: str, dtype: str) -> dict[str, Any]:
    """Three conversations end to end in one row (positions restarting at each, no attention mask, as TRL's
    padding-free collator passes them) through each attention kernel, against each conversation alone."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(model_dir)
    rows = bench.dolly_like(3, seed=3)
    seqs = [list(tokenizer.apply_chat_template(r["messages"], return_dict=True)["input_ids"]) for r in rows]
    ids = torch.tensor([[t for s in seqs for t in s]], device=device)
    positions = torch.tensor([[p for s in seqs for p in range(len(s))]], device=device)
    out: dict[str, Any] = {"row_tokens": ids.shape[1], "sequences": [len(s) for s in seqs]}
    packed: dict[str, Any] = {}
    for attn in kernels:
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=getattr(torch, dtype), attn_implementation=attn, device_map={"": device}
        )
        with torch.no_grad():
            # no cache, as in training: with one transformers does not look for packed rows in position_ids
            row = model(input_ids=ids, position_ids=positions, use_cache=False)
            packed[attn] = row.logits[0].float()
            alone = torch.cat(
                [model(input_ids=torch.tensor([s], device=device)).logits[0].float() for s in seqs]
            )
        out[attn + "_packed_vs_alone"] = _compare(packed[attn], alone)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    out[f"{kernels[0]}_vs_{kernels[1]}_packed"] = _compare(packed[kernels[0]], packed[kernels[1]])
    return out


def _compare(a: Any, b: Any) -> dict[str, float]:
    diff = (a - b).abs()
    return {
        "max_abs_logit_diff": round(diff.max().item(), 4),
        "mean_abs_logit_diff": round(diff.mean().item(), 5),
        "argmax_agreement": round((a.argmax(-1) == b.argmax(-1)).float().mean().item(), 4),
    }


def child(part: str, job: dict) -> None:
    """One step in this process; prints its result as the last line of stdout."""
    stubbed = stub_kubernetes()
    if part == "parity":
        result = parity(Path(job["workdir"]), job["arch"])
    else:
        job = {**job, "workdir": Path(job["workdir"])}
        stdout = os.dup(1)
        result = bench.run(job)  # it points stdout at stderr; the result goes to the saved stdout
        os.dup2(stdout, 1)
    result["kubernetes_stub"] = stubbed
    print("RESULT " + json.dumps(result), flush=True)


def _spawn(part: str, job: dict, timeout: float) -> dict[str, Any]:
    encoded = json.dumps({**job, "workdir": str(job["workdir"])})
    cmd = [sys.executable, __file__, "--child", part, "--job", encoded]
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stderr[-6000:])
        return {"error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-1500:]}
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def against_baseline(result: dict[str, Any], memory: str) -> dict[str, float]:
    """Each of our sides' tokens/s and peak ``memory`` over the baseline's, where both were measured."""
    base, out = result.get("baseline", {}), {}
    for side in bench.OURS:
        ours = result.get(side, {})
        if "tokens_per_s" in ours and "tokens_per_s" in base:
            out[f"{side}_speedup_tokens_per_s"] = round(ours["tokens_per_s"] / base["tokens_per_s"], 2)
            out[f"{side}_memory_ratio"] = round(ours[memory] / base[memory], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shape on the CPU, a few steps")
    parser.add_argument("--tokens", type=int, help="tokens measured per side after warm-up")
    parser.add_argument("--budget-s", type=float, default=540.0, help="stop starting steps after this")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, json.loads(args.job))
        return 0
    started = time.perf_counter()
    deps = check_deps()
    _log(f"environment: {json.dumps(deps)}")
    if deps["problems"]:
        print(json.dumps({"ok": False, "error": "unmet requirements", "deps": deps}, indent=2))
        return 2
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu_smoke:
        print(json.dumps({"ok": False, "error": "no CUDA device (use --cpu-smoke to try the steps here)"}))
        return 2
    arch = "phi-3-mini" if cuda and not args.cpu_smoke else "gpu-check-tiny"
    max_length = 1024 if arch == "phi-3-mini" else 256
    tokens = args.tokens or (16384 if arch == "phi-3-mini" else 512)
    result: dict[str, Any] = {
        "ok": True,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu (smoke run: the figures mean nothing)",
        "arch": arch,
        "dimensions": {k: v for k, v in bench.ARCHS[arch].items() if k != "target_modules"},
        "lm_head_share_of_forward_flops": round(bench.lm_head_share(arch), 4),
        "deps": deps,
    }
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        workdir = Path(tmp)
        t = time.perf_counter()
        bench.build_model(arch, workdir / f"model-{arch}")
        if cuda:
            torch.cuda.empty_cache()  # the steps run in processes of their own
        rows = bench.fitting_rows(600, 0, max_length)
        (workdir / "rate").mkdir()
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), workdir / "rate" / "train.parquet")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(workdir / f"model-{arch}")
        lengths = bench._lengths(tokenizer, rows, max_length)
        mean = sum(lengths) / len(lengths)
        result["build_s"] = round(time.perf_counter() - t, 1)
        result["data"] = {"rows": len(rows), "mean_tokens": round(mean, 1), "longest": lengths[-1]}
        warmup = bench.WARMUP_SHARE * max_length
        per_step = {"ours": mean, bench.PACKED: max_length * 0.95, "baseline": mean}
        job = {
            "workdir": workdir,
            "arch": arch,
            "mode": "rate",
            "method": "qlora",
            "learning_rate": LEARNING_RATE,
            "max_length": max_length,
            "threads": 0,
        }
        for side in (*bench.OURS, "baseline"):
            left = args.budget_s - (time.perf_counter() - started)
            if left < 60:
                result[side] = {"error": "skipped: the check's time budget is spent"}
                continue
            steps = math.ceil((tokens + warmup) / per_step[side]) + 1
            _log(f"{side}: {steps} optimizer steps ({left:.0f} s left)")
            got = _spawn(side, {**job, "step": side, "length": {"max_steps": steps}}, timeout=left)
            if "error" not in got:
                key = "peak_gpu_mib" if "peak_gpu_mib" in got else "peak_rss_mib"
                seq_len = max_length if side == bench.PACKED else lengths[-1]
                est = estimate_gib(arch, got["micro_batch"], seq_len, got["gradient_checkpointing"])
                got["estimate_gib"] = est
                if est and key == "peak_gpu_mib":
                    got["measured_over_estimate"] = round(got[key] / 1024 / est, 3)
            result[side] = got
        left = args.budget_s - (time.perf_counter() - started)
        result["parity"] = (
            _spawn("parity", {"workdir": workdir, "arch": arch}, timeout=left)
            if left > 30
            else {"error": "skipped: the check's time budget is spent"}
        )
    result.update(against_baseline(result, "peak_gpu_mib" if cuda else "peak_rss_mib"))
    result["ok"] = all("error" not in result[k] for k in (*bench.OURS, "baseline", "parity"))
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
