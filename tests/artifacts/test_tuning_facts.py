"""How an adapter was judged travels with it: metadata.json's held-out evaluation becomes a manifest
annotation (both formats build their annotations here) that `kaito-tune inspect` decodes. The pushes and
inspect against a real registry are in test_roundtrip.py and tests/controller/test_end_to_end.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from artifacts import layout
from artifacts import mediatypes as mt
from artifacts.errors import InvalidInputError
from artifacts.push import read_facts
from contract.reports import evaluation_status

EVALUATION = evaluation_status(6.6918, 0.0412, 7, {"passed": 24, "total": 24, "basePassed": 0})


def adapter_dir(tmp_path: Path, **metadata) -> Path:
    (tmp_path / "metadata.json").write_text(
        json.dumps({"preset": "tiny-llama", "method": "qlora", "metrics": {"eval_loss": 0.0412}} | metadata)
    )
    return tmp_path


def test_the_evaluation_is_an_annotation_that_inspect_decodes(tmp_path):
    facts = read_facts(adapter_dir(tmp_path, evaluation=EVALUATION), {})
    assert facts.evaluation == EVALUATION
    annotations = layout.manifest_annotations(facts, "2026-01-01T00:00:00Z", "a", "v1", {})
    assert json.loads(annotations[mt.ANNOTATION_TUNING_EVALUATION]) == EVALUATION
    assert json.loads(annotations[mt.ANNOTATION_TUNING_METRICS]) == {"eval_loss": 0.0412}
    tuning = layout.tuning_from_annotations(annotations)
    assert tuning == facts.as_json()
    assert tuning["evaluation"]["baseLoss"] == 6.6918 and tuning["evaluation"]["adapterLoss"] == 0.0412
    assert tuning["evaluation"]["checks"] == {"passed": 24, "total": 24, "basePassed": 0}  # the task checks


def test_an_adapter_without_an_evaluation_has_no_such_annotation(tmp_path):
    facts = read_facts(adapter_dir(tmp_path), {})
    annotations = layout.tuning_annotations(facts)
    assert mt.ANNOTATION_TUNING_EVALUATION not in annotations and "evaluation" not in facts.as_json()


def test_an_evaluation_that_is_not_an_object_is_refused(tmp_path):
    with pytest.raises(InvalidInputError, match="'evaluation' must be an object"):
        read_facts(adapter_dir(tmp_path, evaluation="2.3->0.8"), {})
