"""The results directory: adapter, metadata and, last, the completion marker the push container waits for.

    <output>/adapter_config.json
    <output>/adapter_model.safetensors
    <output>/tokenizer*.json, chat_template.jinja   (only when ModelConfig.chat_template changed it)
    <output>/metadata.json
    <output>/.kaito-complete                        (JSON: the files above with their sha256)

Files are written into a temporary directory next to their destination and renamed into place one by
one; the marker comes last, so a reader that sees it sees a complete adapter.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.checkpoint import write_marker

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase

    from contract.reports import EvaluationStatus, GateVerdict
    from presets.resolve import ResolvedPreset
    from trainer.config import TrainingConfig
    from trainer.data import DataFile

COMPLETE_MARKER = ".kaito-complete"
METADATA = "metadata.json"


def is_complete(output: Path) -> bool:
    return (Path(output) / COMPLETE_MARKER).is_file()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_results(
    output: Path,
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    metadata: dict[str, Any],
    *,
    save_tokenizer: bool,
) -> list[str]:
    """Save adapter (+ tokenizer), metadata.json and the marker; returns the names written."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".results-", dir=output))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        if save_tokenizer:
            tokenizer.save_pretrained(tmp)
        (tmp / METADATA).write_text(json.dumps(metadata, indent=2, sort_keys=True, default=str) + "\n")
        written = sorted(p.name for p in tmp.iterdir() if p.is_file())
        files = {name: _sha256(tmp / name) for name in written}
        for name in written:
            os.replace(tmp / name, output / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_marker(output / COMPLETE_MARKER, json.dumps({"files": files}, indent=2, sort_keys=True) + "\n")
    return written


def build_metadata(
    *,
    preset: ResolvedPreset,
    method: str,
    config: TrainingConfig,
    files: list[DataFile],
    combined_sha256: str,
    report: dict[str, Any],
    metrics: dict[str, Any],
    evaluation: EvaluationStatus,
    gate: GateVerdict | None,
    warnings: list[str],
) -> dict[str, Any]:
    """metadata.json: what was trained from what and how it was judged, for the artifact's annotations
    and for people."""
    import peft
    import torch
    import transformers

    return {
        "preset": preset.name,
        "base_model": preset.source,
        "model_revision": preset.revision,
        "method": method,
        "config_sha256": config.sha256(),
        "training_config": config.sections,
        "data_sha256": {"files": {f.relpath: f.sha256 for f in files}, "combined": combined_sha256},
        "data": {
            k: report[k]
            for k in ("rows", "usable_rows", "skipped_rows", "train_rows", "eval_rows", "eval_files")
        },
        "metrics": metrics,
        "evaluation": evaluation,
        "gate": gate,  # EvaluationConfig.min_improvement's verdict (None: no gate); the push step reads it
        "warnings": warnings,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
    }
