"""Shared test setup: Hypothesis profiles, the float64 fixture, and the `gpu` marker's skip."""

from __future__ import annotations

import os

import numpy as np
import pytest
import strict_cupy
from hypothesis import HealthCheck, settings

import minipeft
from minipeft import backend

# the CuPy stand-in in tests/strict_cupy/ (CI has no GPU): a test may select it with set_device("strict"), and
# MINIPEFT_TEST_DEVICE=strict runs the whole suite on it
backend.register_device("strict", strict_cupy)
if os.environ.get("MINIPEFT_TEST_DEVICE", "").strip().lower() == "strict":
    backend.set_device("strict")

# `ci` (the default) is fixed and reproducible; `dev` explores more. HYPOTHESIS_PROFILE=dev pytest
settings.register_profile("ci", deadline=None, max_examples=25, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, max_examples=50, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

GPU_REASON = "needs CuPy and a CUDA GPU (set MINIPEFT_DEVICE=cuda)"


def pytest_collection_modifyitems(config, items):
    if minipeft.get_device() == "cuda":
        return
    skip = pytest.mark.skip(reason=GPU_REASON)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def float64():
    """Tensors created from Python floats are float64 inside the test (gradient checks)."""
    prev = minipeft.get_default_dtype()
    minipeft.set_default_dtype(np.float64)
    try:
        yield
    finally:
        minipeft.set_default_dtype(prev)


@pytest.fixture
def keep_rng():
    """Let a test call manual_seed without changing the generator the other tests see."""
    with backend.fork_rng():
        yield
