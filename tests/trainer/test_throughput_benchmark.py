"""benchmarks/trainer_throughput.py --quick: the JSON has what issue 14's benchmark section asks for, on both
model shapes. Structure only: timings are not asserted (a shared CI machine makes them noise)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
SHAPES = ("llama-22m", "llama-9m-v1k")
STEPS = ["baseline", "+loss_on_trained_positions", "+our_checkpointing", "ours", "ours+packing"]


@pytest.fixture(scope="module")
def result() -> dict:
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "trainer_throughput.py"), "--quick"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out: dict = json.loads(done.stdout)
    return out


def test_time_to_quality_per_shape(result):
    assert set(result["time_to_quality"]) == set(SHAPES)
    for shape in SHAPES:
        ttq = result["time_to_quality"][shape]
        assert "speedup_to_quality" in ttq and "memory_ratio" in ttq
        assert ttq["speedup_to_quality"] is not None or "speedup_to_quality_at_most" in ttq
        assert ttq["target_loss"] < ttq["initial_loss"]  # the baseline learned something in its epoch
        assert len(ttq["paired"]) >= 3
        for pair in ttq["paired"]:
            assert {"baseline_s", "ours_s", "ratio", "memory_ratio"} <= set(pair)


def test_ablation_steps_and_paired_ratios(result):
    assert set(result["ablation"]) == set(SHAPES)
    for shape in SHAPES:
        steps = result["ablation"][shape]
        assert [s["step"] for s in steps] == STEPS
        assert all(s["tokens_per_s"] > 0 and len(s["tokens_per_s_runs"]) >= 3 for s in steps)
        for step in steps[1:]:
            assert step["ratio_to_previous"] > 0
            assert len(step["paired_ratios_to_previous"]) >= 3


def test_shapes_lm_head_share_and_load(result):
    phi = result["phi_3_mini_lm_head_share"]
    assert 0.02 < phi < 0.03
    shares = {shape: result["shapes"][shape]["lm_head_share_of_forward_flops"] for shape in SHAPES}
    assert shares["llama-22m"] > 0.5  # the LM head dominates the small-model shape
    assert phi / 2 <= shares["llama-9m-v1k"] <= phi * 2  # within 2x of phi-3-mini's
    assert {"min", "median", "max"} <= set(result["load_average_1m"])
