"""Calibration files (`seersim-calibration/1`): what `seersim calibrate cost` writes and
the `calibrated` cost model reads.

Two kinds:
- `kernel_curves`: one GPU type's achieved efficiencies (`KernelCurves`), fitted on
  operator-level profiling tables and applied to any catalog model's shapes;
- `iteration`: one deployment's whole-iteration fit (model + GPU + engine), from live
  step logs: time = overhead + f(tokens) + c·context + d·sequences, f piecewise linear.

Shipped files (in `seersim/cost/calibrations/`) are found by name: a GPU spec's
`calibration` field names the one used when a scenario gives no file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from seersim.cost.curves import KernelCurves, check_knots, check_number
from seersim.errors import TraceError
from seersim.yamlfile import read_yaml_mapping

SCHEMA = "seersim-calibration/1"
SHIPPED_DIR = Path(__file__).resolve().parent / "calibrations"


@dataclass(frozen=True)
class IterationFit:
    """time_s = overhead_s + interp(tokens; knots) + context_s·context_tokens + seq_s·batch_size."""

    overhead_s: float
    knots_tokens: tuple[float, ...]
    knots_s: tuple[float, ...]
    context_s_per_token: float
    seq_s: float

    def __post_init__(self) -> None:
        # (each stored as float: a file may write 1 for 1.0)
        for name in ("overhead_s", "context_s_per_token", "seq_s"):
            check_number(name, getattr(self, name))
            object.__setattr__(self, name, float(getattr(self, name)))
        check_knots("knots_tokens", self.knots_tokens, "knots_s", self.knots_s)
        for v in self.knots_s:
            check_number("knots_s", v)
        for name in ("knots_tokens", "knots_s"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))

    def tokens_s(self, tokens):
        """The token-dependent term: piecewise linear, extrapolated linearly past the last knot."""
        k, v = np.asarray(self.knots_tokens), np.asarray(self.knots_s)
        t = np.asarray(tokens, dtype=np.float64)
        inside = np.interp(t, k, v)
        slope = (v[-1] - v[-2]) / (k[-1] - k[-2]) if len(k) > 1 else 0.0
        return np.where(t > k[-1], v[-1] + slope * (t - k[-1]), inside)

    def predict(self, tokens, context_tokens, batch_size):
        return self.overhead_s + self.tokens_s(tokens) + self.context_s_per_token * np.asarray(context_tokens) + self.seq_s * np.asarray(batch_size)

    def to_dict(self) -> dict:
        return {
            "overhead_s": self.overhead_s,
            "knots_tokens": list(self.knots_tokens),
            "knots_s": list(self.knots_s),
            "context_s_per_token": self.context_s_per_token,
            "seq_s": self.seq_s,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "IterationFit":
        return cls(d["overhead_s"], tuple(d["knots_tokens"]), tuple(d["knots_s"]), d["context_s_per_token"], d["seq_s"])


@dataclass(frozen=True)
class Calibration:
    kind: Literal["kernel_curves", "iteration"]
    gpu: str
    curves: KernelCurves | None = None
    iteration: IterationFit | None = None
    model: str | None = None
    tp: int = 1
    step_overhead_s: float | None = None
    fit: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    path: str = ""

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"schema": SCHEMA, "kind": self.kind, "gpu": self.gpu}
        if self.model:
            d["model"], d["tp"] = self.model, self.tp
        d["step_overhead_s"] = self.step_overhead_s
        if self.curves is not None:
            d["curves"] = self.curves.to_dict()
        if self.iteration is not None:
            d["iteration"] = self.iteration.to_dict()
        d["fit"] = self.fit
        d["sources"] = self.sources
        return d


def load_calibration(path: str | Path) -> Calibration:
    """Read a calibration file (YAML or JSON); errors name the file and the fix."""
    p = Path(path)
    d = read_yaml_mapping(
        p, TraceError, "calibration file", "write one with `seersim calibrate cost PROFILE --out FILE`",
        f"not a seersim calibration file (expected 'schema: {SCHEMA}')",
    )
    if d.get("schema") != SCHEMA:
        raise TraceError(f"{p}: not a seersim calibration file (expected 'schema: {SCHEMA}')")
    kind = d.get("kind")
    try:
        if kind == "kernel_curves":
            return Calibration(
                kind, str(d["gpu"]), curves=KernelCurves.from_dict(d["curves"]),
                step_overhead_s=d.get("step_overhead_s"), fit=d.get("fit", {}), sources=d.get("sources", {}), path=str(p),
            )
        if kind == "iteration":
            return Calibration(
                kind, str(d["gpu"]), iteration=IterationFit.from_dict(d["iteration"]), model=d.get("model"),
                tp=int(d.get("tp", 1)), step_overhead_s=d.get("step_overhead_s"), fit=d.get("fit", {}),
                sources=d.get("sources", {}), path=str(p),
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise TraceError(f"{p}: calibration field missing or malformed: {exc}") from None
    raise TraceError(f"{p}: unknown calibration kind {kind!r}; expected 'kernel_curves' or 'iteration'")


def save_calibration(cal: Calibration, path: str | Path) -> None:
    """Write atomically (YAML)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(yaml.safe_dump(cal.to_dict(), sort_keys=False))
    tmp.replace(p)


def shipped_calibration(name: str) -> Path:
    return SHIPPED_DIR / f"{name}.yaml"
