"""The results directory is written atomically, marker last, and vLLM's adapter limits are flagged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.model import vllm_warnings
from trainer.output import COMPLETE_MARKER, is_complete, write_results


class _Saves:
    """Stands in for a PeftModel/tokenizer: writes the files save_pretrained would, or fails midway."""

    def __init__(self, fail: bool = False):
        self.fail = fail

    def save_pretrained(self, directory: str, **kwargs):
        path = Path(directory)
        (path / "adapter_config.json").write_text("{}")
        if self.fail:
            raise OSError("disk full")
        (path / "adapter_model.safetensors").write_bytes(b"weights")


def test_results_are_complete_only_after_everything_is_written(tmp_path):
    written = write_results(tmp_path, _Saves(), None, {"preset": "tiny-llama"}, save_tokenizer=False)
    assert written == ["adapter_config.json", "adapter_model.safetensors", "metadata.json"]
    marker = json.loads((tmp_path / COMPLETE_MARKER).read_text())
    assert set(marker["files"]) == set(written) and is_complete(tmp_path)
    assert not list(tmp_path.glob(".results-*"))


def test_a_failed_save_leaves_no_marker_and_no_partial_files(tmp_path):
    with pytest.raises(OSError, match="disk full"):
        write_results(tmp_path, _Saves(fail=True), None, {}, save_tokenizer=False)
    assert list(tmp_path.iterdir()) == []


def test_modules_to_save_on_lm_head_or_embeddings_warns_about_vllm():
    assert vllm_warnings({"r": 8}) == []
    [warning] = vllm_warnings({"modules_to_save": ["lm_head", "embed_tokens", "score"]})
    assert "['lm_head', 'embed_tokens']" in warning and "vLLM" in warning
