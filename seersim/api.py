"""Python API for notebooks and scripts; the CLI is a thin layer over it.

    import seersim
    sc = seersim.load_scenario("scenarios/small.yaml", **{"cluster.instances": 8})
    res = seersim.simulate(sc, policy="divided", seed=1)
    res.summary["makespan_s"], res.requests.head()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

import math

from seersim.config import Scenario, SyntheticWorkload, with_overrides
from seersim.cost import CostModel
from seersim.errors import ScenarioError
from seersim.engine import Cluster
from seersim.limits import check_work
from seersim.metrics import summarize
from seersim.policies import make_policy, policy_class
from seersim.workload import Request, Workload, build_workload, generate_synthetic


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
    scenario: Scenario,
    policy: str | None = None,
    seed: int | None = None,
    *,
    cost: CostModel | None = None,
    workload: Workload | None = None,
    progress: Callable[[int, int], None] | None = None,
    **overrides,
) -> RunResult:
    """Simulate `scenario.steps` rollout steps under `policy` (default: the scenario's).

    `overrides` are dotted scenario fields, e.g. ``simulate(sc, **{"policy.chunk_tokens": 2048})``.
    `workload` replays given requests instead of building them (the same work for every policy).
    """
    if policy is not None:
        overrides["policy.name"] = policy
    if overrides:
        scenario = with_overrides(scenario, **overrides)
    wanted = policy_class(scenario.policy.name).speculation
    if wanted and scenario.engine.speculation.mode == "none":
        scenario = with_overrides(scenario, **{"engine.speculation.mode": wanted})
    seed = scenario.seed if seed is None else seed
    if not 0 <= seed < 2**63:  # records store it as int64
        raise ScenarioError(f"seed: must be an integer in [0, 2^63) (got {seed})")
    if workload is None:
        check_work(scenario)
    rng = np.random.default_rng(seed)
    result = RunResult(scenario=scenario, policy=scenario.policy.name, seed=seed)
    carried: list[Request] = []
    for step in range(scenario.steps):
        wl = workload if workload is not None else build_workload(scenario, rng)
        pol = make_policy(scenario.policy)
        stop_after = None
        if pol.over_issue:
            wl, stop_after = over_issued_step(scenario, wl, carried, rng)
        cluster = Cluster(scenario, wl, pol, cost=cost, progress=progress, stop_after_groups=stop_after)
        out = cluster.run()
        if pol.over_issue:
            carried = carry_over(wl, out.requests)
        summary = summarize(out, scenario, pol.name, seed)
        summary["step"] = step
        result.steps.append(StepResult(step, summary, out.requests, out.instances, out.timeline))
    return result


def over_issued_step(
    scenario: Scenario, workload: Workload, carried: list[Request], rng: np.random.Generator
) -> tuple[Workload, int]:
    """Partial rollout: carried requests plus fresh groups up to over_issue_factor × the
    step's groups; the step ends after the step's number of groups finish."""
    needed = workload.num_groups
    carried_groups = sorted({r.group_id for r in carried})
    target = math.ceil(scenario.policy.over_issue_factor * needed)
    fresh_groups = max(0, target - len(carried_groups))
    if isinstance(scenario.workload, SyntheticWorkload) and fresh_groups != needed:
        cfg = scenario.workload.model_copy(update={"prompts": max(1, fresh_groups)})
        fresh = generate_synthetic(cfg, rng).requests if fresh_groups else ()
    else:
        fresh = workload.requests
    remap = {g: i for i, g in enumerate(carried_groups)}
    reqs = [
        Request(i, remap[r.group_id], r.input_tokens, r.output_tokens, workload.max_tokens, r.generated_tokens)
        for i, r in enumerate(carried)
    ]
    base = len(carried_groups)
    for r in fresh:
        reqs.append(Request(len(reqs), base + r.group_id, r.input_tokens, r.output_tokens, workload.max_tokens))
    return Workload(tuple(reqs), workload.max_tokens), needed


def carry_over(workload: Workload, requests: pd.DataFrame) -> list[Request]:
    """Unfinished requests of a partial-rollout step, with the tokens they generated."""
    unfinished = requests[requests["finish_s"].isna()]
    return [
        Request(0, int(r.group_id), int(r.input_tokens), int(r.output_tokens), workload.max_tokens, int(r.generated_tokens))
        for r in unfinished.itertuples()
    ]
