"""Fine-tune a preset model with LoRA or QLoRA on the data in a directory; the tuning pod's entry point.

    # In the pod (KAITO's paths are the defaults):
    python -m trainer.qlora --preset phi-3-mini-4k-instruct

    # Locally, on the tiny model built on the fly:
    python -m trainer.qlora --preset tiny-llama --config training_config.yaml --data ./data --output ./out

    # Check the data only (no model loaded): prints a JSON report, exit 1 when rows are unusable
    python -m trainer.qlora --preset tiny-llama --config training_config.yaml --data ./data --dry-run

    # Several processes (DDP; gloo on CPU, NCCL on GPUs):
    torchrun --nproc-per-node 2 -m trainer.qlora --preset tiny-llama ...

Stdout carries JSON lines (progress events, or the dry-run report); logs go to stderr. Exit codes: 0 done
(or already done), 1 unusable config/data/preset, 143 stopped by SIGTERM after a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("trainer")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.qlora", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=Path("/mnt/config/training_config.yaml"))
    parser.add_argument("--data", type=Path, default=Path("/mnt/data"))
    parser.add_argument("--output", type=Path, default=Path("/mnt/results"))
    parser.add_argument(
        "--preset", default=os.environ.get("KAITO_TUNE_PRESET"), help="catalog name or model dir"
    )
    parser.add_argument(
        "--weights",
        type=Path,
        default=os.environ.get("KAITO_TUNE_WEIGHTS"),
        help="the preset's model directory (what fetch-model filled); default: build or find it locally",
    )
    parser.add_argument("--method", choices=("lora", "qlora"), help="default: from QuantizationConfig")
    parser.add_argument("--dry-run", action="store_true", help="pre-flight only: print the data report")
    parser.add_argument("--checkpoint-minutes", type=float, default=15.0, help="also save every M minutes")
    parser.add_argument("--progress-file", type=Path, help="JSON-lines progress here instead of stdout")
    parser.add_argument("--progress-interval", type=float, default=5.0, help="seconds between step events")
    return parser


def _fail(problems) -> int:
    """One line per problem on stderr; a Problem already starts with its severity."""
    for problem in problems:
        text = str(problem)
        print(text if text.startswith("error: ") else f"error: {text}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from presets.resolve import PresetNotFound, resolve_preset
    from trainer import config as cfg
    from trainer.data import DataError, combined_sha256, read_rows
    from trainer.model import load_tokenizer
    from trainer.preflight import prepare

    if not args.preset:
        return _fail(["--preset (or KAITO_TUNE_PRESET) is required: a catalog name or a model directory"])
    try:
        config = cfg.load(args.config, args.method)
        preset = resolve_preset(args.preset, args.weights)
    except (cfg.ConfigError, PresetNotFound) as exc:
        return _fail(exc.problems)
    if not args.dry_run:  # the dry run (the CPU pre-flight) imports no torch: trainer.output does
        from trainer.output import is_complete

        if is_complete(args.output):
            log.info("%s already holds a complete adapter: nothing to do", args.output)
            return 0
    try:
        tokenizer = load_tokenizer(preset, config)
    except (OSError, ValueError) as exc:  # not in the image/cache (no download allowed), or no tokenizer
        return _fail([f"cannot load preset {preset.name!r} from {preset.source}: {exc}"])
    try:
        rows, files = read_rows(args.data)
        prepared = prepare(rows, files, tokenizer, config.dataset, config.collator, config.max_length)
    except DataError as exc:
        if args.dry_run:
            print(
                json.dumps({"ok": False, "errors": [str(p) for p in exc.problems], "bad_rows": []}, indent=2)
            )
        return _fail(exc.problems)
    if args.dry_run:
        print(json.dumps(prepared.report, indent=2))
        return 0 if prepared.ok else 1
    if not prepared.ok:
        return _fail(prepared.report["errors"])
    if config.collator.mlm:
        log.info(
            "DataCollator.mlm is ignored: causal LMs are trained on next tokens (kept for KAITO configs)"
        )
    method = args.method or config.method
    from trainer.train import train

    return train(args, config, preset, tokenizer, prepared, method, files, combined_sha256(files))


if __name__ == "__main__":
    sys.exit(main())
