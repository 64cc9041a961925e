"""Python API for notebooks and scripts; the CLI is a thin layer over it.

    import seersim
    sc = seersim.load_scenario("scenarios/small.yaml", **{"cluster.instances": 8})
    res = seersim.simulate(sc, policy="divided", seed=1)
    res.summary["makespan_s"], res.requests.head()
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from seersim.config import Scenario, load_scenario, with_overrides
from seersim.cost import CostModel
from seersim.driver import Driver, StepRecords, rollout_steps
from seersim.engine import SimBackend
from seersim.errors import ScenarioError
from seersim.limits import check_work
from seersim.metrics import summarize
from seersim.policies import Policy, policy_class
from seersim.workload import Workload


@dataclass
class StepResult:
    step: int
    summary: dict
    requests: pd.DataFrame
    instances: pd.DataFrame
    timeline: pd.DataFrame


@dataclass
class RunResult:
    """One simulated run: per-step results; `summary` is the step's (or the mean over steps)."""

    scenario: Scenario
    policy: str
    seed: int
    steps: list[StepResult] = field(default_factory=list)

    @property
    def summary(self) -> dict:
        """The step's summary; over several steps, the mean of each metric, labelled
        `"aggregate": "mean of N steps"` (the per-step values are in `steps`)."""
        if len(self.steps) == 1:
            return dict(self.steps[0].summary)
        rows = pd.DataFrame([s.summary for s in self.steps]).drop(columns="step")
        numeric = [k for k in rows.columns if pd.api.types.is_numeric_dtype(rows[k])]
        out = {k: rows[k].iloc[0] for k in rows.columns if k not in numeric}
        out.update({k: float(rows[k].mean()) for k in numeric})
        out["aggregate"] = f"mean of {len(self.steps)} steps"
        out["steps"] = len(self.steps)
        out["seed"] = self.seed
        return out

    def to_json(self) -> dict:
        """The summary; with several steps, plus `per_step` (each step's own summary)."""
        if len(self.steps) == 1:
            return self.summary
        return {**self.summary, "per_step": [s.summary for s in self.steps]}

    def _concat(self, attr: str) -> pd.DataFrame:
        frames = [getattr(s, attr).assign(step=s.step) for s in self.steps]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    @property
    def requests(self) -> pd.DataFrame:
        """One row per request (per step): lengths, chunks, migrations, preemptions, times."""
        return self._concat("requests")

    @property
    def instances(self) -> pd.DataFrame:
        """One row per instance (per step): busy time, iterations, preemptions, tokens."""
        return self._concat("instances")

    @property
    def timeline(self) -> pd.DataFrame:
        """One row per batch-changing event per instance: running, waiting, KV use."""
        return self._concat("timeline")


def simulate(
    scenario: Scenario | str | os.PathLike,
    policy: str | None = None,
    seed: int | None = None,
    *,
    cost: CostModel | None = None,
    workload: Workload | None = None,
    progress: Callable[[int, int], None] | None = None,
    **overrides,
) -> RunResult:
    """Simulate `scenario.steps` rollout steps under `policy` (default: the scenario's).

    `scenario`: a loaded `Scenario` or the path of a scenario YAML. `overrides` are dotted
    scenario fields, e.g. ``simulate(sc, **{"policy.chunk_tokens": 2048})``. `workload`
    replays given requests instead of building them (the same work for every policy).
    """
    if isinstance(scenario, (str, os.PathLike)):
        scenario = load_scenario(scenario)
    elif not isinstance(scenario, Scenario):
        raise ScenarioError(f"scenario: a Scenario or the path of a scenario YAML, got a {type(scenario).__name__}")
    if policy is not None:
        overrides["policy.name"] = policy
    if overrides:
        scenario = with_overrides(scenario, **overrides)
    wanted = policy_class(scenario.policy.name).speculation
    if wanted and scenario.engine.speculation.mode == "none":
        scenario = with_overrides(scenario, **{"engine.speculation.mode": wanted})
    seed = scenario.seed if seed is None else seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:  # stored as int64
        raise ScenarioError(f"seed: must be an integer in [0, 2^63) (got {seed!r})")
    seed = int(seed)
    if workload is None:
        check_work(scenario)
    backend = SimBackend(scenario, cost)
    rng = np.random.default_rng(seed)
    result = RunResult(scenario=scenario, policy=scenario.policy.name, seed=seed)
    for step, out in enumerate(rollout_steps(scenario, backend, rng, workload, progress)):
        summary = summarize(out, scenario, scenario.policy.name, seed)
        summary["step"] = step
        result.steps.append(StepResult(step, summary, out.requests, out.instances, out.timeline))
    return result


def simulate_step(scenario: Scenario, workload: Workload, policy: Policy, *, cost: CostModel | None = None) -> StepRecords:
    """One rollout step of exactly these requests under this policy object, on the
    simulated backend (for tests and studies that instrument a policy)."""
    return Driver(SimBackend(scenario, cost), policy, workload, prefix_caching=scenario.engine.prefix_caching).run()
