"""Workloads: one RL step's requests (prompts × G samples), synthetic or replayed.

True output lengths live here and in the engine only; policies never see them
(except those named `oracle_*`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seersim.config import ReplayWorkload, Scenario, SyntheticWorkload
from seersim.workload.request import Request, Workload
from seersim.workload.replay import read_trace
from seersim.workload.synthetic import generate_synthetic

__all__ = ["Request", "Workload", "build_workload", "generate_synthetic", "read_trace"]


def build_workload(scenario: Scenario, rng: np.random.Generator) -> Workload:
    """The requests of one RL step, drawn from `rng` (successive calls give successive
    steps). Replayed traces are the same work whatever the seed."""
    wl = scenario.workload
    if isinstance(wl, SyntheticWorkload):
        return generate_synthetic(wl, rng)
    assert isinstance(wl, ReplayWorkload)
    path = Path(wl.path)
    if not path.is_absolute():
        path = Path(scenario.base_dir) / path
    return read_trace(path, wl)
