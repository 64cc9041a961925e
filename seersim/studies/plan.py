"""Capacity planning: the cheapest fleet and policy whose RL step meets a target time.

The search space is a grid of scenario overrides (instance count, parallelism, GPU
type, chunk size, ...) × policies. One RL step's time varies with its requests: the
few longest groups set the makespan, so one seed's step is often 5–10% off another's.
A point is therefore judged on `seeds` steps (the scenario's seed, +1, ...) by one
statistic of their times (`STATS`: the mean is the long-run time and cost per step;
p90 or max size the fleet for the slow steps). Instead of simulating every point, the
planner prunes with bounds that never discard the optimum:

1. memory — set-ups whose weights, or whose longest possible request (with its
   speculative look-ahead), do not fit an instance are never simulated (the engine's
   own up-front checks, engine/memory.py);
2. roofline — a lower bound on the step's makespan from the cost model alone: the
   total output tokens over the fleet's peak decode rate, and the longest request
   decoded alone at batch 1 (speculation counted at its best acceptance). A point whose
   bound exceeds the target cannot meet it; one whose bound on cost exceeds the best
   cost found so far cannot beat it (branch and bound). Over several seeds the bound
   is the statistic of the seeds' bounds: the mean, a quantile and the max never fall
   when every value rises, so it stays below the statistic of the step times;
3. monotonicity in instance count — more instances never make a step slower (an
   assumption of the model: same work, more engines), so along the instance axis the
   planner binary-searches the smallest count that meets the target and never
   simulates counts below it.

The best point is the one a brute-force pass over the same grid's sweep table (the
same seeds, each configuration's rows reduced by the statistic) picks: the lowest
objective (cost in $, or GPU-hours) among points with rl_step_s ≤ target (and cost ≤
budget), ties broken by step time, then grid order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml

from seersim.config import Scenario, SpeculationConfig
from seersim.cost import build_cost_model
from seersim.engine.memory import check_requests_fit, kv_capacity_blocks, speculative_lookahead_tokens
from seersim.engine.specdec import MAX_DRAFT, PAPER_ACCEPTANCE, SpecDecoder, alpha_for_tau, tau
from seersim.engine.stretch import LinearStretch
from seersim.errors import ScenarioError, SpecError
from seersim.policies import policy_class
from seersim.specs import GPUS, MODELS
from seersim.studies.runner import Executor, Outcome, Progress, Runner, make_task, run_all, seed_list
from seersim.studies.sweep import Point, check_grid_keys, grid_points, parse_grid, point_scenario, resolve_policies
from seersim.workload import Workload, build_workload
from seersim.yamlfile import read_yaml_mapping

Objective = Literal["cost_usd", "gpu_hours"]
INSTANCES = "cluster.instances"

#: how a point's seeds are reduced to one step time (and cost): name -> quantile (None: the mean)
STATS: dict[str, float | None] = {"mean": None, "median": 0.5, "p90": 0.9, "max": 1.0}
#: per-run metrics a plan keeps, each reduced over the seeds by the statistic; throughput,
#: which falls as step time rises, by its mirror (p90 of the time ↔ p10 of the throughput)
STEP_METRICS = ("rl_step_s", "makespan_s", "gpu_hours", "cost_usd", "preemptions")
RATE_METRICS = ("throughput_tokens_per_s",)

# statuses of a point in the plan's table
SIMULATED = "simulated"
INVALID = "invalid"  # the overrides do not make a valid scenario (e.g. ep > tp·dp)
MEMORY = "memory"  # the engine rejects it up front: weights or the longest request do not fit
BOUND = "bound"  # roofline lower bound on the step time exceeds the target
BUDGET = "budget"  # lower bound on the cost exceeds --budget-usd
MONOTONE = "monotone"  # fewer instances than a count that missed the target
COST = "cost"  # lower bound on the objective exceeds the best found


def reduce_over_seeds(values: list[float], stat: str, mirror: bool = False) -> float:
    """`stat` (a `STATS` name) of one metric's values over a point's seeds; `mirror`
    takes the opposite quantile (a rate that is low when the step is slow)."""
    q = STATS[stat]
    if q is None:
        return float(np.mean(values))
    return float(np.quantile(values, 1.0 - q if mirror else q))


def check_stat(stat: str) -> None:
    if stat not in STATS:
        raise ScenarioError(f"--stat '{stat}': choose one of {', '.join(STATS)}")


@dataclass
class _Candidate:
    point: Point  # its seed is the first of `seeds`
    scenario: Scenario | None
    seeds: list[int] = field(default_factory=list)
    status: str = ""
    reason: str = ""
    lb_step_s: float = float("nan")
    lb_objective: float = float("nan")
    summary: dict | None = None  # STEP_METRICS and RATE_METRICS reduced over the seeds, and rl_step_s_std

    def run_point(self, seed: int) -> Point:
        """The point of one of its seeds (its key names that run)."""
        return replace(self.point, seed=seed)

    @property
    def family(self) -> tuple:
        """Everything but the instance count: the axis the planner searches monotonically."""
        rest = tuple((k, repr(v)) for k, v in self.point.overrides.items() if k != INSTANCES)
        return rest + (("policy", self.point.policy),)

    @property
    def instances(self) -> int:
        return self.scenario.cluster.instances if self.scenario is not None else 0


@dataclass
class Plan:
    target_step_s: float
    objective: Objective
    budget_usd: float | None
    space: int  # points in the search space (configurations × policies; each runs every seed)
    seeds: list[int]
    stat: str  # how each point's seeds are reduced (`STATS`)
    points: pd.DataFrame  # every point: overrides, policy, status, bounds, metrics when simulated
    best: dict | None  # overrides, policy, rl_step_s, gpu_hours, cost_usd, gpu_hour_usd, ...
    fastest: dict | None  # the fastest simulated point (what to show when nothing meets the target)
    frontier: pd.DataFrame  # Pareto set of (rl_step_s, objective) among simulated points
    best_scenario: Scenario | None = None
    pruned: dict[str, int] = field(default_factory=dict)

    @property
    def several_seeds(self) -> bool:
        """Whether each point ran more than one seed (then its numbers are a statistic)."""
        return len(self.seeds) > 1

    def describe_stat(self) -> str:
        """How a point's step time was taken, in words: 'mean of seeds 0-2'."""
        first, last = self.seeds[0], self.seeds[-1]
        return f"{self.stat} of seed{'s' if last > first else ''} {first}" + (f"-{last}" if last > first else "")

    @property
    def evaluated(self) -> int:
        return int((self.points["status"] == SIMULATED).sum())

    def to_json(self) -> dict:
        return {
            "target_step_s": self.target_step_s,
            "objective": self.objective,
            "budget_usd": self.budget_usd,
            "seeds": self.seeds,
            "stat": self.stat,
            "met_target": self.best is not None,
            "best": self.best,
            "fastest": self.fastest,
            "frontier": self.frontier.to_dict(orient="records"),
            "evaluated": self.evaluated,
            "space": self.space,
            "pruned": self.pruned,
        }


# ------------------------------------------------------------------ bounds
def speculation(scenario: Scenario) -> SpeculationConfig:
    """The speculation the run will use: `simulate` switches on the mode a policy asks
    for (seer: grouped_adaptive) when the scenario leaves it off."""
    spec = scenario.engine.speculation
    wanted = policy_class(scenario.policy.name).speculation
    return spec.model_copy(update={"mode": wanted}) if wanted and spec.mode == "none" else spec


def memory_error(scenario: Scenario, workload: Workload) -> str | None:
    """Why the engine would refuse this set-up up front (None when it fits): the
    engine's own checks (`engine/memory.py`) that the weights fit and that the longest
    possible request, with its speculative look-ahead, fits one instance's KV."""
    spec = speculation(scenario)
    lookahead = 0
    if spec.mode != "none":
        lookahead = speculative_lookahead_tokens(SpecDecoder.max_draft_tokens(spec), workload.max_tokens, spec.paths)
    longest = max((r.input_tokens for r in workload.requests), default=0) + workload.max_tokens
    try:
        check_requests_fit(scenario, kv_capacity_blocks(scenario), longest, lookahead)
    except SpecError as exc:
        return str(exc)
    return None


def max_tokens_per_step(scenario: Scenario) -> float:
    """Most tokens one sequence can emit per iteration on average: 1 without
    speculation; with it, τ at the best acceptance of the table and the longest draft."""
    spec = speculation(scenario)
    if spec.mode == "none":
        return 1.0
    table = spec.acceptance_table or PAPER_ACCEPTANCE[spec.paths]
    alpha = alpha_for_tau(max(table.values()), spec.reference_draft_tokens)
    return float(tau(alpha, MAX_DRAFT))


def makespan_lower_bound_s(scenario: Scenario, workload: Workload) -> float:
    """A roofline lower bound on the step's makespan (0 where no bound applies).

    Valid for cost models whose iteration time does not fall when the batch, its new
    tokens or its context grow (the roofline). Partial rollout ends before all work is
    done and later steps' work is not known here, so they get no bound.
    """
    if policy_class(scenario.policy.name).over_issue or scenario.steps > 1 or not workload.requests:
        return 0.0
    cost = build_cost_model(scenario)
    per_step = max_tokens_per_step(scenario)
    inp = np.array([r.input_tokens for r in workload.requests], dtype=np.int64)
    out = np.array([r.output_tokens - r.generated_tokens for r in workload.requests], dtype=np.int64)
    # (a) all output tokens at the fleet's peak rate: B sequences emit ≤ B·τ tokens in
    # an iteration that costs at least a B-sequence decode step attending ≥ B tokens.
    b_max = scenario.engine.max_num_seqs
    rate = max(b * per_step / cost.step_lines(b, b, 0).at(b) for b in range(1, b_max + 1))
    work_s = float(out.sum()) / (scenario.cluster.instances * rate)
    # (b) the longest request alone: a prefill, then ⌊(L−1)/τ⌋ decode iterations of one
    # sequence whose context starts at its prompt and grows at least one token each.
    lines = cost.step_lines(1, 1, 0)
    longest = 0.0
    for i in _pareto_max(inp, out):
        steps = 1 + int((out[i] - 1) // per_step)
        longest = max(longest, LinearStretch(lines, int(inp[i]) - 1, 1).cumulative(steps))
    return max(work_s, longest)


def _pareto_max(a: np.ndarray, b: np.ndarray) -> list[int]:
    """Indices not dominated in (a, b) from above: the only candidates for a maximum of
    a function increasing in both."""
    order = np.lexsort((-a, -b))  # by b descending, then a descending
    keep, best_a = [], -1
    for i in order:
        if a[i] > best_a:
            keep.append(int(i))
            best_a = a[i]
    return keep


def _objective_per_step_s(scenario: Scenario, objective: Objective) -> float:
    """Objective per second of RL step (GPU-hours or $ per second)."""
    gpu_hours_per_s = scenario.gpus_total / 3600.0
    return gpu_hours_per_s * (scenario.gpu.gpu_hour_usd if objective == "cost_usd" else 1.0)


# ------------------------------------------------------------------ search
def plan(
    scenario: Scenario,
    target_step_s: float,
    space: dict[str, list[Any]],
    policies: list[str] | None = None,
    *,
    objective: Objective = "cost_usd",
    budget_usd: float | None = None,
    seeds: int = 1,
    stat: str = "mean",
    jobs: int = 1,
    executor: Executor = "local",
    address: str | None = None,
    progress: Progress | None = None,
) -> Plan:
    """Search `space` × `policies` for the cheapest point whose step time, `stat` over
    `seeds` seeds (the scenario's, +1, ...), is ≤ target."""
    if not target_step_s > 0:
        raise ScenarioError(f"--target-step-s must be > 0 (got {target_step_s})")
    if objective not in ("cost_usd", "gpu_hours"):
        raise ScenarioError(f"--objective '{objective}': choose cost_usd or gpu_hours")
    seeds_run = seed_list(scenario, seeds)
    check_stat(stat)
    pols = resolve_policies(scenario, policies)
    points = grid_points(scenario, space, pols, seeds_run[:1])
    cands = _candidates(scenario, points, seeds_run)
    workloads: dict[str, Workload] = {}
    for c in cands:
        if c.status:
            continue
        bounds_s = []
        for seed in c.seeds:
            wl = _workload(c.scenario, seed, workloads)
            why = memory_error(c.scenario, wl)
            if why:
                c.status, c.reason = MEMORY, why if len(c.seeds) == 1 else f"seed {seed}: {why}"
                break
            bounds_s.append(makespan_lower_bound_s(c.scenario, wl))
        if c.status:
            continue
        c.lb_step_s = reduce_over_seeds(bounds_s, stat) + c.scenario.training_s
        c.lb_objective = c.lb_step_s * _objective_per_step_s(c.scenario, objective)
        lb_cost = c.lb_step_s * _objective_per_step_s(c.scenario, "cost_usd")
        if c.lb_step_s > target_step_s:
            c.status, c.reason = BOUND, f"step time ≥ {c.lb_step_s:.1f} s by the roofline bound"
        elif budget_usd is not None and lb_cost > budget_usd:
            c.status, c.reason = BUDGET, f"cost ≥ ${lb_cost:.2f} by the roofline bound"
    with Runner(jobs, executor, address) as runner:
        search = _Search(cands, target_step_s, objective, budget_usd, stat, runner, max(1, jobs), progress)
        search.run()
    return _assemble(cands, search, target_step_s, objective, budget_usd, len(points), seeds_run, stat)


def _candidates(scenario: Scenario, points: list[Point], seeds: list[int]) -> list[_Candidate]:
    cands, first_error = [], None
    for p in points:
        try:
            cands.append(_Candidate(p, point_scenario(scenario, p), seeds))
        except ScenarioError as exc:
            first_error = first_error or exc
            cands.append(_Candidate(p, None, seeds, INVALID, str(exc)))
    if first_error is not None and all(c.status == INVALID for c in cands):
        raise first_error  # a typo, not a few impossible combinations
    return cands


def _workload(scenario: Scenario, seed: int, cache: dict[str, Workload]) -> Workload:
    """The first step's requests (what `simulate` builds from the seed), shared by all
    points with the same workload section."""
    key = repr((scenario.workload, scenario.base_dir, seed))
    if key not in cache:
        cache[key] = build_workload(scenario, np.random.default_rng(seed))
    return cache[key]


class _Search:
    """Binary search along instance counts per family, then branch and bound on cost."""

    def __init__(self, cands, target, objective, budget, stat: str, runner: Runner, batch: int, progress) -> None:
        self.cands: list[_Candidate] = cands
        self.target, self.objective, self.budget, self.stat = target, objective, budget, stat
        self.runner, self.batch = runner, batch
        self.progress = progress
        self.incumbent = math.inf
        self.simulated = 0

    # a simulated point meets the target (and the budget)
    def _ok(self, c: _Candidate) -> bool:
        s = c.summary
        if s is None or s["rl_step_s"] > self.target:
            return False
        return self.budget is None or s["cost_usd"] <= self.budget

    def _simulate(self, batch: list[_Candidate]) -> None:
        runs = [(c, c.run_point(seed)) for c in batch for seed in c.seeds]
        tasks = [make_task(c.scenario, p.policy, p.seed, key=p.key) for c, p in runs]
        outcomes: dict[str, Outcome] = run_all(tasks, runner=self.runner)
        for c in batch:
            c.status = SIMULATED
            seeds = [outcomes[c.run_point(seed).key] for seed in c.seeds]
            failed = next((o for o in seeds if o.error is not None), None)
            if failed is not None:
                c.reason = str(failed.error)
            else:
                c.summary = self._reduce([o.summary for o in seeds])
                if self._ok(c):
                    self.incumbent = min(self.incumbent, c.summary[self.objective])
        self.simulated += len(batch)
        if self.progress:
            self.progress(self.simulated, self.simulated + sum(1 for c in self.cands if not c.status))

    def _reduce(self, summaries: list[dict]) -> dict:
        """A point's metrics over its seeds (one seed: that run's own numbers)."""
        reduced = {m: reduce_over_seeds([s[m] for s in summaries], self.stat) for m in STEP_METRICS}
        reduced |= {m: reduce_over_seeds([s[m] for s in summaries], self.stat, mirror=True) for m in RATE_METRICS}
        steps_s = [s["rl_step_s"] for s in summaries]
        reduced["rl_step_s_std"] = float(np.std(steps_s, ddof=1)) if len(steps_s) > 1 else 0.0
        return reduced

    def run(self) -> None:
        families: dict[tuple, list[_Candidate]] = {}
        for c in self.cands:
            if not c.status:
                families.setdefault(c.family, []).append(c)
        for fam in families.values():
            fam.sort(key=lambda c: c.instances)
        # (lo, hi): members ≤ lo miss the target, members ≥ hi meet it (by monotonicity);
        # a lone member has nothing to prune by monotonicity: it goes to branch and bound
        state = {k: [-1, 0 if len(fam) == 1 else None] for k, fam in families.items()}
        while True:
            probes = {}
            for k, fam in families.items():
                lo, hi = state[k]
                if hi is not None and hi - lo <= 1:
                    continue
                alive = [c for c in fam[lo + 1 :] if not c.status or c.status == SIMULATED]
                if alive and min(c.lb_objective for c in alive) > self.incumbent:
                    state[k] = [lo, lo + 1]  # nothing left here can beat the best: stop searching
                    continue
                probes[k] = len(fam) - 1 if hi is None else (lo + hi) // 2
            if not probes:
                break
            self._simulate([families[k][i] for k, i in probes.items() if not families[k][i].status])
            for k, i in probes.items():
                c = families[k][i]
                if c.summary is not None and c.summary["rl_step_s"] <= self.target:
                    state[k][1] = i
                else:
                    state[k][0] = i
                    if state[k][1] is None:
                        state[k][1] = i + 1  # even the most instances miss: the family is done
        for k, fam in families.items():
            lo, _ = state[k]
            for c in fam[: lo + 1]:
                if not c.status:
                    c.status, c.reason = MONOTONE, "fewer instances than a count that missed the target"
        # branch and bound over the members that meet the target
        rest = sorted(
            (c for fam in families.values() for c in fam if not c.status),
            key=lambda c: (c.lb_objective, c.point.index),
        )
        while rest:
            if rest[0].lb_objective > self.incumbent:
                for c in rest:
                    c.status, c.reason = COST, f"{self.objective} ≥ {c.lb_objective:.4g} by the roofline bound"
                break
            batch, rest = rest[: self.batch], rest[self.batch :]
            self._simulate(batch)
        self._ensure_fastest(families)

    def _ensure_fastest(self, families: dict[tuple, list[_Candidate]]) -> None:
        """When nothing was simulated (every point pruned), simulate the point with the
        lowest step-time bound among those that fit, so a fastest configuration is known."""
        if self.simulated:
            return
        fits = [c for c in self.cands if c.scenario is not None and not math.isnan(c.lb_step_s)]
        if fits:
            # equal bounds (the longest request dominates): the most GPUs is likely fastest
            c = min(fits, key=lambda c: (c.lb_step_s, -c.scenario.gpus_total, c.point.index))
            self._simulate([c])


# ------------------------------------------------------------------ result
def _row(c: _Candidate) -> dict:
    row: dict[str, Any] = dict(c.point.overrides)
    row["policy"], row["seed"], row["seeds"] = c.point.policy, c.point.seed, len(c.seeds)
    row["status"], row["reason"] = c.status, c.reason
    row["lb_step_s"] = c.lb_step_s
    if c.scenario is not None:
        row["gpu_type"] = c.scenario.gpu.name
        row["gpus"] = c.scenario.gpus_total
        row["gpu_hour_usd"] = c.scenario.gpu.gpu_hour_usd
    for m in ("rl_step_s", "rl_step_s_std", *STEP_METRICS[1:], *RATE_METRICS):
        row[m] = (c.summary or {}).get(m, float("nan"))
    return row


def _brief(c: _Candidate) -> dict:
    s = c.summary or {}
    return {
        "overrides": {**c.point.overrides, "policy.name": c.point.policy},
        "rl_step_s": s["rl_step_s"],
        "rl_step_s_std": s["rl_step_s_std"],  # over the seeds (0 with one)
        "makespan_s": s["makespan_s"],
        "gpu_hours": s["gpu_hours"],
        "cost_usd": s["cost_usd"],
        "gpu_type": c.scenario.gpu.name,
        "gpus": c.scenario.gpus_total,
        "gpu_hour_usd": c.scenario.gpu.gpu_hour_usd,
        "gpu_hour_usd_source": c.scenario.gpu.sources.get("gpu_hour_usd", ""),
    }


def _assemble(cands, search, target, objective, budget, space, seeds, stat) -> Plan:
    sim = [c for c in cands if c.summary is not None]
    ok = [c for c in sim if search._ok(c)]
    best = min(ok, key=lambda c: (c.summary[objective], c.summary["rl_step_s"], c.point.index)) if ok else None
    fastest = min(sim, key=lambda c: (c.summary["rl_step_s"], c.point.index)) if sim else None
    frontier, best_obj = [], math.inf
    for c in sorted(sim, key=lambda c: (c.summary["rl_step_s"], c.summary[objective], c.point.index)):
        if c.summary[objective] < best_obj:
            frontier.append(c)
            best_obj = c.summary[objective]
    points = pd.DataFrame([_row(c) for c in cands])
    pruned = {s: int((points["status"] == s).sum()) for s in (INVALID, MEMORY, BOUND, BUDGET, MONOTONE, COST)}
    frontier_df = pd.DataFrame([_brief(c) for c in frontier])
    return Plan(
        target_step_s=target,
        objective=objective,
        budget_usd=budget,
        space=space,
        seeds=seeds,
        stat=stat,
        points=points,
        best=_brief(best) if best else None,
        fastest=_brief(fastest) if fastest else None,
        frontier=frontier_df,
        best_scenario=best.scenario if best else None,
        pruned=pruned,
    )


def parse_space_args(grid: list[str], space_file: Path | None, gpus: list[str] | None) -> dict[str, list[Any]]:
    """The search space from `--grid` items or a `--space` file, plus `--gpus`."""
    if grid and space_file is not None:
        raise ScenarioError("give the search space with --grid or with --space, not both")
    space = parse_grid(grid) if grid else (read_space(space_file) if space_file is not None else {})
    if gpus:
        if "gpu" in space:
            raise ScenarioError("--gpus: the search space already has a 'gpu' key; give GPU types in one place")
        space["gpu"] = list(gpus)
    if not space:
        raise ScenarioError(
            "plan needs a search space: e.g. --grid cluster.instances=2,4,8,16 --grid cluster.parallelism.tp=1,2 "
            "--gpus h100-sxm,a100-80gb, or --space FILE"
        )
    return space


def read_space(path: Path) -> dict[str, list[Any]]:
    """A `--space` YAML file: a mapping of dotted keys to lists of values."""
    data = read_yaml_mapping(
        path, ScenarioError, "--space file", "give a YAML mapping like 'cluster.instances: [2, 4, 8]'",
        "a search space is a mapping of dotted keys to lists of values",
    )
    space = {}
    for key, values in data.items():
        values = values if isinstance(values, list) else [values]
        if not values:
            raise ScenarioError(f"{path}: {key}: empty list of values")
        space[str(key)] = values
    check_grid_keys(space)
    return space


def scenario_yaml(scenario: Scenario, header: str) -> str:
    """A ready-to-run scenario file: catalog names where the spec is the catalog's,
    trace paths made absolute so the file runs from anywhere."""
    data = scenario.model_dump(mode="json")
    for field_name, catalog in (("model", MODELS), ("gpu", GPUS)):
        spec = getattr(scenario, field_name)
        if catalog.get(spec.name) == spec:
            data[field_name] = spec.name
    if data["workload"].get("kind") == "replay":
        data["workload"]["path"] = str((Path(scenario.base_dir) / data["workload"]["path"]).resolve())
    data.pop("base_dir", None)
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return comment + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def plot_pareto(result: Plan):
    """Step time vs objective of every simulated point; the frontier highlighted."""
    from seersim.report import _pyplot

    plt = _pyplot()
    pts = result.points[result.points["status"] == SIMULATED].dropna(subset=["rl_step_s"])
    fig, ax = plt.subplots(figsize=(7.5, 5))
    obj = result.objective
    label = "cost per RL step ($)" if obj == "cost_usd" else "GPU-hours per RL step"
    for pol, g in pts.groupby("policy"):
        ax.scatter(g["rl_step_s"], g[obj], s=28, alpha=0.6, label=f"{pol} (simulated)")
    if len(result.frontier):
        f = result.frontier
        ax.step(f["rl_step_s"], f[obj], where="post", color="black", lw=1.5, label="Pareto frontier")
        ax.scatter(f["rl_step_s"], f[obj], s=70, facecolors="none", edgecolors="black")
    ax.axvline(result.target_step_s, color="tab:red", ls="--", lw=1, label=f"target {result.target_step_s:g} s")
    chosen = result.best or result.fastest
    if chosen:
        ax.scatter([chosen["rl_step_s"]], [chosen[obj]], marker="*", s=260, color="gold", edgecolors="black",
                   zorder=5, label="best" if result.best else "fastest (target missed)")
    ax.set_xlabel("RL step time (s)" + (f", {result.describe_stat()}" if result.several_seeds else ""))
    ax.set_ylabel(label)
    ax.set_title(f"plan: {result.evaluated} of {result.space} points simulated")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def write_plan(out: Path, result: Plan, scenario_name: str) -> list[Path]:
    """plan.json, points table, pareto.png and (when the target is met) best.yaml."""
    from seersim.io import atomic_write, write_frame, write_json
    from seersim.report import save_figure

    written = [out / "plan.json"]
    write_json(out / "plan.json", {"kind": "plan", "scenario": scenario_name, **result.to_json()})
    written.append(write_frame(out / "points", result.points))
    save_figure(plot_pareto(result), out / "pareto.png")
    written.append(out / "pareto.png")
    if result.best_scenario is not None:
        b = result.best
        header = (
            f"written by `seersim plan` for {scenario_name}: cheapest point with rl_step_s <= {result.target_step_s:g} s"
            f"{f' ({result.describe_stat()})' if result.several_seeds else ''}\n"
            f"overrides: {', '.join(f'{k}={v}' for k, v in b['overrides'].items())}\n"
            f"rl_step_s={b['rl_step_s']:.2f}, gpu_hours={b['gpu_hours']:.4f}, cost_usd={b['cost_usd']:.4f} "
            f"at ${b['gpu_hour_usd']}/GPU-hour ({b['gpu_hour_usd_source'] or 'no source given'})"
        )
        text = scenario_yaml(result.best_scenario, header)
        atomic_write(out / "best.yaml", lambda p: p.write_text(text))
        written.append(out / "best.yaml")
    return written
