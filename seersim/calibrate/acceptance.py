"""Fit the speculative-acceptance table the engine uses from a speculative-decoding log.

Log: CSV, one row per verify step of one sequence: `draft_tokens` (γ proposed),
`accepted_tokens` (drafts accepted, 0..γ, excluding the bonus token) and `references`
(finished sibling responses the drafter used). Per-token acceptance α is the maximum-
likelihood estimate of a truncated geometric — P(a) = α^a(1−α) for a < γ, α^γ at a = γ:
α̂ = Σa / (Σa + #{a < γ}) — per reference count; the table stores the mean accepted
length incl. the bonus at the reference draft length, τ = (1−α^(γ+1))/(1−α), which is
what `engine.speculation.acceptance_table` takes (DESIGN §6).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from seersim.errors import TraceError
from seersim.fields import MAX_COUNT, MAX_TOKENS
from seersim.io import read_csv_table

SCHEMA = "seersim-acceptance/1"
DEFAULT_FILE = Path(__file__).resolve().parent / "data" / "acceptance-seer-table2.yaml"
MIN_STEPS = 20  # verify steps a reference count needs for its own table entry


def load_acceptance(path: str | Path = DEFAULT_FILE) -> dict:
    """{paths: {p: {refs: τ}}, reference_draft_tokens, source} from an acceptance file."""
    p = Path(path)
    if not p.is_file():
        raise TraceError(f"acceptance file '{p}' not found")
    d = yaml.safe_load(p.read_text())
    if not isinstance(d, dict) or d.get("schema") != SCHEMA:
        raise TraceError(f"{p}: not a {SCHEMA} file")
    d["paths"] = {int(k): {int(n): float(t) for n, t in v.items()} for k, v in d["paths"].items()}
    return d


@dataclass
class AcceptanceFit:
    table: dict[int, float]  # references -> τ at the reference draft length
    alpha: dict[int, float]
    steps: dict[int, int]
    reference_draft_tokens: int
    dropped_steps: int


def read_acceptance_log(path: str | Path) -> pd.DataFrame:
    need = ["draft_tokens", "accepted_tokens", "references"]
    tokens = (0, MAX_TOKENS, "tokens")
    d = read_csv_table(
        path, "speculative-decoding log", need, f"one row per verify step with {need}",
        integers={"draft_tokens": tokens, "accepted_tokens": tokens, "references": (0, MAX_COUNT, "(finished siblings)")},
    )
    if (d["accepted_tokens"] > d["draft_tokens"]).any():
        raise TraceError(f"{path}: accepted_tokens must lie in 0..draft_tokens (the bonus token is not counted)")
    return d[d["draft_tokens"] > 0]


def tau(alpha: float | np.ndarray, gamma: int | np.ndarray):
    """Mean tokens emitted per verification with γ drafts at per-token acceptance α:
    1 + α + α² + … + α^γ."""
    alpha = np.asarray(alpha, dtype=float)
    g = np.asarray(gamma)
    safe = np.minimum(alpha, 1.0 - 1e-12)
    out = (1.0 - safe ** (g + 1)) / (1.0 - safe)
    return np.where(alpha >= 1.0, g + 1.0, out)


def fit_acceptance(log: pd.DataFrame, reference_draft_tokens: int = 8) -> AcceptanceFit:
    table, alpha, steps = {}, {}, {}
    dropped = 0
    for refs, g in log.groupby("references"):
        if len(g) < MIN_STEPS:
            dropped += len(g)
            continue
        a = g["accepted_tokens"].to_numpy()
        rejected = int((a < g["draft_tokens"].to_numpy()).sum())
        total = float(a.sum())
        al = total / (total + rejected) if total + rejected > 0 else 0.0
        alpha[int(refs)] = al
        table[int(refs)] = float(tau(al, reference_draft_tokens))
        steps[int(refs)] = len(g)
    if 0 not in table:
        raise TraceError(f"the log needs at least {MIN_STEPS} verify steps with 0 references (the engine's base row)")
    return AcceptanceFit(table, alpha, steps, reference_draft_tokens, dropped)


def acceptance_yaml(fit: AcceptanceFit, source: str) -> str:
    """An acceptance file, and the `engine.speculation` snippet a scenario takes."""
    doc = {
        "schema": SCHEMA,
        "source": source,
        "reference_draft_tokens": fit.reference_draft_tokens,
        "paths": {1: {n: round(t, 4) for n, t in sorted(fit.table.items())}},
        "alpha": {n: round(a, 4) for n, a in sorted(fit.alpha.items())},
        "verify_steps": dict(sorted(fit.steps.items())),
    }
    snippet = (
        "# scenario snippet:\n# engine:\n#   speculation:\n"
        f"#     acceptance_table: {{{', '.join(f'{n}: {t:.3f}' for n, t in sorted(fit.table.items()))}}}\n"
        f"#     reference_draft_tokens: {fit.reference_draft_tokens}\n"
    )
    return snippet + yaml.safe_dump(doc, sort_keys=False)


