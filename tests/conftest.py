"""Shared fixtures and helpers for the seersim test suite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import seersim

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL_YAML = REPO_ROOT / "scenarios" / "small.yaml"
SHARED = Path(__file__).resolve().parents[2] / "shared"
TRACES = SHARED / "traces"


def load_small(**overrides) -> seersim.Scenario:
    """`scenarios/small.yaml` with dotted-path overrides, e.g. ``load_small(**{"workload.prompts": 16})``."""
    return seersim.load_scenario(SMALL_YAML, **overrides)


def run_cluster(scenario: seersim.Scenario, seed: int | None = None):
    """Build the workload and run one step through the driver on the simulated backend;
    returns (driver, StepRecords, workload)."""
    from seersim.driver import Driver
    from seersim.engine import SimBackend
    from seersim.policies import make_policy
    from seersim.workload import build_workload

    rng = np.random.default_rng(scenario.seed if seed is None else seed)
    wl = build_workload(scenario, rng)
    driver = Driver(SimBackend(scenario), make_policy(scenario.policy), wl)
    out = driver.run()
    return driver, out, wl


def assert_frames_equivalent(a: pd.DataFrame, b: pd.DataFrame, rtol: float = 1e-9) -> None:
    """Same columns and rows; integer/bool/object columns equal, float columns within rtol (NaN == NaN)."""
    assert list(a.columns) == list(b.columns)
    assert len(a) == len(b), (len(a), len(b))
    for col in a.columns:
        x, y = a[col].to_numpy(), b[col].to_numpy()
        if x.dtype.kind == "f" or y.dtype.kind == "f":
            np.testing.assert_allclose(
                x.astype(np.float64), y.astype(np.float64), rtol=rtol, atol=0, equal_nan=True, err_msg=f"column {col}"
            )
        else:
            np.testing.assert_array_equal(x, y, err_msg=f"column {col}")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def small_yaml() -> Path:
    return SMALL_YAML


@pytest.fixture
def small():
    """A loader: ``small(**{"workload.prompts": 16})`` -> Scenario."""
    return load_small


@pytest.fixture(scope="session")
def traces_dir() -> Path:
    if not TRACES.is_dir():
        pytest.skip(f"public traces not available: {TRACES} is absent")
    return TRACES
