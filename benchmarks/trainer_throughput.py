"""Training throughput: KAITO's default tuning setup against this trainer's defaults, same model and data.

    .venv/bin/python benchmarks/trainer_throughput.py                      # CPU, 19M-param Llama, QLoRA
    .venv/bin/python benchmarks/trainer_throughput.py --method lora --steps 40
    python benchmarks/trainer_throughput.py --arch phi-3-mini --steps 30   # on a CUDA GPU

baseline: TRL SFTTrainer with its default collator on the conversations, KAITO's qlora template
          (per_device_train_batch_size 1, no packing, SFTConfig's gradient checkpointing, k-bit preparation)
          and KAITO's cache-flush callback after every step.
ours:     ``trainer.train.build_trainer`` with the same template: padding-free packing, loss on the trained
          positions only, checkpointing chosen per hardware.

Data: generated dolly-like conversations (short and long mixed). Model: random weights, Llama-shaped
(~22M parameters) or phi-3-mini's real dimensions (``--arch phi-3-mini``, for GPUs). Each side runs in
its own child process so peak memory is its own; sides alternate ``--repeats`` times and the fastest
run of each counts (the CPU is shared with other work); peak memory is the highest seen. Tokens are
non-padding input tokens of the optimizer steps after warm-up. Prints one JSON object: baseline, ours,
speedup (wall clock), speedup_cpu_time (tokens per CPU-second of the process: steadier when other
processes compete for the cores), memory_ratio, and MFU on a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ARCHS = {
    # ~22M parameters, two thirds of them in a Llama-2-sized vocabulary (32000, padded beyond the local
    # tokenizer's 1024): as in real models, the LM head and the loss over it are a large part of a step.
    "llama-22m": {
        "architecture": "llama",
        "hidden_size": 256,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "intermediate_size": 688,
        "vocab_size": 32000,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
    },
    # microsoft/Phi-3-mini-4k-instruct's dimensions (vocabulary: the benchmark tokenizer's, padded to 32064).
    "phi-3-mini": {
        "architecture": "phi3",
        "hidden_size": 3072,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "intermediate_size": 8192,
        "vocab_size": 32064,
        "target_modules": ["qkv_proj", "o_proj"],
        "catalog": "phi-3-mini-4k-instruct",  # so the memory estimator sizes the micro-batch
    },
}
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "A10": 125e12, "L4": 121e12}
WARMUP_STEPS = 3
MAX_LENGTH = 1024

_VOCABULARY = (
    "the model data river city answer question summer garden window music story market history science "
    "travel mountain bright quiet explain describe list reasons because however therefore example people "
    "company water energy light small large important different general public system process result"
)


def kaito_template(method: str, target_modules: list[str]) -> dict:
    """KAITO's qlora/lora-params-template, with the target modules both sides share."""
    from contract.training_config import default_training_config

    doc = default_training_config(method)
    doc["training_config"]["LoraConfig"]["target_modules"] = target_modules
    return doc


def _sentence(rng: random.Random, words: int) -> str:
    vocabulary = _VOCABULARY.split()
    return " ".join(rng.choice(vocabulary) for _ in range(words)).capitalize() + "."


def dolly_like(n: int, seed: int = 0) -> list[dict]:
    """Instruction, optional context, response; log-normal lengths like dolly-15k (many short, long tail)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        user = _sentence(rng, rng.randint(6, 20))
        if rng.random() < 0.3:
            user += "\n\n" + _sentence(rng, min(150, int(rng.lognormvariate(3.3, 0.7))))
        answer = _sentence(rng, max(2, min(200, int(rng.lognormvariate(3.0, 0.9)))))
        turns = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        rows.append({"messages": turns})
    return rows


def build_model(arch: str, dest: Path) -> Path:
    """Random weights of the given shape plus the tiny preset's tokenizer (no download)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM

    from presets.tiny import ensure_tiny_preset

    spec = dict(ARCHS[arch])
    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_preset())
    shape = {k: v for k, v in spec.items() if k not in ("architecture", "target_modules", "catalog")}
    shape.setdefault("vocab_size", len(tokenizer))
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    torch.manual_seed(0)
    if spec["architecture"] == "llama":
        config = LlamaConfig(**shape, **ids, max_position_embeddings=4096, tie_word_embeddings=False)
        model = LlamaForCausalLM(config)
    else:
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            config = Phi3Config(**shape, **ids, max_position_embeddings=4096)
            model = Phi3ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def _timing_callback():
    from transformers import TrainerCallback

    class Timing(TrainerCallback):
        """Tokens and seconds of the optimizer steps after warm-up."""

        def __init__(self):
            self.start: tuple[float, float, int] | None = None
            self.end: tuple[float, float, int] | None = None

        def on_step_end(self, args, state, control, **kwargs):
            point = (time.perf_counter(), time.process_time(), state.num_input_tokens_seen)
            if state.global_step == WARMUP_STEPS:
                self.start = point
            self.end = point

        def result(self) -> dict:
            seconds, cpu_seconds, tokens = (b - a for a, b in zip(self.start, self.end, strict=True))
            return {
                "tokens": tokens,
                "seconds": round(seconds, 3),
                "tokens_per_s": round(tokens / seconds, 1),
                "tokens_per_cpu_s": round(tokens / cpu_seconds, 1),
            }

    return Timing()


def _memory() -> dict:
    import torch

    if torch.cuda.is_available():
        return {"peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
    return {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def run_baseline(model_dir: Path, data_dir: Path, config: dict, steps: int) -> dict:
    """KAITO's tuning path: SFTTrainer, default collator, batch 1, k-bit prep, empty-cache callback."""
    import datasets
    import torch
    from peft import LoraConfig, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    class EmptyCacheCallback(TrainerCallback):  # as in KAITO's tuning code
        def on_step_end(self, args, state, control, **kwargs):
            torch.cuda.empty_cache()

    cuda = torch.cuda.is_available()
    sections = config["training_config"]
    quant = dict(sections["QuantizationConfig"])
    dtype = torch.bfloat16 if cuda else torch.float32
    if quant.get("load_in_4bit"):
        quant["bnb_4bit_compute_dtype"] = dtype
        quantization = BitsAndBytesConfig(**quant)
    else:
        quantization = None
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, quantization_config=quantization, device_map={"": 0} if cuda else None
    )
    if quantization is not None:
        model = prepare_model_for_kbit_training(model)
    dataset = datasets.Dataset.from_parquet(str(data_dir / "train.parquet"))
    args = SFTConfig(
        output_dir=str(model_dir.parent / "baseline-out"),
        **{k: v for k, v in sections["TrainingArguments"].items() if k != "output_dir"},
        max_steps=steps,
        report_to="none",
        disable_tqdm=True,
        logging_steps=10,
        include_num_input_tokens_seen="non_padding",
        use_cpu=not cuda,
        bf16=cuda,
    )
    timing = _timing_callback()
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="CAUSAL_LM", **sections["LoraConfig"]),
        callbacks=[EmptyCacheCallback(), timing],
    )
    trainer.train()
    return {**timing.result(), **_memory(), "optimizer_steps": steps}


def run_ours(model_dir: Path, data_dir: Path, config: dict, steps: int, catalog_name: str | None) -> dict:
    import dataclasses
    import threading

    import yaml

    from trainer.inputs import check_data, load_setup
    from trainer.options import TrainerOptions
    from trainer.train import build_trainer

    config["training_config"]["TrainingArguments"]["max_steps"] = steps
    path = model_dir.parent / "ours.yaml"
    path.write_text(yaml.safe_dump(config))
    out = model_dir.parent / "ours-out"
    options = TrainerOptions(
        preset=str(model_dir), config=path, data=data_dir, output=out, progress_file=out / "progress.jsonl"
    )
    setup = load_setup(options)
    if catalog_name:
        setup = dataclasses.replace(setup, preset=dataclasses.replace(setup.preset, name=catalog_name))
    data = check_data(options, setup)
    if not data.prepared.ok:
        raise SystemExit(f"pre-flight refused the data: {data.prepared.report['errors']}")
    trainer = build_trainer(options, setup, data, threading.Event())
    timing = _timing_callback()
    trainer.add_callback(timing)
    trainer.train()
    return {**timing.result(), **_memory(), "optimizer_steps": steps}


def _mfu(arch: str, result: dict) -> float | None:
    """Model FLOPs utilisation: 6 x parameters per token (forward + backward) over the GPU's bf16 peak."""
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    s = ARCHS[arch]
    h, n = s["hidden_size"], s["num_hidden_layers"]
    kv = h * s["num_key_value_heads"] // s["num_attention_heads"]
    params = n * (2 * h * h + 2 * h * kv + 3 * h * s["intermediate_size"]) + 2 * h * s.get("vocab_size", 1024)
    return round(6 * params * result["tokens_per_s"] / peak, 4) if peak else None


def child(side: str, workdir: Path, arch: str, method: str, steps: int) -> None:
    config = kaito_template(method, ARCHS[arch]["target_modules"])
    model, data = workdir / "model", workdir / "data"
    if side == "baseline":
        result = run_baseline(model, data, config, steps)
    else:
        result = run_ours(model, data, config, steps, ARCHS[arch].get("catalog"))
    result["mfu"] = _mfu(arch, result)
    print("RESULT " + json.dumps(result), flush=True)


def _spawn(side: str, workdir: Path, args, steps: int) -> dict:
    cmd = [sys.executable, __file__, "--child", side, "--workdir", str(workdir), "--arch", args.arch]
    cmd += ["--method", args.method, "--steps", str(steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{side} run failed (exit {proc.returncode})")
    return json.loads(lines[-1].removeprefix("RESULT "))


def _best(runs: list[dict]) -> dict:
    """The fastest run, with the highest peak memory of all runs and every run's rate for the record."""
    best = dict(max(runs, key=lambda r: r["tokens_per_s"]))
    for key in ("peak_rss_mib", "peak_gpu_mib"):
        if key in best:
            best[key] = max(r[key] for r in runs)
    best["runs_tokens_per_s"] = [r["tokens_per_s"] for r in runs]
    best["tokens_per_cpu_s"] = max(r["tokens_per_cpu_s"] for r in runs)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), default="llama-22m")
    parser.add_argument("--method", choices=("qlora", "lora"), default="qlora")
    parser.add_argument("--steps", type=int, default=60, help="baseline optimizer steps (1 row each)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per side; best one counts")
    parser.add_argument("--rows", type=int, default=2000, help="generated conversations")
    parser.add_argument("--child", choices=("baseline", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.workdir, args.arch, args.method, args.steps)
        return

    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="trainer-throughput-") as tmp:
        workdir = Path(tmp)
        (workdir / "data").mkdir()
        rows = dolly_like(args.rows)
        pq.write_table(pa.Table.from_pylist(rows), workdir / "data" / "train.parquet")
        build_model(args.arch, workdir / "model")
        tokenizer = AutoTokenizer.from_pretrained(workdir / "model")
        texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in rows]
        lengths = sorted(len(ids) for ids in tokenizer(texts).input_ids)
        mean = sum(lengths) / len(lengths)
        # Both sides see about the same number of tokens: ours packs ~MAX_LENGTH tokens per step.
        ours_steps = max(WARMUP_STEPS + 4, math.ceil(args.steps * mean / MAX_LENGTH))
        runs: dict[str, list[dict]] = {"baseline": [], "ours": []}
        for _ in range(args.repeats):  # alternating, so load from other processes hits both sides alike
            runs["baseline"].append(_spawn("baseline", workdir, args, args.steps + WARMUP_STEPS))
            runs["ours"].append(_spawn("ours", workdir, args, ours_steps + WARMUP_STEPS))
        baseline, ours = (_best(runs[side]) for side in ("baseline", "ours"))
    memory_key = "peak_gpu_mib" if "peak_gpu_mib" in ours else "peak_rss_mib"
    print(
        json.dumps(
            {
                "arch": args.arch,
                "method": args.method,
                "data": {
                    "rows": len(rows),
                    "mean_tokens": round(mean, 1),
                    "p99_tokens": lengths[int(0.99 * len(lengths))],
                },
                "baseline": baseline,
                "ours": ours,
                "speedup": round(ours["tokens_per_s"] / baseline["tokens_per_s"], 2),
                "speedup_cpu_time": round(ours["tokens_per_cpu_s"] / baseline["tokens_per_cpu_s"], 2),
                "memory_ratio": round(ours[memory_key] / baseline[memory_key], 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
