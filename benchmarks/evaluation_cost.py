"""What the held-out evaluation adds to the demo's training: the trainer run directly (``python -m
trainer.qlora train``, tiny preset, on this CPU) on the demo's data and config
(``examples/tuning/tiny-llama-demo.yaml``, its held-out split) against the same run with
``train_test_split: 1`` (nothing held out, so no evaluation). Same file, steps, batch and seed: only the
held-out rows and their evaluations differ (the base's before the first step, the evaluations at the
config's eval steps, the adapter's after the last; with ``--checks`` also both models' answers to the 24
held-out questions as task checks).

    .venv/bin/python benchmarks/evaluation_cost.py [--rounds 3] [--steps N] [--eval-strategy no|epoch]
        [--checks]

Clock per run: the trainer's own, ``train_runtime_s`` (the training loop, with any evaluations in it) plus
``evaluation_s`` (the base's and the final evaluation) and ``checks_s`` (the checks); model loading and
the data check are off it, and the process's wall time is reported beside it. Rounds alternate which
side runs first; the figure is the median of the per-round paired ratios. Prints one JSON object;
progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from presets.tiny_task import split_rows, write_parquet

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples/tuning/tiny-llama-demo.yaml"


def demo_config(
    split: float | None, steps: int | None, eval_strategy: str | None, checks: bool = False
) -> dict[str, Any]:
    """The example's training config, with another split, step count and eval strategy where given; with
    ``checks``, the 24 questions the demo holds out of the data (and asks the server) as task checks."""
    configmap = next(d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d and d["kind"] == "ConfigMap")
    config = yaml.safe_load(configmap["data"]["training_config.yaml"])
    sections = config["training_config"]
    if split is not None:
        sections["DatasetConfig"]["train_test_split"] = split
    if steps is not None:
        sections["TrainingArguments"]["max_steps"] = steps
    if eval_strategy is not None:
        sections["TrainingArguments"]["eval_strategy"] = eval_strategy
    if checks:
        asked = [
            {"prompt": r["messages"][0]["content"], "exact": r["messages"][1]["content"]}
            for r in split_rows()[1]
        ]
        sections["EvaluationConfig"] = {"checks": asked, "check_max_new_tokens": 4}
    return config


def run(workdir: Path, name: str, config: dict[str, Any], data: Path) -> dict[str, Any]:
    """One trainer process; its metrics and wall time."""
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    out = workdir / f"out-{name}"
    command = [sys.executable, "-m", "trainer.qlora", "train", "--preset", "tiny-llama"]
    command += ["--config", str(path), "--data", str(data), "--output", str(out)]
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    if done.returncode:
        raise RuntimeError(f"{name}: trainer exited {done.returncode}: {done.stderr[-2000:]}")
    metadata = json.loads((out / "metadata.json").read_text())
    metrics = metadata["metrics"]
    evaluation_s, checks_s = metrics.get("evaluation_s", 0.0), metrics.get("checks_s", 0.0)
    return {
        "clock_s": round(metrics["train_runtime_s"] + evaluation_s + checks_s, 2),
        "train_runtime_s": metrics["train_runtime_s"],
        "evaluation_s": evaluation_s,
        "checks_s": checks_s,  # the task checks' answers, base and adapter
        "wall_s": round(wall, 2),
        "steps": metrics["global_step"],
        "summary": metadata["evaluation"]["summary"],
        "load": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, help="default: the example's max_steps")
    parser.add_argument(
        "--eval-strategy", choices=("no", "epoch"), help="evaluations in between (default: the example's)"
    )
    parser.add_argument(
        "--checks", action="store_true", help="the 24 held-out questions as task checks on the evaluated side"
    )
    args = parser.parse_args(argv)
    sides = {
        "evaluated": demo_config(None, args.steps, args.eval_strategy, args.checks),
        "none": demo_config(1, args.steps, "no"),
    }
    rounds = []
    with tempfile.TemporaryDirectory(prefix="evaluation-cost-") as tmp:
        workdir = Path(tmp)
        data = write_parquet(workdir / "data" / "code-words.parquet", split_rows()[0]).parent
        for i in range(max(args.rounds, 1)):
            order = list(sides) if i % 2 == 0 else list(reversed(sides))
            result = {}
            for name in order:
                result[name] = run(workdir, f"{name}-{i}", sides[name], data)
                print(f"round {i + 1}: {name} {result[name]}", file=sys.stderr, flush=True)
            rounds.append(result)

    def added(key: str) -> list[float]:
        return [round(100 * (r["evaluated"][key] / r["none"][key] - 1), 1) for r in rounds]

    def share(*keys: str) -> float:
        each = [sum(r["evaluated"][k] for k in keys) / r["evaluated"]["train_runtime_s"] for r in rounds]
        return round(100 * statistics.median(each), 1)

    sections = sides["evaluated"]["training_config"]
    summary = {
        "config": str(EXAMPLE.relative_to(ROOT)),
        "train_test_split": sections["DatasetConfig"]["train_test_split"],
        "max_steps": sections["TrainingArguments"]["max_steps"],
        "eval_strategy": sections["TrainingArguments"].get("eval_strategy", "epoch"),  # the trainer's default
        "checks": len(sections.get("EvaluationConfig", {}).get("checks", [])),
        "rounds": rounds,
        "added_percent_median": statistics.median(added("clock_s")),
        "added_percent_each": added("clock_s"),
        "added_wall_percent_median": statistics.median(added("wall_s")),
        "base_and_final_evaluation_percent_median": share("evaluation_s"),
        "checks_percent_median": share("checks_s"),
        "evaluation_and_checks_percent_median": share("evaluation_s", "checks_s"),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
