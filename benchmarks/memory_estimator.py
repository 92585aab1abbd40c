"""The memory estimator (presets/memory.py) against measured peaks: LoRA/QLoRA steps on the CPU, peak RSS.

    .venv/bin/python benchmarks/memory_estimator.py              # all cases, ~3 minutes on 2 cores
    .venv/bin/python benchmarks/memory_estimator.py --steps 5 --micro-batch 2 --seq-len 512

Models (built locally, random weights, no download): the tiny preset (``presets.tiny``, 0.66M parameters)
and trainer_throughput's ``llama-22m`` (22M parameters, a 32000 vocabulary, 8 layers of h 256).

Each case runs in a fresh child process what the runtime's SFTTrainer path does to the model, with plain
transformers + peft + torch so it does not depend on trainer/: from_pretrained in fp32 (4-bit NF4 with
double quantisation and fp32 compute for QLoRA), the weights copied out of the checkpoint's file mapping,
peft's prepare_model_for_kbit_training (QLoRA) or gradient_checkpointing_enable (LoRA, checkpointing on),
get_peft_model (rank 8, dropout 0), TRL's add_fused_lm_head and, for QLoRA, the adapters cast to bf16 (both
as SFTTrainer's __init__ does), torch AdamW; then ``--steps`` forward/backward/step on random tokens of a
fixed micro-batch and length, the loss from the fused head (``fused_lm_head=True``) or, for the
``transformers`` loss case, from ``labels=``. Each is estimated with ``dtype="float32"`` and the matching
``trainer`` (trl or transformers).

Measured: the child's RSS right after its imports, then the peak RSS (VmHWM) over the training steps, its
high-water mark reset (``/proc/self/clear_refs`` 5) once the model is loaded so the loader's transient
copies do not count; peak minus the after-import RSS is what the estimate's ``allocator_peak_gib`` (fp32,
no CUDA overhead) is compared with. Two aids to read the gap: ``cpu_floor_mib``, the tiny LoRA case's
measured peak less its estimate (what the CPU runtime holds for any model), and ``fused_lm_head_alone``,
TRL's fused head forward and backward by itself at llama-22m's size: without Triton it runs as torch ops
that hold several fp32 tiles at once where the GPU kernel holds one.

Prints one JSON object: per case the estimate and its terms (MiB), the measured peak, estimate / measured,
the same above the floor and, for llama-22m's fused-head cases, with the measured CPU head in place of the
estimate's one-tile loss.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MIB = 1024**2
LORA_R = 8
LARGER = "llama-22m"  # benchmarks/trainer_throughput.py's ARCHS entry
# (model, method, gradient checkpointing, loss): the runtime's fused-head loss unless "transformers".
CASES = [
    ("tiny", "lora", True, "trl"),
    ("tiny", "qlora", True, "trl"),
    (LARGER, "lora", True, "trl"),
    (LARGER, "qlora", True, "trl"),
    (LARGER, "lora", False, "trl"),
    (LARGER, "qlora", False, "trl"),
    (LARGER, "lora", True, "transformers"),
]


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def child(model_dir: Path, method: str, checkpointing: bool, loss: str, args: argparse.Namespace) -> dict:
    """One case in this (fresh) process; returns the RSS figures in MiB."""
    import bitsandbytes  # noqa: F401  (imported before the baseline, like everything the step uses)
    import peft
    import torch
    import transformers
    from trl.trainer.utils import add_fused_lm_head

    torch.set_num_threads(args.threads)
    gc.collect()
    after_imports = _status_kib("VmRSS")

    qlora = method == "qlora"
    quant = None
    if qlora:
        quant = transformers.BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        )
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, quantization_config=quant, attn_implementation="sdpa"
    )
    model.config.use_cache = False
    # fp32 weights load as views of the memory-mapped checkpoint (file pages, in RSS only once touched);
    # copy them out, as moving them to a GPU would, so they count like any other tensor.
    for param in model.parameters():
        param.data = param.data.clone()
    gc_kwargs = {"use_reentrant": False}
    if qlora:
        model = peft.prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=checkpointing, gradient_checkpointing_kwargs=gc_kwargs
        )
    elif checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
        model.enable_input_require_grads()
    modules = args.target_modules.split(",")
    lora = peft.LoraConfig(r=LORA_R, lora_alpha=16, lora_dropout=0.0, target_modules=modules)
    model = peft.get_peft_model(model, lora)
    if qlora:  # trl/trainer/sft_trainer.py: a quantised model's trainable parameters go to bf16
        for param in model.parameters():
            if param.requires_grad:
                param.data = param.data.to(torch.bfloat16)
    add_fused_lm_head(model.get_base_model(), outputs=("log_probs", "entropy", "is_top1"))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size

    gc.collect()
    loaded = _status_kib("VmRSS")
    reset = _reset_peak()
    start = time.perf_counter()
    for _ in range(args.steps):
        ids = torch.randint(0, vocab, (args.micro_batch, args.seq_len), generator=generator)
        if loss == "trl":
            out = model(input_ids=ids, labels=ids, fused_lm_head=True)
        else:
            out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    return {
        "after_imports_mib": round(after_imports / 1024, 1),
        "loaded_mib": round((loaded - after_imports) / 1024, 1),
        "peak_mib": round((peak - after_imports) / 1024, 1),
        "peak_reset_after_load": reset,
        "trainable": sum(p.numel() for p in trainable),
        "steps_s": round(seconds, 1),
    }


def _preset(name: str, model_dir: Path):
    """The catalog entry of a model: the tiny preset's own, or one built from the config's dimensions."""
    from presets.catalog import ModelPreset, get_model

    if name == "tiny":
        return get_model("tiny-llama")
    config = json.loads((model_dir / "config.json").read_text())
    dims = {
        k: config[k]
        for k in (
            "num_hidden_layers",
            "hidden_size",
            "num_attention_heads",
            "num_key_value_heads",
            "intermediate_size",
            "vocab_size",
            "max_position_embeddings",
        )
    }
    h, layers = dims["hidden_size"], dims["num_hidden_layers"]
    shell = ModelPreset(
        name=name,
        repo_id=f"local/{name}",
        revision="local",
        architecture="LlamaForCausalLM",
        parameters=0,
        target_modules=(),
        methods=("lora", "qlora"),
        local_build=True,
        **dims,
    )
    norms = (2 * layers + 1) * h
    parameters = shell.layer_linear_parameters + shell.embedding_parameters + norms
    from dataclasses import replace

    return replace(shell, parameters=parameters)


def _spawn(*child_args: str) -> dict:
    cmd = [sys.executable, __file__, *child_args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{' '.join(child_args)} failed (exit {proc.returncode})")
    return json.loads(lines[-1].removeprefix("RESULT "))


def _spawn_case(model_dir: Path, method: str, checkpointing: bool, loss: str, modules: tuple, args) -> dict:
    cmd = ["--child", str(model_dir), "--method", method, "--loss", loss, "--steps", str(args.steps)]
    cmd += ["--micro-batch", str(args.micro_batch), "--seq-len", str(args.seq_len)]
    cmd += ["--threads", str(args.threads), "--target-modules", ",".join(modules)]
    return _spawn(*cmd, *(["--checkpointing"] if checkpointing else []))


def child_head(tokens: int, hidden: int, vocab: int, threads: int) -> dict:
    """TRL's fused LM head alone (forward and backward) on the CPU: its peak above its inputs."""
    import torch
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE, _ChunkedLogProbFunction

    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(tokens, hidden, generator=generator, requires_grad=True)
    head = torch.randn(vocab, hidden, generator=generator) * 0.02
    targets = torch.randint(0, vocab, (tokens,), generator=generator)
    gc.collect()
    before = _status_kib("VmRSS")
    _reset_peak()
    outputs = ("log_probs", "entropy", "is_top1")
    log_probs, *_ = _ChunkedLogProbFunction.apply(
        states, head, None, targets, 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0, outputs
    )
    (-log_probs.sum()).backward()
    peak_mib = (_status_kib("VmHWM") - before) / 1024
    tile_mib = min(tokens, 4096) * min(vocab, _CHUNKED_LOGPROB_CHUNK_SIZE) * 4 / MIB
    tiles = round(peak_mib / tile_mib, 1)
    return {"peak_mib": round(peak_mib, 1), "tile_mib": round(tile_mib, 1), "tiles": tiles}


def _floor(cases: list[dict]) -> float:
    """What the CPU runtime holds whatever the model, taken from the first case (the tiny model, LoRA).

    Its estimate is ~13 MiB, its measured peak ~100 MiB: malloc arenas of the worker threads, oneDNN/OpenMP
    scratch, the autograd engine, buffers glibc keeps after a free. Subtracting it from the other cases is
    crude (part of it grows with the model) but shows how much of the gap is this constant.
    """
    first = cases[0]
    assert (first["model"], first["method"]) == ("tiny", "lora")
    return round(first["measured_peak_rss_mib"] - first["estimate_mib"], 1)


def _breakdown_mib(found) -> dict[str, float]:
    """The estimate's terms in MiB, unrounded by ``breakdown()``'s 0.01 GiB (the tiny model's are smaller)."""
    terms = ("weights", "dequant", "adapter", "activations", "logits")
    return {term: round(getattr(found, f"{term}_gib") * 1024, 2) for term in terms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per case (1 micro-batch each)")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=("lora", "qlora"), help=argparse.SUPPRESS)
    parser.add_argument("--loss", choices=("trl", "transformers"), help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--target-modules", help=argparse.SUPPRESS)
    parser.add_argument("--child-head", type=int, nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child or args.child_head:
        if args.child_head:
            result = child_head(*args.child_head, threads=args.threads)
        else:
            result = child(args.child, args.method, args.checkpointing, args.loss, args)
        print("RESULT " + json.dumps(result), flush=True)
        return

    from benchmarks.trainer_throughput import ARCHS, build_model
    from presets.memory import estimate
    from presets.tiny import ensure_tiny_preset

    started = time.perf_counter()
    cases = []
    with tempfile.TemporaryDirectory(prefix="memory-estimator-") as tmp:
        dirs = {"tiny": Path(ensure_tiny_preset()), LARGER: build_model(LARGER, Path(tmp) / LARGER)}
        for name, method, checkpointing, loss in CASES:
            preset = _preset(name, dirs[name])
            modules = tuple(ARCHS[LARGER]["target_modules"]) if name == LARGER else preset.target_modules
            measured = _spawn_case(dirs[name], method, checkpointing, loss, modules, args)
            found = estimate(
                preset,
                method,
                micro_batch=args.micro_batch,
                seq_len=args.seq_len,
                gradient_checkpointing=checkpointing,
                lora_r=LORA_R,
                target_modules=modules,
                dtype="float32",
                trainer=loss,
            )
            estimate_mib = found.allocator_peak_gib * 1024
            cases.append(
                {
                    "model": name,
                    "method": method,
                    "gradient_checkpointing": checkpointing,
                    "loss": "fused LM head (trl)" if loss == "trl" else "transformers labels=",
                    "estimate_mib": round(estimate_mib, 1),
                    "estimate_breakdown_mib": _breakdown_mib(found),
                    "measured_peak_rss_mib": measured["peak_mib"],
                    "ratio_estimate_to_measured": round(estimate_mib / measured["peak_mib"], 2),
                    "measured": measured,
                }
            )
        # The fused head alone at llama-22m's size: what the CPU's torch fallback holds for the loss.
        config = json.loads((dirs[LARGER] / "config.json").read_text())
        shape = (args.micro_batch * args.seq_len, config["hidden_size"], config["vocab_size"])
        head = _spawn("--child-head", *map(str, shape), "--threads", str(args.threads))
        head |= dict(zip(("tokens", "hidden", "vocab"), shape, strict=True))
    floor = _floor(cases)
    for case in cases[1:]:
        above_floor = case["measured_peak_rss_mib"] - floor
        case["ratio_estimate_to_measured_above_floor"] = round(case["estimate_mib"] / above_floor, 2)
        logits = case["estimate_breakdown_mib"]["logits"]
        if case["model"] == LARGER and case["loss"].startswith("fused") and logits > 0:
            # The GPU's one-tile loss swapped for the CPU fallback's measured one: how the other terms fare.
            with_cpu_head = case["estimate_mib"] - logits + head["peak_mib"]
            case["estimate_with_cpu_head_mib"] = round(with_cpu_head, 1)
            case["ratio_with_cpu_head_above_floor"] = round(with_cpu_head / above_floor, 2)
    print(
        json.dumps(
            {
                "device": "cpu (no GPU measured)",
                "cpu_floor_mib": floor,
                "fused_lm_head_alone": head,
                "dtype": "float32",
                "micro_batch": args.micro_batch,
                "seq_len": args.seq_len,
                "steps": args.steps,
                "lora_r": LORA_R,
                "cases": cases,
                "wall_s": round(time.perf_counter() - started, 1),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
