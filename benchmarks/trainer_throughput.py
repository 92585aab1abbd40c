"""Training speed, like for like: KAITO's default tuning setup against this trainer's, with the same model,
data, LoRA settings, seed and learning rate, as time to the same held-out quality and as an ablation.

    .venv/bin/python benchmarks/trainer_throughput.py            # CPU, two model shapes (~20 min, 2 cores)
    .venv/bin/python benchmarks/trainer_throughput.py --quick    # smoke run (~2-3 min)
    python benchmarks/trainer_throughput.py --arch phi-3-mini    # on a CUDA GPU (phi-3-mini's dimensions)

baseline: KAITO's default: TRL SFTTrainer on the conversations with its default collator, KAITO's qlora
          template (per_device_train_batch_size 1, no packing), SFTConfig's gradient checkpointing, k-bit
          preparation, loss on every token, KAITO's cache-flush callback after every step.
ours:     ``trainer.train.build_trainer`` on this project's template (KAITO's: one example per step): the
          pre-flight's tokens and assistant-only labels, checkpointing chosen per hardware.
ours+packing: ours with ``packing: true`` (TRL's bfd): a step is one packed row of up to max_length tokens,
          what the template's batch of 1 means with packing. Measured beside ours, because the built-in
          template once turned packing on, and this is the figure that turned it off again.
Every side: the same random-weight model and tokenizer, LoRA r 8 on the attention projections, seed 42,
the same learning rate (``--learning-rate``, default 5e-4) with a constant schedule: KAITO's template leaves
TRL's 2e-5, which barely moves in one epoch, and a decaying schedule would tie the rate to the epochs given.

time_to_quality: a slice of generated dolly-like conversations (log-normal lengths like dolly-15k), held-out
    conversations from another seed. Target: the held-out loss the baseline reaches after one epoch. Each side
    trains until its held-out loss is at or below it (ours for up to ``--max-epochs``). The held-out loss is
    one function for both sides (``heldout_loss``): the model run on the held-out conversations, the mean
    negative log-likelihood of their assistant tokens only. It is evaluated about every
    ``eval_every_tokens`` training tokens, off the clock, and the time at which it crosses the target is
    interpolated linearly between the two evaluations around the crossing. Clock: training only, from the
    Trainer's start (model loading and data preparation are off it, reported as ``setup_s``).
    ``speedup_to_quality`` = baseline time / ours; ``memory_ratio`` = ours' peak / the baseline's (RSS of
    the side's own process on a CPU, ``torch.cuda.max_memory_allocated`` on a GPU). ``packing`` holds the
    same figures for ours+packing, and ``ratio_to_ours`` (ours' time / its time).
ablation: tokens per second (non-padding input tokens of the optimizer steps after warm-up) on a larger
    generated set, from the baseline one change at a time to ours: + loss on trained positions
    (assistant-only labels; on CUDA TRL then projects only those positions through the LM head, a CPU
    scores every position, so there only the objective changes), + our checkpointing choice
    (``trainer.strategy``: off on a CPU, the memory estimator's choice on a GPU), = ours (the rest: no cache
    flush, the pre-flight's tokens and labels, our model loading and attention kernel), then ours+packing.
    Each step's ratio is to the step before it.

Shapes (CPU): ``llama-22m``, a 22M-parameter Llama with a 32,000-token vocabulary whose LM head is 59% of the
forward FLOPs, and ``llama-9m-v1k``, 12 layers of the same width with the tokenizer's own 1,024-token
vocabulary: LM head 2.9%, near phi-3-mini's 2.6%. The share is h*V over the matmul parameters of the layers
plus h*V (2 FLOPs per parameter and token each); embedding lookups, norms and the attention scores are left
out (the JSON also gives the share with the attention scores at the data's mean length).

Every run is a process of its own (forked from a server that imported torch once), so its peak memory is
its own; on a CPU it computes on one thread (on this shared 2-core machine two threads ran 2.5-3x slower
than one whenever other jobs held a core). Rounds alternate the order of the sides, and every figure is the
median of the per-round paired ratios (``--rounds``, at least 3), never the fastest run of each side.
``os.getloadavg()`` is recorded around every run. Prints one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
ARCHS: dict[str, dict[str, Any]] = {
    # ~22M parameters, two thirds of them in a Llama-2-sized vocabulary (32000, padded beyond the local
    # tokenizer's 1024): the LM head is 59% of the forward matmuls, far more than in real models.
    "llama-22m": {
        "architecture": "llama",
        "hidden_size": 256,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "intermediate_size": 688,
        "vocab_size": 32000,
        "target_modules": LLAMA_TARGETS,
    },
    # The same width, 12 layers and the tokenizer's own vocabulary: the LM head is 2.9% of the forward
    # matmuls, near phi-3-mini's 2.6%.
    "llama-9m-v1k": {
        "architecture": "llama",
        "hidden_size": 256,
        "num_hidden_layers": 12,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "intermediate_size": 688,
        "vocab_size": 1024,
        "target_modules": LLAMA_TARGETS,
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
CPU_ARCHS = ["llama-22m", "llama-9m-v1k"]
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "A10": 125e12, "L4": 121e12}
# As in presets/tiny.py: behind the final RMSNorm a hidden state has norm sqrt(hidden); Llama's 0.02-scale
# random LM-head rows would cap every logit near 5, so no adapter could make the data's words likely.
LM_HEAD_STD = 0.1
SEED = 42
# tokens/s leaves out the optimizer steps of the first 90% of max_length tokens (a packed row: one step)
WARMUP_SHARE = 0.9
PACKED = "ours+packing"
ABLATION = ("baseline", "+loss_on_trained_positions", "+our_checkpointing", "ours", PACKED)
ABLATION_CHANGES = {
    "baseline": "KAITO's default: 1 example per step, no packing, checkpointing, all tokens, cache flush",
    "+loss_on_trained_positions": "assistant-only labels (on CUDA only those positions reach the LM head)",
    "+our_checkpointing": "gradient checkpointing as trainer.strategy chooses it (off on a CPU)",
    "ours": "build_trainer: no cache flush, pre-flight tokens and labels, our model loading and attention",
    PACKED: "TRL bfd packing: one packed row of up to max_length tokens per optimizer step",
}
OURS = ("ours", PACKED)  # the sides build_trainer runs

_VOCABULARY = (
    "the model data river city answer question summer garden window music story market history science "
    "travel mountain bright quiet explain describe list reasons because however therefore example people "
    "company water energy light small large important different general public system process result"
)


@dataclass(frozen=True)
class Settings:
    """What one invocation measures; every run gets them."""

    method: str
    learning_rate: float
    rounds: int  # paired rounds, sides alternating
    train_rows: int  # time_to_quality: training conversations
    heldout_rows: int  # time_to_quality: held-out conversations
    eval_every_tokens: int  # time_to_quality: evaluate about this often, in training tokens
    max_epochs: int  # time_to_quality: ours stops here if it never reaches the target
    rate_rows: int  # ablation: generated conversations
    rate_tokens: int  # ablation: tokens measured per run after warm-up
    max_length: int  # both sides: TrainingArguments.max_length (packed row length, truncation)
    threads: int  # torch threads per run on a CPU (0: torch's default)


DEFAULTS = Settings(
    method="qlora",
    learning_rate=5e-4,
    rounds=3,
    train_rows=24,
    heldout_rows=12,
    eval_every_tokens=1024,
    max_epochs=8,
    rate_rows=300,
    rate_tokens=2048,
    max_length=1024,
    threads=1,
)
# Smoke run: short rows (128 tokens, both sides) and a few steps per run; its figures mean little.
QUICK = replace(
    DEFAULTS,
    train_rows=6,
    heldout_rows=3,
    eval_every_tokens=256,
    max_epochs=3,
    rate_rows=32,
    rate_tokens=128,
    max_length=128,
)


# ------------------------------------------------------------------------------------ model, data, shapes


def kaito_template(method: str, target_modules: list[str], learning_rate: float, max_length: int) -> dict:
    """KAITO's qlora/lora template as this project ships it, plus what both sides share: target modules,
    learning rate, constant schedule, seed, max_length."""
    from contract.training_config import default_training_config

    doc = default_training_config(method)
    sections = doc["training_config"]
    sections["LoraConfig"]["target_modules"] = target_modules
    sections["TrainingArguments"].update(
        learning_rate=learning_rate, lr_scheduler_type="constant", seed=SEED, max_length=max_length
    )
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

    spec = ARCHS[arch]
    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_preset())
    shape = {k: v for k, v in spec.items() if k not in ("architecture", "target_modules", "catalog")}
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    torch.manual_seed(0)
    model: Any
    if spec["architecture"] == "llama":
        llama = LlamaConfig(**shape, **ids, max_position_embeddings=4096, tie_word_embeddings=False)
        model = LlamaForCausalLM(llama)
        torch.nn.init.normal_(model.lm_head.weight, std=LM_HEAD_STD)
    else:
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = Phi3ForCausalLM(Phi3Config(**shape, **ids, max_position_embeddings=4096))
            model = model.to(torch.bfloat16)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def matmul_parameters(arch: str) -> tuple[int, int]:
    """(matmul parameters of the transformer layers, of the LM head); each is 2 FLOPs per token forward."""
    s = ARCHS[arch]
    h, n = s["hidden_size"], s["num_hidden_layers"]
    kv = h * s["num_key_value_heads"] // s["num_attention_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * s["intermediate_size"]  # q, o; k, v; gate, up, down
    return n * per_layer, h * s["vocab_size"]


def lm_head_share(arch: str, context: float = 0.0) -> float:
    """The LM head's share of the forward FLOPs per token: 2hV / (2 x layer matmul parameters + 2hV);
    with ``context`` (mean tokens attended to) the attention scores and weighted sum, 4 x layers x h x
    context, join the denominator."""
    layers, head = matmul_parameters(arch)
    s = ARCHS[arch]
    attention = 2 * s["num_hidden_layers"] * s["hidden_size"] * context
    return head / (layers + head + attention)


def fitting_rows(n: int, seed: int, max_length: int) -> list[dict]:
    """``dolly_like`` conversations of at most ``max_length`` tokens (the pre-flight refuses a conversation
    that truncation leaves without an assistant token): the first n of dolly_like(n) when none is longer."""
    from transformers import AutoTokenizer

    from presets.tiny import ensure_tiny_preset

    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_preset())
    rows = dolly_like(n * 8, seed)
    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in rows]
    lengths = [len(ids) for ids in tokenizer(texts).input_ids]
    return [r for r, length in zip(rows, lengths, strict=True) if length <= max_length][:n]


def write_data(workdir: Path, settings: Settings) -> dict[str, list[dict]]:
    """The generated sets: rate/ and quality/ (parquet, a ``messages`` column), heldout.json."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sets = {
        "rate": fitting_rows(settings.rate_rows, 0, settings.max_length),
        "quality": fitting_rows(settings.train_rows, 1, settings.max_length),
        "heldout": fitting_rows(settings.heldout_rows, 2, settings.max_length),
    }
    for name in ("rate", "quality"):
        (workdir / name).mkdir()
        pq.write_table(pa.Table.from_pylist(sets[name]), workdir / name / "train.parquet")
    (workdir / "heldout.json").write_text(json.dumps(sets["heldout"]))
    return sets


# ---------------------------------------------------------------------------------- in a run's own process


def heldout_examples(tokenizer: Any, rows: list[dict]) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per held-out conversation: labels on the assistant tokens only (the chat template's
    generation marks), -100 elsewhere. The same for both sides."""
    out = []
    for row in rows:
        enc = tokenizer.apply_chat_template(
            row["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids = list(enc["input_ids"])
        out.append((ids, [t if m else -100 for t, m in zip(ids, enc["assistant_masks"], strict=True)]))
    return out


def heldout_loss(model: Any, examples: list[tuple[list[int], list[int]]]) -> float:
    """Mean negative log-likelihood of the held-out assistant tokens, each predicted from its prefix."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, labels in examples:
            logits = model(input_ids=torch.tensor([ids], device=device)).logits[0, :-1].float()
            target = torch.tensor(labels[1:], device=device)
            keep = target != -100
            total += F.cross_entropy(logits[keep], target[keep], reduction="sum").item()
            count += int(keep.sum())
    model.train(training)
    return total / count


def _peak_memory() -> dict[str, float]:
    import torch

    if torch.cuda.is_available():
        return {"peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
    return {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def _rss_mib() -> float:
    """The process's resident memory now (on a CPU run: what it shares with the fork server, at its start)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


class _Clock:
    """The training clock (evaluations off it), tokens after warm-up, and with ``examples`` the held-out
    loss every ``eval_every`` optimizer steps (training stops once it is at or below ``target``). A
    TrainerCallback once ``clock()`` mixes that in (transformers is imported in the run's process only)."""

    def __init__(self, examples: list | None, eval_every: int, target: float | None, warmup: int) -> None:
        self.examples, self.eval_every, self.target, self.warmup = examples, eval_every, target, warmup
        self.begin = 0.0
        self.excluded = 0.0
        self.warm: tuple[float, float, int] | None = None
        self.last: tuple[float, float, int] = (0.0, 0.0, 0)
        self.curve: list[dict[str, float]] = []

    def now(self) -> float:
        return time.perf_counter() - self.begin - self.excluded

    def evaluate(self, model: Any, step: int, tokens: int) -> bool:
        """Append the held-out loss to the curve (off the clock); True once it is at or below the target."""
        assert self.examples is not None
        seconds, start = self.now(), time.perf_counter()
        loss = heldout_loss(model, self.examples)
        self.curve.append({"step": step, "train_s": round(seconds, 3), "tokens": tokens, "loss": loss})
        self.excluded += time.perf_counter() - start
        return self.target is not None and loss <= self.target

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.begin = time.perf_counter()
        if self.examples is not None:
            self.evaluate(model, 0, 0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        point = (self.now(), time.process_time(), state.num_input_tokens_seen)
        if self.warm is None and state.num_input_tokens_seen >= self.warmup:
            self.warm = point
        self.last = point
        due = state.global_step % self.eval_every == 0 or state.global_step == state.max_steps
        if self.examples is not None and due and self.evaluate(model, state.global_step, point[2]):
            control.should_training_stop = True

    def rate(self) -> dict[str, Any]:
        if self.warm is None or self.last[2] == self.warm[2]:
            return {}
        seconds, cpu_seconds, tokens = (b - a for a, b in zip(self.warm, self.last, strict=True))
        return {
            "tokens": tokens,
            "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 1),
            "tokens_per_cpu_s": round(tokens / cpu_seconds, 1),
        }


def clock(examples: list | None, eval_every: int, target: float | None, warmup: int) -> _Clock:
    from transformers import TrainerCallback

    callback: _Clock = type("Clock", (_Clock, TrainerCallback), {})(examples, eval_every, target, warmup)
    return callback


def _keep_cpu_4bit_trainable(model: Any) -> None:
    """What trainer.model does for ours: an evaluation on a CPU must not repack the 4-bit weights into
    bitsandbytes' inference-only layout (it fails on these shapes, and training after it would get wrong
    gradients). Needed by the held-out evaluations only; no effect on the training speed."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def our_checkpointing(arch: str, method: str, training_args: dict, max_length: int) -> bool:
    """Gradient checkpointing as ``trainer.strategy`` chooses it on this hardware."""
    import torch

    from trainer.strategy import choose_strategy

    if not torch.cuda.is_available():
        return choose_strategy(training_args, max_length, cuda=False).gradient_checkpointing
    from presets.catalog import get_model
    from presets.memory import largest_micro_batch

    name = ARCHS[arch].get("catalog")
    gib = torch.cuda.get_device_properties(0).total_memory / 2**30

    def fits(checkpointing: bool) -> int:
        assert name is not None
        return largest_micro_batch(get_model(name), method, gib, max_length, checkpointing)

    strategy = choose_strategy(
        training_args, max_length, cuda=True, largest_micro_batch=fits if name else None
    )
    return strategy.gradient_checkpointing


def trl_trainer(job: dict, model_dir: Path, data_dir: Path, config: dict, callbacks: list) -> Any:
    """KAITO's tuning path (SFTTrainer on the conversations, k-bit preparation, a cache flush every step),
    with the ablation's changes up to ``job["step"]`` switched on."""
    import datasets
    import torch
    from peft import LoraConfig, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    class EmptyCacheCallback(TrainerCallback):  # as in KAITO's tuning code
        def on_step_end(self, args, state, control, **kwargs):
            torch.cuda.empty_cache()

    level = ABLATION.index(job["step"])
    cuda = torch.cuda.is_available()
    sections = config["training_config"]
    template_args = sections["TrainingArguments"]
    checkpointing = True  # SFTConfig's default, and prepare_model_for_kbit_training's
    if level >= 2:
        checkpointing = our_checkpointing(job["arch"], job["method"], template_args, job["max_length"])
    quant = dict(sections["QuantizationConfig"])
    dtype = torch.bfloat16 if cuda else torch.float32
    quantization = None
    if quant.get("load_in_4bit"):
        quantization = BitsAndBytesConfig(**{**quant, "bnb_4bit_compute_dtype": dtype})
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, quantization_config=quantization, device_map={"": 0} if cuda else None
    )
    if quantization is not None:
        if not cuda:
            _keep_cpu_4bit_trainable(model)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    args = {k: v for k, v in template_args.items() if k != "output_dir"}
    if not checkpointing:
        args["gradient_checkpointing"] = False
    sft_config = SFTConfig(
        output_dir=str(job["workdir"] / f"out-{os.getpid()}"),
        **args,
        **job["length"],
        assistant_only_loss=level >= 1,
        report_to="none",
        disable_tqdm=True,
        logging_steps=10,
        include_num_input_tokens_seen="non_padding",
        use_cpu=not cuda,
        bf16=cuda,
    )
    return SFTTrainer(
        model=model,
        args=sft_config,
        train_dataset=datasets.Dataset.from_parquet(str(data_dir / "train.parquet")),
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="CAUSAL_LM", **sections["LoraConfig"]),
        callbacks=[EmptyCacheCallback(), *callbacks],
    )


def our_trainer(job: dict, model_dir: Path, data_dir: Path, config: dict, callbacks: list) -> Any:
    """``trainer.train.build_trainer``, as ``python -m trainer.qlora`` runs it (ours+packing: ``packing``
    on)."""
    import dataclasses
    import threading

    import yaml

    from trainer.inputs import check_data, load_setup
    from trainer.options import TrainerOptions
    from trainer.train import build_trainer

    config["training_config"]["TrainingArguments"].update(job["length"])
    if job["step"] == PACKED:
        config["training_config"]["TrainingArguments"]["packing"] = True
    out = job["workdir"] / f"ours-{os.getpid()}"
    out.mkdir()
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    options = TrainerOptions(
        preset=str(model_dir), config=path, data=data_dir, output=out, progress_file=out / "progress.jsonl"
    )
    setup = load_setup(options)
    catalog = ARCHS[job["arch"]].get("catalog")
    if catalog:
        setup = dataclasses.replace(setup, preset=dataclasses.replace(setup.preset, name=catalog))
    data = check_data(options, setup)
    if not data.prepared.ok:
        raise SystemExit(f"pre-flight refused the data: {data.prepared.report['errors']}")
    trainer = build_trainer(options, setup, data, threading.Event())
    for callback in callbacks:
        trainer.add_callback(callback)
    return trainer


def run(job: dict) -> dict:
    """One side's training, in this fresh process: ``job["mode"]`` is "quality" or "rate"."""
    os.dup2(2, 1)  # the libraries' prints go to stderr; the parent's stdout carries only the JSON
    import logging

    import datasets
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    logging.getLogger("trainer").setLevel(logging.WARNING)
    cuda = torch.cuda.is_available()
    if job["threads"] and not cuda:
        torch.set_num_threads(job["threads"])
    start = time.perf_counter()
    rss_at_start = _rss_mib()
    load_before = os.getloadavg()[0]
    workdir = job["workdir"]
    model_dir = workdir / f"model-{job['arch']}"
    target_modules = ARCHS[job["arch"]]["target_modules"]
    config = kaito_template(job["method"], target_modules, job["learning_rate"], job["max_length"])
    examples = None
    data_dir = workdir / "rate"
    if job["mode"] == "quality":
        rows = json.loads((workdir / "heldout.json").read_text())
        examples = heldout_examples(transformers.AutoTokenizer.from_pretrained(model_dir), rows)
        data_dir = workdir / "quality"
    warmup = int(WARMUP_SHARE * job["max_length"])
    timer = clock(examples, job.get("eval_every", 1), job.get("target"), warmup)
    build = our_trainer if job["step"] in OURS else trl_trainer
    trainer = build(job, model_dir, data_dir, config, [timer])
    setup_s = time.perf_counter() - start
    trainer.train()
    result: dict[str, Any] = {
        "step": job["step"],
        "setup_s": round(setup_s, 2),
        "train_s": round(timer.now(), 3),
        "optimizer_steps": trainer.state.global_step,
        "epochs": round(float(trainer.state.epoch or 0), 3),
        "micro_batch": trainer.args.per_device_train_batch_size,
        "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
        **timer.rate(),
        **_peak_memory(),
        "rss_at_start_mib": rss_at_start,
        "load_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    if job["mode"] == "quality":
        result["curve"] = timer.curve
    if cuda and "tokens_per_s" in result:
        result["mfu"] = _mfu(job["arch"], result["tokens_per_s"])
    return result


def _mfu(arch: str, tokens_per_s: float) -> float | None:
    """Model FLOPs utilisation: 6 x matmul parameters per token (forward + backward) over the bf16 peak."""
    import torch

    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    layers, head = matmul_parameters(arch)
    return round(6 * (layers + head) * tokens_per_s / peak, 4) if peak else None


# -------------------------------------------------------------------------------------------- the parent


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _median(values: list[float], digits: int = 3) -> float | None:
    return round(statistics.median(values), digits) if values else None


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _memory_key(result: dict) -> str:
    return "peak_gpu_mib" if "peak_gpu_mib" in result else "peak_rss_mib"


def time_to(curve: list[dict[str, float]], target: float) -> float | None:
    """Training seconds at which the held-out loss first reaches ``target``, interpolated linearly between
    the evaluations around the crossing; None if it never does."""
    if curve and curve[0]["loss"] <= target:
        return curve[0]["train_s"]
    for before, after in itertools.pairwise(curve):
        if after["loss"] <= target:
            share = (before["loss"] - target) / (before["loss"] - after["loss"])
            return before["train_s"] + share * (after["train_s"] - before["train_s"])
    return None


class Runner:
    """Runs jobs one at a time, each in a fresh process: on a CPU forked from a server that imported the
    libraries once; on a GPU spawned (CUDA cannot be initialised before a fork)."""

    PRELOAD = (
        *("torch", "transformers", "transformers.trainer", "trl", "trl.trainer.sft_trainer", "peft"),
        *("datasets", "bitsandbytes", "trainer.train", "trainer.inputs"),
    )

    def __init__(self, settings: Settings, workdir: Path, cuda: bool) -> None:
        self.settings = settings
        self.workdir = workdir
        self.loads: list[float] = []
        context: Any = multiprocessing.get_context("spawn" if cuda else "forkserver")
        if not cuda:
            context.set_forkserver_preload(list(self.PRELOAD))
        self.pool = ProcessPoolExecutor(max_workers=1, mp_context=context, max_tasks_per_child=1)

    def __call__(self, **job: Any) -> dict:
        s = self.settings
        job = {
            "workdir": self.workdir,
            "method": s.method,
            "learning_rate": s.learning_rate,
            "max_length": s.max_length,
            "threads": s.threads,
            **job,
        }
        self.loads.append(os.getloadavg()[0])
        started = time.perf_counter()
        result: dict = self.pool.submit(run, job).result()
        self.loads.extend(result["load_1m"])
        rate = f"{result['tokens_per_s']} tokens/s" if "tokens_per_s" in result else "no rate"
        _log(
            f"  {job['arch']} {job['mode']} {job['step']}: {result['train_s']} s training, {rate}, "
            f"{result['optimizer_steps']} steps, setup {result['setup_s']} s, "
            f"run {time.perf_counter() - started:.1f} s, load {result['load_1m']}"
        )
        return result

    def close(self) -> None:
        self.pool.shutdown()


def quality(runner: Runner, arch: str, steps_per_epoch: dict[str, int], tokens_per_epoch: int) -> dict:
    """time_to_quality for one shape: the baseline trains one epoch (its final held-out loss is the target),
    ours and ours+packing until they reach that loss; rounds alternate the order of the sides (the first
    baseline run sets the target: with one seed every round's is the same)."""
    s = runner.settings
    sides = ("baseline", *OURS)
    eval_every = {
        side: max(1, round(steps_per_epoch[side] * s.eval_every_tokens / tokens_per_epoch)) for side in sides
    }
    rounds: list[dict[str, dict]] = []
    target: float | None = None
    for r in range(s.rounds):
        got: dict[str, dict] = {}
        for side in sides if r % 2 == 0 else tuple(reversed(sides)):
            epochs = 1 if side == "baseline" else s.max_epochs
            got[side] = runner(
                arch=arch,
                mode="quality",
                step=side,
                length={"num_train_epochs": epochs},
                eval_every=eval_every[side],
                target=target if side != "baseline" else None,
            )
            if target is None and side == "baseline":
                target = got[side]["curve"][-1]["loss"]
        rounds.append(got)
    assert target is not None
    times = [{side: time_to(got[side]["curve"], target) for side in sides} for got in rounds]

    def summary(name: str) -> dict:
        runs = [got[name] for got in rounds]
        key = _memory_key(runs[0])
        return {
            "time_to_target_s": [_round(t[name]) for t in times],
            "train_s": [r["train_s"] for r in runs],
            "tokens_per_s": [r.get("tokens_per_s") for r in runs],
            "optimizer_steps": [r["optimizer_steps"] for r in runs],
            "epochs": [r["epochs"] for r in runs],
            "setup_s": [r["setup_s"] for r in runs],
            key: [r[key] for r in runs],
            "rss_at_start_mib": [r["rss_at_start_mib"] for r in runs],
            "best_loss": [round(min(c["loss"] for c in r["curve"]), 4) for r in runs],
            "eval_every_steps": eval_every[name],
            "curve_round_1": [[c["step"], c["train_s"], round(c["loss"], 4)] for c in runs[0]["curve"]],
        }

    def against_baseline(name: str) -> dict:
        """The paired ratios of ``name`` to the baseline (time to the target, peak memory)."""
        pairs = []
        for got, t in zip(rounds, times, strict=True):
            b, o = t["baseline"], t[name]
            key = _memory_key(got[name])
            pairs.append(
                {
                    "baseline_s": _round(b),
                    f"{name}_s": _round(o),
                    "ratio": _round(b / o) if b and o else None,
                    "memory_ratio": round(got[name][key] / got["baseline"][key], 3),
                    "baseline_epoch_loss": round(got["baseline"]["curve"][-1]["loss"], 4),
                }
            )
        ratios = [p["ratio"] for p in pairs if p["ratio"] is not None]
        out: dict[str, Any] = {
            "speedup_to_quality": _median(ratios, 2),
            "memory_ratio": _median([p["memory_ratio"] for p in pairs], 2),
            f"{name}_reached_target": f"{len(ratios)} of {len(pairs)} rounds",
            "paired": pairs,
        }
        if len(ratios) < len(pairs):  # stopped at max_epochs short of the target: its time is a lower bound
            bounds = [
                p["ratio"] if p["ratio"] is not None else (p["baseline_s"] or 0.0) / got[name]["train_s"]
                for p, got in zip(pairs, rounds, strict=True)
            ]
            out["speedup_to_quality_at_most"] = _median(bounds, 2)
        return out

    packed = against_baseline(PACKED)
    to_ours = [t["ours"] / t[PACKED] for t in times if t["ours"] and t[PACKED]]
    return {
        "target_loss": round(target, 4),
        "initial_loss": round(rounds[0]["baseline"]["curve"][0]["loss"], 4),
        **against_baseline("ours"),
        "baseline": summary("baseline"),
        "ours": summary("ours"),
        "packing": {**packed, "ratio_to_ours": _median(to_ours, 2), "runs": summary(PACKED)},
    }


def ablation(runner: Runner, arch: str, steps: dict[str, int]) -> list[dict]:
    """Tokens/s of each ablation step; rounds run the steps forward and backward in turn; each step's ratio
    to the one before is the median of the per-round ratios."""
    rounds: list[dict[str, dict]] = []
    for r in range(runner.settings.rounds):
        order = ABLATION if r % 2 == 0 else tuple(reversed(ABLATION))
        rounds.append(
            {
                step: runner(arch=arch, mode="rate", step=step, length={"max_steps": steps[step]})
                for step in order
            }
        )
    out = []
    for i, step in enumerate(ABLATION):
        rates = [got[step]["tokens_per_s"] for got in rounds]
        key = _memory_key(rounds[0][step])
        entry: dict[str, Any] = {
            "step": step,
            "changes": ABLATION_CHANGES[step],
            "tokens_per_s": _median(rates, 1),
            "tokens_per_s_runs": rates,
            "tokens_per_cpu_s": _median([got[step]["tokens_per_cpu_s"] for got in rounds], 1),
            "optimizer_steps": steps[step],
            key: _median([got[step][key] for got in rounds], 1),
        }
        if "mfu" in rounds[0][step]:
            entry["mfu"] = _median([got[step]["mfu"] or 0.0 for got in rounds], 4)
        if i:
            paired = [got[step]["tokens_per_s"] / got[ABLATION[i - 1]]["tokens_per_s"] for got in rounds]
            entry["ratio_to_previous"] = _median(paired)
            entry["paired_ratios_to_previous"] = [round(x, 3) for x in paired]
        entry["ratio_to_baseline"] = _median(
            [got[step]["tokens_per_s"] / got["baseline"]["tokens_per_s"] for got in rounds]
        )
        out.append(entry)
    return out


def _lengths(tokenizer: Any, rows: list[dict], max_length: int) -> list[int]:
    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in rows]
    return sorted(min(max_length, len(ids)) for ids in tokenizer(texts).input_ids)


def packed_rows(lengths: list[int], row: int) -> int:
    """How many rows best-fit-decreasing packing (TRL's bfd) makes of examples of these lengths."""
    free: list[int] = []
    for n in sorted(lengths, reverse=True):
        fits = [i for i, f in enumerate(free) if f >= n]
        if fits:
            best = min(fits, key=lambda i: free[i])
            free[best] -= n
        else:
            free.append(row - n)
    return len(free)


def measure(settings: Settings, archs: list[str], parts: tuple[str, ...]) -> dict:
    import torch
    from transformers import AutoTokenizer

    cuda = torch.cuda.is_available()
    started = time.perf_counter()
    shapes: dict[str, dict] = {}
    ttq: dict[str, dict] = {}
    abl: dict[str, list] = {}
    with tempfile.TemporaryDirectory(prefix="trainer-throughput-") as tmp:
        workdir = Path(tmp)
        sets = write_data(workdir, settings)
        runner = Runner(settings, workdir, cuda)
        try:
            for arch in archs:
                build_model(arch, workdir / f"model-{arch}")
                tokenizer = AutoTokenizer.from_pretrained(workdir / f"model-{arch}")
                lengths = {
                    name: _lengths(tokenizer, rows, settings.max_length) for name, rows in sets.items()
                }
                mean = sum(lengths["rate"]) / len(lengths["rate"])
                layers, head = matmul_parameters(arch)
                shapes[arch] = {
                    "dimensions": {k: v for k, v in ARCHS[arch].items() if k not in ("target_modules",)},
                    "matmul_parameters": {"layers": layers, "lm_head": head},
                    "lm_head_share_of_forward_flops": round(lm_head_share(arch), 4),
                    "lm_head_share_with_attention_at_mean_length": round(lm_head_share(arch, mean / 2), 4),
                    "share_vs_phi_3_mini": round(lm_head_share(arch) / lm_head_share("phi-3-mini"), 2),
                }
                _log(f"{arch}: LM head {shapes[arch]['lm_head_share_of_forward_flops']:.1%} of forward FLOPs")
                if "quality" in parts:
                    train = lengths["quality"]
                    per_epoch = {"baseline": len(train), "ours": len(train)}
                    per_epoch[PACKED] = packed_rows(train, settings.max_length)
                    ttq[arch] = quality(runner, arch, per_epoch, sum(train))
                if "ablation" in parts:
                    packed = settings.max_length * 0.95  # bfd fills rows almost completely
                    per_step = {step: packed if step == PACKED else mean for step in ABLATION}
                    steps = {
                        step: math.ceil((settings.rate_tokens + WARMUP_SHARE * settings.max_length) / tokens)
                        + 1
                        for step, tokens in per_step.items()
                    }
                    abl[arch] = ablation(runner, arch, steps)
        finally:
            runner.close()
    data = {
        name: {
            "rows": len(values),
            "mean_tokens": round(sum(values) / len(values), 1),
            "p99_tokens": values[int(0.99 * len(values))],
        }
        for name, values in lengths.items()
    }
    loads = runner.loads
    return {
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu, {os.cpu_count()} cores",
        "figures": "GPU" if cuda else "CPU ratios (on a GPU they differ: see benchmarks/RESULTS.md)",
        "method": settings.method,
        "learning_rate": {"value": settings.learning_rate, "schedule": "constant", "both_sides": True},
        "settings": asdict(settings),
        "data": {
            "ablation": data["rate"],
            "time_to_quality_train": data["quality"],
            "time_to_quality_heldout": data["heldout"],
        },
        "shapes": shapes,
        "phi_3_mini_lm_head_share": round(lm_head_share("phi-3-mini"), 4),
        "lm_head_share_method": (
            "h*V / (matmul parameters of the layers + h*V), each 2 FLOPs per token forward; embedding "
            "lookups, norms and attention scores left out (the _with_attention_ figure adds 4*layers*h*c, "
            "c = half the ablation data's mean length)"
        ),
        "time_to_quality": ttq,
        "ablation": abl,
        "load_average_1m": {
            "min": round(min(loads), 2),
            "median": round(statistics.median(loads), 2),
            "max": round(max(loads), 2),
            "samples": len(loads),
        },
        "wall_s": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--arch", choices=sorted(ARCHS), action="append", help=f"repeatable; default: {', '.join(CPU_ARCHS)}"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny data, short rows, few steps")
    parser.add_argument("--only", choices=("quality", "ablation"), help="measure one part only")
    parser.add_argument("--method", choices=("qlora", "lora"))
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--rounds", type=int, help="paired rounds (at least 3 for a median of ratios)")
    parser.add_argument("--train-rows", type=int)
    parser.add_argument("--max-epochs", type=int)
    parser.add_argument("--threads", type=int, help="torch threads per run on a CPU (0: torch's default)")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else DEFAULTS
    overrides = {
        "method": args.method,
        "learning_rate": args.learning_rate,
        "rounds": args.rounds,
        "train_rows": args.train_rows,
        "max_epochs": args.max_epochs,
        "threads": args.threads,
    }
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    parts = (args.only,) if args.only else ("quality", "ablation")
    print(json.dumps(measure(settings, args.arch or CPU_ARCHS, parts), indent=2))


if __name__ == "__main__":
    main()
