"""CI regression of scheduling policies against a committed baseline file.

The baseline (JSON) lists scenario × policy × seed entries with their key metrics.
`check` re-simulates each entry (through the study runner) and flags a metric that got
worse by more than the tolerance (relative): makespan and tail may not grow, throughput
may not shrink. Runs are deterministic, so any change at all is a real model or policy
change; the tolerance separates intended small shifts from regressions. A metric that
got *better* by more than the tolerance is flagged too, as a stale baseline: left
stored, its slack would hide a later regression of the same size. `update` rewrites it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from seersim.config import load_scenario
from seersim.errors import ScenarioError
from seersim.io import write_json
from seersim.studies.runner import make_task, run_all

# metric -> +1 if higher is better, -1 if lower is better
WATCHED = {"makespan_s": -1, "tail_s": -1, "throughput_tokens_per_s": +1}
DEFAULT_TOLERANCE = 0.02
WORSE, STALE, OK = "WORSE", "STALE", "ok"


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


def _measure(base_dir: Path, entries: list[Entry], jobs: int = 1) -> list[dict]:
    """The watched metrics of every entry, simulated now (in parallel when jobs > 1)."""
    tasks = [
        make_task(load_scenario(base_dir / e.scenario, **e.overrides), e.policy, e.seed, key=str(i))
        for i, e in enumerate(entries)
    ]
    outcomes = run_all(tasks, jobs=jobs)
    measured = []
    for i in range(len(entries)):
        out = outcomes[str(i)]
        if out.error is not None:
            raise out.error
        measured.append({m: float(out.summary[m]) for m in WATCHED})
    return measured


def _relative_change(old: float, new: float) -> float:
    if old:
        return (new - old) / abs(old)
    return 0.0 if new == old else math.copysign(math.inf, new - old)


def check(path: Path, tolerance: float | None = None, jobs: int = 1) -> pd.DataFrame:
    """One row per (entry, metric): stored, now, relative change, status (WORSE / STALE / ok).

    A stored entry missing a watched metric is an error naming it (never a silent pass).
    """
    stored_tol, entries = read_baseline(path)
    tol = stored_tol if tolerance is None else tolerance
    for e in entries:
        missing = [m for m in WATCHED if e.metrics.get(m) is None]  # (absent, or null: undefined when stored)
        if missing:
            raise ScenarioError(
                f"{path}: entry {e.scenario} / {e.policy} / seed {e.seed} has no stored {', '.join(missing)}; "
                "rewrite the baseline with `seersim regress --update`"
            )
        malformed = [m for m in WATCHED if isinstance(e.metrics[m], bool) or not isinstance(e.metrics[m], int | float)]
        if malformed:
            raise ScenarioError(
                f"{path}: entry {e.scenario} / {e.policy} / seed {e.seed}: stored {', '.join(malformed)} is not a number; "
                "rewrite the baseline with `seersim regress --update`"
            )
    rows = []
    for e, now in zip(entries, _measure(path.parent, entries, jobs)):
        for m, sign in WATCHED.items():
            old = float(e.metrics[m])
            new = now[m]
            change = _relative_change(old, new)
            status = WORSE if sign * change < -tol else (STALE if sign * change > tol else OK)
            rows.append(
                {
                    "scenario": e.scenario,
                    "policy": e.policy,
                    "seed": e.seed,
                    "metric": m,
                    "stored": old,
                    "now": new,
                    "change": change,
                    "status": status,
                }
            )
    return pd.DataFrame(rows)


def update(
    path: Path,
    scenarios: list[str] | None = None,
    policies: list[str] | None = None,
    tolerance: float | None = None,
    jobs: int = 1,
) -> list[Entry]:
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
    for e, metrics in zip(entries, _measure(path.parent, entries, jobs)):
        e.metrics = metrics
    write_json(
        path,
        {
            "tolerance": tol,
            "note": "written by `seersim regress --update`; checked by `seersim regress`",
            "entries": [e.__dict__ for e in entries],
        },
    )
    return entries
