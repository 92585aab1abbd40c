"""Fine-tune a preset model with LoRA or QLoRA on the data in a directory; the tuning pod's one entry point.

    # Locally, on the tiny model built on the fly:
    python -m trainer.qlora --preset tiny-llama --config training_config.yaml --data ./data --output ./out

    # Check the data only (no model loaded): prints a JSON report, exit 1 when rows are unusable
    python -m trainer.qlora --preset tiny-llama --config training_config.yaml --data ./data --dry-run

    # Several processes (DDP; gloo on CPU, NCCL on GPUs):
    torchrun --nproc-per-node 2 -m trainer.qlora --preset tiny-llama ...

    # The controller's pods (KAITO's paths are the defaults):
    python -m trainer.qlora preflight --summary-file /dev/termination-log --preset phi-3-mini-4k-instruct
    python -m trainer.qlora train --expect-data-sha256 HEX --preset phi-3-mini-4k-instruct

``preflight`` is ``--dry-run`` that also writes the compact summary the controller reads; ``train`` is the
plain run that first checks the data is what the pre-flight checked. Stdout carries JSON (progress
events, or the report); logs go to stderr. Exit codes (``contract.pod``): 0 done (or already done),
1 unusable config/data/preset, 143 stopped by SIGTERM after a checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import fields
from pathlib import Path

from contract.pod import PRESET_ENV, WEIGHTS_ENV
from contract.training_config import Method
from trainer import steps
from trainer.options import TrainerOptions

PREFLIGHT, TRAIN = "preflight", "train"


def _add_trainer_options(parser: argparse.ArgumentParser) -> None:
    """TrainerOptions' fields; an option not given keeps the dataclass default (the pod's paths)."""
    given = argparse.SUPPRESS
    parser.add_argument(
        "--preset", default=os.environ.get(PRESET_ENV) or given, help="catalog name or model dir"
    )
    for name, what in (("config", "training_config.yaml"), ("data", "data directory"), ("output", "results")):
        default = getattr(TrainerOptions, name)
        parser.add_argument(f"--{name}", type=Path, default=given, help=f"{what} (default: {default})")
    parser.add_argument(
        "--weights",
        type=Path,
        default=os.environ.get(WEIGHTS_ENV) or given,
        help="the preset's model directory (what fetch-model filled); default: build or find it locally",
    )
    parser.add_argument(
        "--method", type=Method, choices=list(Method), default=given, help="default: from QuantizationConfig"
    )
    parser.add_argument("--checkpoint-minutes", type=float, default=given, help="also save every M minutes")
    parser.add_argument(
        "--progress-file", type=Path, default=given, help="JSON-lines progress here instead of stdout"
    )
    parser.add_argument("--progress-interval", type=float, default=given, help="seconds between step events")


def make_parser(step: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``step`` (``preflight``, ``train``), or of the plain local use when None."""
    prog = " ".join(filter(None, ("python -m trainer.qlora", step)))
    steps_help = f"steps (the controller's pods): {PREFLIGHT}, {TRAIN}; see `{prog} STEP --help`"
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n")[0], epilog=None if step else steps_help
    )
    _add_trainer_options(parser)
    parser.set_defaults(summary_file=None, expect_data_sha256=None, dry_run=False)
    if step == PREFLIGHT:
        parser.add_argument("--summary-file", type=Path, help="write the compact JSON summary here")
    elif step == TRAIN:
        parser.add_argument(
            "--expect-data-sha256", help="refuse data whose sha256 differs (the pre-flight's)"
        )
    else:
        parser.add_argument("--dry-run", action="store_true", help="pre-flight only: print the data report")
    return parser


def trainer_options(args: argparse.Namespace) -> TrainerOptions:
    given = vars(args)
    return TrainerOptions(**{f.name: given[f.name] for f in fields(TrainerOptions) if f.name in given})


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    step = argv.pop(0) if argv[:1] in ([PREFLIGHT], [TRAIN]) else None
    args = make_parser(step).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not vars(args).get("preset"):
        return steps.fail(
            ["--preset (or KAITO_TUNE_PRESET) is required: a catalog name or a model directory"]
        )
    options = trainer_options(args)
    if step == PREFLIGHT or args.dry_run:
        return steps.preflight(options, args.summary_file)
    return steps.train(options, args.expect_data_sha256)


if __name__ == "__main__":
    sys.exit(main())
