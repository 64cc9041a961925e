"""CI regression of scheduling policies against a committed baseline file.

The baseline (JSON) lists scenario × policy × seed entries with their key metrics.
`check` re-simulates each entry and flags a metric that got worse by more than the
tolerance (relative): makespan and tail may not grow, throughput may not shrink.
Runs are deterministic, so any change at all is a real model or policy change; the
tolerance separates intended small shifts from regressions. `update` rewrites it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from seersim.api import simulate
from seersim.config import load_scenario
from seersim.errors import ScenarioError
from seersim.report import write_json

# metric -> +1 if higher is better, -1 if lower is better
WATCHED = {"makespan_s": -1, "tail_s": -1, "throughput_tokens_per_s": +1}
DEFAULT_TOLERANCE = 0.02


@dataclass
class Entry:
    scenario: str  # path relative to the baseline file's folder
    policy: str
    seed: int
    overrides: dict
    metrics: dict


def read_baseline(path: Path) -> tuple[float, list[Entry]]:
    if not path.is_file():
        raise ScenarioError(f"regression baseline '{path}' not found; create it with `seersim regress --update --scenarios ...`")
    try:
        data = json.loads(path.read_text())
        entries = [
            Entry(e["scenario"], e["policy"], int(e.get("seed", 0)), dict(e.get("overrides", {})), dict(e.get("metrics", {})))
            for e in data["entries"]
        ]
        return float(data.get("tolerance", DEFAULT_TOLERANCE)), entries
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ScenarioError(f"{path}: not a regression baseline ({exc.__class__.__name__}: {exc})") from None


def _measure(base_dir: Path, e: Entry) -> dict:
    sc = load_scenario(base_dir / e.scenario, **e.overrides)
    s = simulate(sc, policy=e.policy, seed=e.seed).summary
    return {m: float(s[m]) for m in WATCHED}


def check(path: Path, tolerance: float | None = None) -> pd.DataFrame:
    """One row per (entry, metric): stored, now, relative change, status."""
    stored_tol, entries = read_baseline(path)
    tol = stored_tol if tolerance is None else tolerance
    rows = []
    for e in entries:
        now = _measure(path.parent, e)
        for m, sign in WATCHED.items():
            old = float(e.metrics.get(m, float("nan")))
            new = now[m]
            change = (new - old) / old if old else 0.0
            worse = sign * change < -tol
            better = sign * change > tol
            rows.append(
                {
                    "scenario": e.scenario,
                    "policy": e.policy,
                    "seed": e.seed,
                    "metric": m,
                    "stored": old,
                    "now": new,
                    "change": change,
                    "status": "WORSE" if worse else ("better" if better else "ok"),
                }
            )
    return pd.DataFrame(rows)


def update(path: Path, scenarios: list[str] | None = None, policies: list[str] | None = None, tolerance: float | None = None) -> list[Entry]:
    """Rewrite the baseline: re-measure existing entries, or build entries for scenarios × policies."""
    if scenarios:
        entries = [
            Entry(os.path.relpath(Path(sc).resolve(), path.resolve().parent), pol, 0, {}, {})
            for sc in scenarios
            for pol in (policies or ["baseline", "divided", "context_aware", "seer"])
        ]
        tol = DEFAULT_TOLERANCE if tolerance is None else tolerance
    else:
        tol, entries = read_baseline(path)
        tol = tol if tolerance is None else tolerance
    for e in entries:
        e.metrics = _measure(path.parent, e)
    write_json(
        path,
        {
            "tolerance": tol,
            "note": "written by `seersim regress --update`; checked by `seersim regress`",
            "entries": [e.__dict__ for e in entries],
        },
    )
    return entries
