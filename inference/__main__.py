"""Serve a preset with its adapters (the transformers runtime of an inference Workspace's pod).

    # In the pod (what the controller renders):
    python -m inference --preset phi-3-mini-4k-instruct --adapter-strength my-adapter=0.5

    # Locally, the tiny model with adapters in ./adapters/<name>/:
    python -m inference --preset tiny-llama --adapter-root ./adapters --port 8080
    curl -s localhost:8080/v1/chat/completions -d '{"messages": [{"role": "user", "content": "hi"}]}'

The port is ``--port`` or ``$PORT`` (default 5000, KAITO's). Exit status 1 with one ``error:`` line when
the model or an adapter cannot be loaded (also written to ``--termination-log``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from contract.pod import ADAPTER_ROOT, PRESET_ENV, STRENGTHS_ENV, WEIGHTS_ENV, StrengthError, parse_strengths
from inference.adapters import AdapterError, discover

DEFAULT_PORT = 5000


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m inference", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--preset", default=os.environ.get(PRESET_ENV), help="catalog name or model directory"
    )
    parser.add_argument(
        "--weights",
        type=Path,
        default=os.environ.get(WEIGHTS_ENV),
        help="the preset's model directory (what fetch-model filled), read offline",
    )
    parser.add_argument(
        "--adapter-root", type=Path, default=Path(ADAPTER_ROOT), help="one directory per adapter"
    )
    parser.add_argument(
        "--adapter-strength",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"an adapter's weight in 0..1 (repeatable; also ${STRENGTHS_ENV}=a=0.5,b=1); default 1.0",
    )
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", DEFAULT_PORT)))
    parser.add_argument("--max-new-tokens", type=int, default=2048, help="largest completion a request gets")
    parser.add_argument("--max-queue", type=int, default=64, help="waiting requests before answering 503")
    parser.add_argument("--max-batch", type=int, default=8, help="waiting greedy requests batched together")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--allow-download", action="store_true", help="let transformers fetch the weights")
    parser.add_argument("--termination-log", type=Path, help="also write a startup failure here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from aiohttp import web

    from contract.pod import COMBINED_SUFFIX
    from inference.model import ModelLoadError, load_engine
    from inference.protocol import Limits
    from inference.server import make_app

    try:
        if not args.preset:
            raise AdapterError("--preset (or KAITO_TUNE_PRESET) is required: a catalog name or a model dir")
        strengths = parse_strengths([os.environ.get(STRENGTHS_ENV, ""), *args.adapter_strength])
        preset_id = Path(args.preset).name
        adapters = discover(args.adapter_root, strengths, reserved=(preset_id, preset_id + COMBINED_SUFFIX))
        engine = load_engine(
            args.preset,
            adapters,
            dtype=args.dtype,
            local_files_only=not args.allow_download,
            weights=args.weights,
        )
    except (AdapterError, StrengthError, ModelLoadError) as exc:
        message = f"error: {exc}"
        print(message, file=sys.stderr)
        if args.termination_log:
            args.termination_log.write_text(message + "\n")
        return 1
    limits = Limits(max_new_tokens=args.max_new_tokens, max_context=engine.max_context)
    web.run_app(
        make_app(engine, limits, args.max_queue, args.max_batch), host=args.host, port=args.port, print=None
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
