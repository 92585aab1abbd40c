"""The push step refuses an adapter whose metadata.json says it failed EvaluationConfig.min_improvement: a
distinct exit status (the training Job's failure policy fails at once on it), one line on stderr and in
the termination log, nothing sent to the registry, the directory untouched; --ignore-gate ships it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from artifacts.errors import NotBetterError, NotFoundError
from artifacts.pull import inspect
from artifacts.push import push
from artifacts.registry import ClientOptions
from contract.pod import EXIT_NOT_BETTER
from contract.reports import improvement_gate
from tests.artifacts.conftest import snapshot
from tests.fixtures.registry import Registry
from tuning_controller.cli import main

EVALUATION = {"baseLoss": 2.0, "adapterLoss": 1.9}


def _judged(adapter_dir: Path, min_improvement: float) -> Path:
    metadata = json.loads((adapter_dir / "metadata.json").read_text())
    metadata |= {"evaluation": EVALUATION, "gate": improvement_gate(EVALUATION, min_improvement)}
    (adapter_dir / "metadata.json").write_text(json.dumps(metadata))
    return adapter_dir


def test_a_failed_gate_is_refused_with_its_exit_status_and_both_losses(
    adapter_dir: Path, open_registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _judged(adapter_dir, 0.1)  # 5% lower, 10% asked
    before = snapshot(adapter_dir)
    log = tmp_path / "termination-log"
    ref = open_registry.ref("gate/refused", "v1")

    status = main(["push", str(adapter_dir), ref, "--termination-log", str(log)])

    assert status == EXIT_NOT_BETTER
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: not pushed: held-out loss: base 2 -> adapter 1.9")
    assert "5.0% lower" in err and "at least 10.0% lower" in err and "--ignore-gate" in err
    assert log.read_text() == err.removeprefix("error: ") + "\n"
    assert snapshot(adapter_dir) == before
    with pytest.raises(NotFoundError):  # nothing reached the registry
        inspect(ref, options=ClientOptions())


def test_ignore_gate_pushes_it_anyway(adapter_dir: Path, open_registry: Registry) -> None:
    _judged(adapter_dir, 0.1)
    ref = open_registry.ref("gate/forced", "v1")
    with pytest.raises(NotBetterError):
        push(adapter_dir, ref, options=ClientOptions())
    assert main(["push", str(adapter_dir), ref, "--ignore-gate"]) == 0


def test_a_passed_gate_pushes(adapter_dir: Path, open_registry: Registry) -> None:
    _judged(adapter_dir, 0.05)
    ref = open_registry.ref("gate/passed", "v1")
    assert push(adapter_dir, ref, options=ClientOptions()).digest.startswith("sha256:")
