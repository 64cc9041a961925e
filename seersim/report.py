"""Reports: summary tables, plots and result files. Results are data first (pandas),
pictures second; every file is written atomically (temp file + rename)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from seersim.io import atomic_write, write_frame, write_json
from seersim.tables import Column, print_table

__all__ = ["atomic_write", "write_frame", "write_json", "print_summary", "plot_timeline", "plot_finish_cdf", "write_run"]

# Rows of the summary table: (key, label, format)
SUMMARY_ROWS = [
    ("requests", "requests", "{:,}"),
    ("output_tokens", "output tokens", "{:,}"),
    ("makespan_s", "makespan (rollout time)", "{:,.1f} s"),
    ("throughput_tokens_per_s", "throughput", "{:,.0f} tok/s"),
    ("tail_s", "tail (last 10% of requests)", "{:,.1f} s"),
    ("preemptions", "preemptions", "{:,}"),
    ("migrations", "migrations", "{:,}"),
    ("chunks", "chunks dispatched", "{:,}"),
    ("pool_transfers", "KV pulls through the pool", "{:,}"),
    ("pulled_bytes", "KV pulled (bytes)", "{:,.3g}"),
    ("mean_accepted_tokens", "tokens per decode iteration", "{:.2f}"),
    ("gpu_utilization", "GPU busy fraction", "{:.1%}"),
    ("idle_gpu_s", "idle GPU-seconds", "{:,.0f}"),
    ("kv_capacity_tokens_per_instance", "KV capacity / instance", "{:,} tok"),
    ("rl_step_s", "RL step (rollout + training_s)", "{:,.1f} s"),
    ("gpu_hours", "GPU-hours per RL step", "{:,.3f}"),
    ("cost_usd", "cost of the RL step", "${:,.2f}"),
    ("gpu_hour_usd", "price per GPU-hour (gpu.gpu_hour_usd)", "${:,.2f}"),
]


def _fmt(fmt: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):  # (undefined: null in JSON)
        return "n/a"
    if fmt.startswith("{:,}") and isinstance(value, float):  # counts averaged over steps
        value = int(round(value))
    return fmt.format(value)


def print_summary(result, title: str) -> None:
    """The run's summary: one value column, or one per RL step plus their mean."""
    steps = [st.summary for st in result.steps]
    if len(steps) == 1:
        cols = [Column("metric", "left", whole=True), Column("value")]
        rows = [[label, _fmt(fmt, steps[0][key])] for key, label, fmt in SUMMARY_ROWS if key in steps[0]]
        print_table(title, cols, rows)
        return
    agg = result.summary
    cols = [Column("metric", "left", whole=True)] + [Column(f"step {k + 1}") for k in range(len(steps))]
    cols.append(Column(f"mean of {len(steps)} steps"))
    rows = [
        [label] + [_fmt(fmt, st[key]) for st in steps] + [_fmt(fmt, agg[key])]
        for key, label, fmt in SUMMARY_ROWS
        if key in agg
    ]
    print_table(title, cols, rows)


# ------------------------------------------------------------------ files
def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


# ------------------------------------------------------------------ plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


TIMELINE_PANELS = (("running", "running requests"), ("waiting", "waiting requests"), ("kv_fraction", "KV used (fraction)"))


def _on_grid(timeline: pd.DataFrame, column: str, grid: np.ndarray) -> tuple[np.ndarray, list]:
    """Each instance's step function sampled at `grid`: (instances × len(grid), instance ids)."""
    rows, ids = [], []
    for inst, df in timeline.groupby("instance"):
        t = df["time_s"].to_numpy()
        v = df[column].to_numpy(dtype=float)
        k = np.searchsorted(t, grid, side="right") - 1
        rows.append(np.where(k >= 0, v[np.clip(k, 0, None)], 0.0))
        ids.append(inst)
    return np.array(rows), ids


def plot_timeline(timeline: pd.DataFrame, kv_blocks: int, title: str, axes=None, legend: bool = True):
    """Running and waiting requests and KV use across instances over time.

    One line per instance is unreadable at 16+ instances, so each panel shows the
    median over instances, the 10-90th percentile band and the min-max band, plus the
    slowest instance (the last to go idle: the one that sets the makespan)."""
    plt = _pyplot()
    if axes is None:
        fig, axes = plt.subplots(len(TIMELINE_PANELS), 1, figsize=(10, 7.5), sharex=True)
    else:
        fig = axes[0].figure
    tl = timeline.assign(kv_fraction=timeline["kv_used_blocks"] / max(kv_blocks, 1))
    if "waiting" not in tl:
        tl = tl.assign(waiting=0)
    end_s = float(tl["time_s"].max()) if len(tl) else 1.0
    grid = np.linspace(0.0, end_s, 600)
    busy = tl[(tl["running"] > 0) | (tl["waiting"] > 0)]
    slowest = busy.groupby("instance")["time_s"].max().idxmax() if len(busy) else None
    n_inst = tl["instance"].nunique()
    for ax, (col, label) in zip(axes, TIMELINE_PANELS):
        if len(tl):
            vals, ids = _on_grid(tl, col, grid)
            lo, p10, p50, p90, hi = np.percentile(vals, [0, 10, 50, 90, 100], axis=0)
            ax.fill_between(grid, lo, hi, step="post", color="tab:blue", alpha=0.12, lw=0, label="min-max")
            ax.fill_between(grid, p10, p90, step="post", color="tab:blue", alpha=0.3, lw=0, label="10-90th pct")
            ax.step(grid, p50, where="post", color="tab:blue", lw=1.2, label=f"median of {n_inst} instances")
            if slowest is not None:
                ax.step(grid, vals[ids.index(slowest)], where="post", color="tab:red", lw=0.9,
                        label="slowest instance (last to go idle)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if legend and len(tl):
        axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    axes[-1].set_xlabel("time (s)")
    axes[0].set_title(title)
    return fig


def plot_finish_cdf(results: dict[str, pd.DataFrame], title: str = "", ax=None):
    """CDF of request finish times, one line per policy; the tail starts at the 0.9 line."""
    plt = _pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4))
    for name, req in results.items():
        t = np.sort(req["finish_s"].dropna().to_numpy())
        ax.plot(t, np.arange(1, len(t) + 1) / max(len(req), 1), label=name)
    ax.set_xlabel("finish time (s)")
    ax.set_ylabel("fraction of requests finished")
    ax.axhline(0.9, color="grey", lw=0.8, ls="--")
    ax.annotate("90%: the tail is the time after this", xy=(0.01, 0.9), xycoords=("axes fraction", "data"),
                xytext=(0, -12), textcoords="offset points", fontsize="small", color="grey")
    ax.set_title(title or "request finish times")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return ax.figure


def run_title(result, step: int) -> str:
    """Which run and which step a figure shows."""
    sc = result.scenario
    n = len(result.steps)
    which = f", step {step + 1} of {n}" if n > 1 else ""
    return f"{sc.name}: {result.policy}, seed {result.seed}, {sc.cluster.instances} instances{which}"


def write_run(out_dir: Path, result) -> list[Path]:
    """--out of `seersim run`: per-request and per-instance records, summary, timeline
    plot (of the last step; every step's records are in the files, `step` column)."""
    written = [
        write_frame(out_dir / "requests", result.requests),
        write_frame(out_dir / "instances", result.instances),
        write_frame(out_dir / "timeline", result.timeline),
    ]
    write_json(out_dir / "summary.json", {"summary": result.summary, "steps": [s.summary for s in result.steps]})
    written.append(out_dir / "summary.json")
    step = result.steps[-1]
    kv_blocks = int(step.instances["kv_blocks"].iloc[0]) if len(step.instances) else 1
    fig = plot_timeline(step.timeline, kv_blocks, run_title(result, step.step))
    save_figure(fig, out_dir / "timeline.png")
    written.append(out_dir / "timeline.png")
    return written
