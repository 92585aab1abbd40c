"""A killed trainer continues where it stopped: SIGKILL after a checkpoint; SIGTERM (checkpoint, exit 143).

Tolerance: the resumed run's final eval loss is within 0.1% of an uninterrupted run's. Optimizer,
scheduler, RNG and data position are restored and the adapter's init is seeded, so on this CPU the two
agree exactly; the margin only absorbs float reordering on other hardware.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.trainer.conftest import ROOT, run_trainer, trainer_command
from tests.trainer.synthetic import code_word_rows, kaito_config, write_jsonl
from trainer.checkpoint import MARKER, newest_complete

pytestmark = pytest.mark.slow

TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    write_jsonl(tmp / "data" / "train.jsonl", code_word_rows())
    config = kaito_config(
        tmp / "config.yaml",
        learning_rate=0.003,
        num_train_epochs=30,
        max_length=128,
        logging_steps=10,
        save_strategy="steps",
        save_steps=40,
        DatasetConfig={"train_test_split": 0.75},
    )
    return tmp, config


@pytest.fixture(scope="module")
def uninterrupted(task):
    tmp, config = task
    out = tmp / "straight"
    result = run_trainer(
        "--config", config, "--data", tmp / "data", "--output", out, "--progress-file", tmp / "p"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metadata.json").read_text())["metrics"]
    events = [json.loads(line) for line in (tmp / "p").read_text().splitlines()]
    assert [e["event"] for e in events[-2:]] == ["eval", "evaluated"]  # the final eval, then base vs adapter
    assert events[-2]["eval_loss"] == metrics["eval_loss"]
    assert round(metrics["eval_loss"], 4) == events[-1]["evaluation"]["adapterLoss"]
    return json.loads((out / "metadata.json").read_text())


def _start(tmp, config, out):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = trainer_command("--config", config, "--data", tmp / "data", "--output", out)
    pipe = subprocess.PIPE
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=pipe, stderr=pipe, text=True)


def _wait_for_checkpoint(proc, out, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if newest_complete(out / "checkpoints"):
            return
        assert proc.poll() is None, f"trainer ended before a checkpoint: {proc.communicate()[1][-3000:]}"
        time.sleep(0.02)
    proc.kill()
    pytest.fail("no checkpoint within the timeout")


def _resume(tmp, config, out, expected_step, uninterrupted):
    result = run_trainer("--config", config, "--data", tmp / "data", "--output", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {out / 'checkpoints' / f'checkpoint-{expected_step}'}" in result.stderr
    start = json.loads(result.stdout.splitlines()[0])
    assert start["event"] == "start" and start["step"] == expected_step
    metadata = json.loads((out / "metadata.json").read_text())
    metrics, straight = metadata["metrics"], uninterrupted["metrics"]
    assert metrics["global_step"] == straight["global_step"]
    assert metrics["eval_loss"] == pytest.approx(straight["eval_loss"], rel=TOLERANCE)
    # the base is measured before the checkpoint loads: the same base loss as the uninterrupted run's
    assert metadata["evaluation"]["baseLoss"] == pytest.approx(
        uninterrupted["evaluation"]["baseLoss"], rel=TOLERANCE
    )


def test_sigkill_after_a_checkpoint_resumes_from_it(task, uninterrupted):
    tmp, config = task
    out = tmp / "killed"
    proc = _start(tmp, config, out)
    _wait_for_checkpoint(proc, out)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    newest = newest_complete(out / "checkpoints")
    step = int(newest.name.split("-")[1])
    assert 0 < step < uninterrupted["metrics"]["global_step"] and not (out / ".kaito-complete").exists()
    half_written = out / "checkpoints" / f"checkpoint-{step + 1000}"  # what a kill during a save leaves
    half_written.mkdir()
    (half_written / "adapter_config.json").write_text("{")
    _resume(tmp, config, out, step, uninterrupted)


def test_sigterm_checkpoints_then_exits_143_and_resumes(task, uninterrupted):
    tmp, config = task
    out = tmp / "terminated"
    proc = _start(tmp, config, out)
    _wait_for_checkpoint(proc, out)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    assert "SIGTERM: stopped at step" in stderr
    newest = newest_complete(out / "checkpoints")
    step = int(newest.name.split("-")[1])
    assert (newest / MARKER).read_text().strip() == str(step)
    assert f"stopped at step {step} " in stderr  # the checkpoint is the step it stopped at
    _resume(tmp, config, out, step, uninterrupted)
