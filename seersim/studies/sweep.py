"""Sweeps: the cartesian product of scenario overrides × policies × seeds, each point an
independent seeded run, gathered into one tidy table.

Resumable by construction: with an output folder, every finished point is written
atomically to `DIR/points/<key>.json`, where the key is a hash of the point's overrides,
policy and seed. A re-run with the same arguments skips the points whose file exists,
so an interrupted sweep (Ctrl-C, a killed job, a lost node) finishes without redoing
work and every point appears exactly once in `DIR/results.parquet`, which is merged
from the point files at the end. `DIR/sweep.json` records what the sweep is, so a
re-run with different arguments is refused instead of mixing two sweeps.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from seersim.config import Scenario, parse_overrides, with_overrides
from seersim.errors import OutputError, ScenarioError
from seersim.policies import policy_class
from seersim.io import write_frame, write_json
from seersim.studies.runner import Executor, Progress, make_task, run_tasks, seed_list

SPEC_FILE = "sweep.json"
POINTS_DIR = "points"
RESULTS = "results"  # results.parquet (results.csv without pyarrow)
RESERVED_KEYS = {"policy.name": "--policies", "seed": "--seeds"}


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """`--grid KEY=V1,V2,...` items -> {dotted key: [values]}; values parse as in `--set`."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, eq, values = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ScenarioError(f"--grid '{item}': expected dotted.key=v1,v2,..., e.g. --grid cluster.instances=2,4,8")
        if key in grid:
            raise ScenarioError(f"--grid {key}: given twice; list all its values in one --grid")
        parts = _split_top_level(values)
        if not parts:
            raise ScenarioError(f"--grid '{item}': no values after '='")
        grid[key] = [value for _, value in parse_overrides([f"{key}={p}" for p in parts])]
    check_grid_keys(grid)
    return grid


def check_grid_keys(grid: dict[str, list[Any]]) -> None:
    for key in grid:
        if key in RESERVED_KEYS:
            raise ScenarioError(f"--grid {key}: use {RESERVED_KEYS[key]} instead")


def _split_top_level(values: str) -> list[str]:
    """Split on commas outside brackets, so `{dist: constant, mean: 40}` stays one value."""
    parts, depth, cur = [], 0, ""
    for ch in values:
        depth += ch in "[{("
        depth -= ch in "]})"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


@dataclass(frozen=True)
class Point:
    """One run of a sweep: its position in grid order, overrides, policy and seed."""

    index: int
    overrides: dict[str, Any]
    policy: str
    seed: int

    @property
    def key(self) -> str:
        ident = json.dumps([list(self.overrides.items()), self.policy, self.seed], sort_keys=True, default=str)
        return hashlib.sha1(ident.encode()).hexdigest()[:16]

    def label(self) -> str:
        sets = ", ".join(f"{k}={v}" for k, v in self.overrides.items())
        return f"{sets + ', ' if sets else ''}policy={self.policy}, seed={self.seed}"


def grid_points(scenario: Scenario, grid: dict[str, list[Any]], policies: list[str], seeds: list[int]) -> list[Point]:
    """Grid combinations (keys in the order given) × policies × seeds, in that nesting."""
    combos = itertools.product(*grid.values()) if grid else [()]
    points = []
    for values in combos:
        for policy in policies:
            for seed in seeds:
                points.append(Point(len(points), dict(zip(grid, values)), policy, seed))
    return points


def point_scenario(scenario: Scenario, point: Point) -> Scenario:
    """The point's scenario, validated (errors name the point)."""
    try:
        return with_overrides(scenario, **point.overrides, **{"policy.name": point.policy})
    except ScenarioError as exc:
        raise ScenarioError(f"sweep point {point.label()}: {exc}") from None


def resolve_policies(scenario: Scenario, policies: list[str] | None) -> list[str]:
    chosen = list(dict.fromkeys(policies or [scenario.policy.name]))
    for p in chosen:
        policy_class(p)  # fail fast on an unknown name
    return chosen


@dataclass
class SweepResult:
    table: pd.DataFrame  # one row per point: grid keys, policy, seed, every summary metric, error
    points: int
    simulated: int  # run by this call
    resumed: int  # found finished in the output folder
    out: Path | None


def sweep(
    scenario: Scenario,
    grid: dict[str, list[Any]],
    policies: list[str] | None = None,
    seeds: int = 1,
    *,
    jobs: int = 1,
    executor: Executor = "local",
    address: str | None = None,
    out: Path | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> SweepResult:
    """Run every point of the grid (resuming from `out` when it holds this sweep)."""
    pols = resolve_policies(scenario, policies)
    seeds_run = seed_list(scenario, seeds)
    points = grid_points(scenario, grid, pols, seeds_run)
    scenarios = {p.key: point_scenario(scenario, p) for p in points}
    done: dict[str, dict] = {}
    if out is not None:
        spec = _spec(scenario, grid, pols, seeds_run, len(points))
        _prepare(out, spec, overwrite)
        done = _finished(out, {p.key for p in points})
    todo = [p for p in points if p.key not in done]
    resumed = len(points) - len(todo)
    tasks = [make_task(scenarios[p.key], p.policy, p.seed, key=p.key) for p in todo]
    by_key = {p.key: p for p in points}
    for outcome in run_tasks(
        tasks,
        jobs=jobs,
        executor=executor,
        address=address,
        progress=(lambda d, t: progress(resumed + d, len(points))) if progress else None,
    ):
        point = by_key[outcome.key]
        record = {
            "index": point.index,
            "overrides": point.overrides,
            "policy": point.policy,
            "seed": point.seed,
            "summary": outcome.summary,
            "error": None if outcome.error is None else str(outcome.error),
        }
        if out is not None:
            write_json(out / POINTS_DIR / f"{point.key}.json", record)
        done[point.key] = record
    table = results_table(points, done, list(grid))
    if out is not None:
        write_frame(out / RESULTS, table)
    return SweepResult(table, len(points), len(todo), resumed, out)


def results_table(points: list[Point], records: dict[str, dict], grid_keys: list[str]) -> pd.DataFrame:
    rows = []
    for p in points:
        rec = records[p.key]
        row: dict[str, Any] = dict(p.overrides)
        row["policy"], row["seed"] = p.policy, p.seed
        row.update({k: v for k, v in (rec["summary"] or {}).items() if k not in ("policy", "seed")})
        row["error"] = rec["error"]
        rows.append(row)
    table = pd.DataFrame(rows)
    for key in grid_keys:  # one type per column, so the table round-trips through parquet
        if len({type(v) for v in table[key]}) > 1:
            table[key] = table[key].map(lambda v: v if isinstance(v, str) else json.dumps(v))
        elif isinstance(table[key].iloc[0], (dict, list)):
            table[key] = table[key].map(json.dumps)
    return table


# ------------------------------------------------------------------ resumable folder
def _spec(scenario: Scenario, grid: dict, policies: list[str], seeds: list[int], n: int) -> dict:
    scenario_json = json.dumps(scenario.model_dump(mode="json"), sort_keys=True)
    return {
        "kind": "sweep",
        "scenario": scenario.name,
        "scenario_sha1": hashlib.sha1(scenario_json.encode()).hexdigest(),
        "grid": grid,
        "policies": policies,
        "seeds": seeds,
        "points": n,
    }


def _prepare(out: Path, spec: dict, overwrite: bool) -> None:
    """Make `out` hold this sweep: new, resumed, or (with overwrite) restarted.

    Finished points are reusable whenever the base scenario is the same (a point's key
    is its overrides, policy and seed), so a re-run may also widen the grid; a folder
    holding points of another base scenario is refused.
    """
    spec_path = out / SPEC_FILE
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file; give a folder for the sweep")
    if spec_path.is_file() and not overwrite:
        try:
            old = json.loads(spec_path.read_text())
        except ValueError:  # malformed JSON, or not text at all
            old = {}
        if old.get("scenario_sha1") != spec["scenario_sha1"]:
            raise OutputError(
                f"--out {out} holds a sweep of a different scenario (the file or a --set changed); re-run with the "
                "same arguments to resume, pass --overwrite to start over, or choose another --out"
            )
    elif out.is_dir() and any(out.iterdir()) and not spec_path.is_file() and not overwrite:
        raise OutputError(f"--out {out} exists and is not a sweep folder; choose another --out or pass --overwrite")
    points = out / POINTS_DIR
    if points.is_dir():
        # a kill during an atomic write leaves its hidden temporary file: never a point
        for f in points.glob(".*"):
            f.unlink()
        if overwrite:
            for f in points.glob("*.json"):
                f.unlink()
    if overwrite:
        for f in out.glob(f"{RESULTS}.*"):
            f.unlink()
    write_json(spec_path, spec)


_KEY_RE = re.compile(r"^[0-9a-f]{16}$")


def _finished(out: Path, keys: set[str]) -> dict[str, dict]:
    """Point files already written. seersim renames each in whole, so none is torn; one
    damaged since (a cut-short copy) is left out, and its point runs again."""
    done = {}
    folder = out / POINTS_DIR
    if not folder.is_dir():
        return done
    for f in folder.glob("*.json"):
        if _KEY_RE.match(f.stem) and f.stem in keys:
            try:
                point = json.loads(f.read_text())
            except ValueError:  # malformed JSON, or not text at all
                continue
            if isinstance(point, dict) and isinstance(point.get("summary"), dict):
                done[f.stem] = point
    return done
