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


def shared_skip_reason(path: Path, what: str) -> str:
    """Why a test that reads ../shared is skipped: what the data is, and that the skip is
    expected anywhere but this project's CI (which provides ../shared beside the repo)."""
    return (
        f"needs {what} at {path} (the project's ../shared folder, which this project's CI provides beside "
        "the repository); skipping is expected on any other checkout"
    )


def require_shared(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(shared_skip_reason(path, what))
    return path


PUBLIC_TRACES = "public serving traces (Mooncake, Azure LLM inference, Vidur-processed)"


@pytest.fixture(scope="session")
def traces_dir() -> Path:
    return require_shared(TRACES, PUBLIC_TRACES)


# small.yaml cut down for studies that run many points (sweep, plan, report tests):
# 4 prompts x 8 responses of at most 1,024 tokens, a few ms per simulation.
TINY = {"workload.prompts": 4, "workload.max_tokens": 1024, "workload.output_tokens.mean": 300}
TINY_SETS = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
