"""Latency and throughput of ``POST /v1/chat/completions`` on the tiny preset, 1 and 8 concurrent clients.

    .venv/bin/python benchmarks/inference_latency.py [--requests 40] [--max-tokens 32]

The server (``python -m inference``, a child process on loopback) serves the tiny preset with one LoRA
adapter (rank 8 on every linear layer, random weights: the compute is what counts). Each client sends
greedy requests back to back. Baselines measured in the same run: the same server's base model (what
the adapter costs), and ``Engine.generate`` called in this process without HTTP (what the server adds).
One JSON object on stdout; the server's log goes to a temporary file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from hack.operators import running_inference_server  # noqa: E402

ROUNDS = 4
MESSAGES = [{"role": "user", "content": "tell me a short story about the river in summer"}]


def make_adapter(preset: Path, dest: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(preset)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(dest)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_clients(url: str, model: str, clients: int, requests_total: int, max_tokens: int) -> dict:
    """Latencies (s), wall time (s) and completion tokens of ``requests_total`` requests from ``clients``."""
    body = {"model": model, "messages": MESSAGES, "max_tokens": max_tokens, "temperature": 0}

    def one(_: int) -> tuple[float, int]:
        start = time.perf_counter()
        resp = requests.post(f"{url}/v1/chat/completions", json=body, timeout=300)
        resp.raise_for_status()
        return time.perf_counter() - start, resp.json()["usage"]["completion_tokens"]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(requests_total)))
    return {
        "latencies": [r[0] for r in results],
        "wall": time.perf_counter() - start,
        "tokens": sum(r[1] for r in results),
    }


def summarize(runs: list[dict]) -> dict:
    latencies = [x for r in runs for x in r["latencies"]]
    wall = sum(r["wall"] for r in runs)
    return {
        "rps": round(len(latencies) / wall, 2),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p95_ms": round(1000 * percentile(latencies, 0.95), 1),
        "tokens_per_s": round(sum(r["tokens"] for r in runs) / wall, 1),
    }


def in_process_engine(adapter_root: Path):
    """Engine.generate without HTTP or queue: the floor the server's latency is compared with."""
    from inference.adapters import discover
    from inference.model import SamplingParams, load_engine

    engine = load_engine("tiny-llama", discover(adapter_root, {}))
    prompt = engine.chat_prompt(MESSAGES)

    def generate(max_tokens: int) -> float:
        start = time.perf_counter()
        engine.generate(engine.default_id, prompt, SamplingParams(max_new_tokens=max_tokens))
        return time.perf_counter() - start

    return generate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=40, help="requests per measurement")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    from presets.tiny import ensure_tiny_preset

    preset = ensure_tiny_preset()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "adapters"
        make_adapter(preset, root / "bench")
        with running_inference_server(root, Path(tmp) / "server.log", "--max-queue", "256") as url:
            run_clients(url, "tiny-llama+adapters", 2, 4, args.max_tokens)  # warm-up
            # Rounds interleave the four measurements, so load from other processes on a shared
            # machine falls on all of them alike rather than on whichever ran at the wrong moment.
            configs = [
                (f"{name}_{clients}c", model, clients)
                for clients in (1, 8)
                for name, model in (("adapters", "tiny-llama+adapters"), ("base", "tiny-llama"))
            ]
            runs: dict[str, list[dict]] = {key: [] for key, _, _ in configs}
            per_round = max(8, args.requests // ROUNDS)
            for _ in range(ROUNDS):
                for key, model, clients in configs:
                    runs[key].append(run_clients(url, model, clients, per_round, args.max_tokens))
            results = {key: summarize(value) for key, value in runs.items()}
        # Measured once the server has stopped, so the two processes never share the CPUs.
        generate = in_process_engine(root)
        floor = [generate(args.max_tokens) for _ in range(per_round + 1)][1:]
    out = {
        "model": "tiny-llama + 1 LoRA adapter (r=8, all linear layers)",
        "max_tokens": args.max_tokens,
        "requests_per_measurement": ROUNDS * max(8, args.requests // ROUNDS),
        **results,
        "in_process_generate_p50_ms": round(1000 * statistics.median(floor), 1),
        "adapter_cost_p50_ratio_1c": round(
            results["adapters_1c"]["p50_ms"] / results["base_1c"]["p50_ms"], 2
        ),
        "server_overhead_p50_ratio_1c": round(
            results["adapters_1c"]["p50_ms"] / (1000 * statistics.median(floor)), 2
        ),
        "rps_ratio_8c_vs_1c": round(results["adapters_8c"]["rps"] / results["adapters_1c"]["rps"], 2),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
