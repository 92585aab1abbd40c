"""Bake adapter strengths into plain LoRA adapters for runtimes that serve adapters by name (vLLM).

vLLM loads each adapter at full strength, so an init step writes, before vLLM starts:

    <output>/<name>/                one per adapter, scaled by its strength
    <output>/<preset>+adapters/     all adapters, each scaled by its strength, summed
    <output>/max-lora-rank          the smallest vLLM --max-lora-rank that fits them

The arithmetic is PEFT's ``add_weighted_adapter(..., combination_type="cat")`` (what the transformers
runtime does, see inference/model.py) done on the safetensors alone, without loading the base model:
ranks are stacked, each ``lora_A`` is multiplied by ``strength * scaling`` and the result gets
``lora_alpha = r`` (scaling 1), so its weight delta is exactly ``sum(strength_i * B_i A_i scaling_i)``.
A module that one adapter does not touch gets zero rows for that adapter's share of the rank.

    python -m inference.merge --preset phi-3-mini-4k-instruct --output /mnt/merged \\
        --adapter-strength my-adapter=0.5
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from contract.pod import ADAPTER_ROOT, COMBINED_SUFFIX, STRENGTHS_ENV, StrengthError, parse_strengths
from inference.adapters import ADAPTER_CONFIG, Adapter, AdapterError, discover

WEIGHTS = "adapter_model.safetensors"
MAX_LORA_RANK_FILE = "max-lora-rank"
# vLLM's accepted --max-lora-rank values (vllm/config/lora.py, MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
_A, _B = ".lora_A.weight", ".lora_B.weight"


def _load(adapter: Adapter) -> tuple[dict, dict]:
    """An adapter's config and tensors, refused with the reason when it is not a plain LoRA."""
    from safetensors.torch import load_file

    config = json.loads((adapter.path / ADAPTER_CONFIG).read_text())
    where = f"adapter {adapter.name!r} ({adapter.path})"
    problems = []
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {config.get('peft_type')!r} (only LORA)")
    if config.get("use_dora"):
        problems.append("use_dora (DoRA magnitudes cannot be stacked)")
    if config.get("modules_to_save"):
        problems.append(f"modules_to_save {config['modules_to_save']} (vLLM cannot serve replaced modules)")
    if config.get("alpha_pattern") or config.get("rank_pattern"):
        problems.append("alpha_pattern/rank_pattern (per-module rank or alpha)")
    if config.get("bias", "none") != "none":
        problems.append(f"bias {config.get('bias')!r} (only 'none')")
    if problems:
        raise AdapterError(f"{where} cannot be merged for vLLM: {'; '.join(problems)}")
    weights = adapter.path / WEIGHTS
    if not weights.is_file():
        raise AdapterError(f"{where} has no {WEIGHTS}; re-push the adapter in PEFT's safetensors format")
    tensors = load_file(str(weights))
    odd = sorted(k for k in tensors if not k.endswith((_A, _B)))
    if odd:
        raise AdapterError(f"{where}: tensors other than lora_A/lora_B weights, e.g. {odd[:3]}")
    return config, tensors


def _scaling(config: dict, rank: int) -> float:
    alpha = float(config.get("lora_alpha", rank))
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def merge(adapters: Sequence[Adapter]) -> tuple[dict, dict]:
    """The ``cat`` combination of ``adapters`` at their strengths: (adapter_config, tensors)."""
    import torch

    loaded = [_load(a) for a in adapters]
    modules = sorted({k[: -len(_A)] for _, tensors in loaded for k in tensors if k.endswith(_A)})
    ranks = [int(config["r"]) for config, _ in loaded]
    total = sum(ranks)
    out: dict[str, torch.Tensor] = {}
    for module in modules:
        a_parts, b_parts = [], []
        shapes = next(
            (t[module + _A].shape[1], t[module + _B].shape[0]) for _, t in loaded if module + _A in t
        )
        dtype = next(t[module + _A].dtype for _, t in loaded if module + _A in t)
        for adapter, (config, tensors), rank in zip(adapters, loaded, ranks, strict=True):
            if module + _A in tensors:
                lora_a, lora_b = tensors[module + _A].float(), tensors[module + _B].float()
                factor = adapter.strength * _scaling(config, rank)
                a_parts.append(lora_a * factor)
                b_parts.append(lora_b)
            else:
                a_parts.append(torch.zeros(rank, shapes[0]))
                b_parts.append(torch.zeros(shapes[1], rank))
        out[module + _A] = torch.cat(a_parts, dim=0).to(dtype).contiguous()
        out[module + _B] = torch.cat(b_parts, dim=1).to(dtype).contiguous()
    targets = sorted({m.rsplit(".", 1)[-1] for m in modules})
    config = {
        **loaded[0][0],
        "r": total,
        "lora_alpha": total,
        "use_rslora": False,
        "target_modules": targets,
        "rank_pattern": {},
        "alpha_pattern": {},
        "lora_dropout": 0.0,
    }
    return config, out


def _write(directory: Path, config: dict, tensors: dict) -> None:
    """Write an adapter directory atomically (a half-written adapter must never reach vLLM)."""
    from safetensors.torch import save_file

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(tensors, str(tmp / WEIGHTS))
    shutil.rmtree(directory, ignore_errors=True)
    os.rename(tmp, directory)


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest accepted --max-lora-rank that fits ``rank``."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise AdapterError(
        f"the combined adapter has rank {rank}, above vLLM's largest --max-lora-rank {VLLM_LORA_RANKS[-1]}; "
        "serve fewer adapters or use the transformers runtime"
    )


def write_merged(adapters: Sequence[Adapter], output: Path, combined_id: str) -> dict[str, Path]:
    """One scaled adapter per name plus the combination under ``output``; returns name -> directory."""
    written: dict[str, Path] = {}
    ranks = []
    for adapter in adapters:
        config, tensors = merge([adapter])
        _write(output / adapter.name, config, tensors)
        written[adapter.name] = output / adapter.name
        ranks.append(config["r"])
    if adapters:
        config, tensors = merge(adapters)
        _write(output / combined_id, config, tensors)
        written[combined_id] = output / combined_id
        ranks.append(config["r"])
    (output / MAX_LORA_RANK_FILE).write_text(f"{vllm_max_lora_rank(max(ranks, default=1))}\n")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference.merge", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", required=True, help="served base model id (names the combination)")
    parser.add_argument("--adapter-root", type=Path, default=Path(ADAPTER_ROOT))
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--adapter-strength", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--termination-log", type=Path, help="also write a failure here")
    args = parser.parse_args(argv)
    combined_id = Path(args.preset).name + COMBINED_SUFFIX
    try:
        strengths = parse_strengths([os.environ.get(STRENGTHS_ENV, ""), *args.adapter_strength])
        adapters = discover(args.adapter_root, strengths, reserved=(Path(args.preset).name, combined_id))
        written = write_merged(adapters, args.output, combined_id)
    except (AdapterError, StrengthError) as exc:
        message = f"error: {exc}"
        print(message, file=sys.stderr)
        if args.termination_log:
            args.termination_log.write_text(message + "\n")
        return 1
    print(json.dumps({name: str(path) for name, path in written.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
