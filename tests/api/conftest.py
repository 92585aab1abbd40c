"""Fixtures for the Workspace API tests: the seed examples as fresh dicts."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.builders import ADAPTERS_SEED, INFERENCE_SEED, TUNING_SEED, load


@pytest.fixture
def tuning_ws() -> dict[str, Any]:
    return load(TUNING_SEED)


@pytest.fixture
def inference_ws() -> dict[str, Any]:
    return load(INFERENCE_SEED)


@pytest.fixture
def adapters_ws() -> dict[str, Any]:
    return load(ADAPTERS_SEED)
