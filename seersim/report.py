"""Reports: summary tables, plots and result files. Results are data first (pandas),
pictures second; every file is written atomically (temp file + rename)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from seersim.errors import OutputError

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
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    if fmt == "{:,}" and isinstance(value, float):  # counts averaged over steps
        value = int(round(value))
    return fmt.format(value)


def summary_table(summary: dict, title: str):
    from rich.table import Table

    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, label, fmt in SUMMARY_ROWS:
        if key in summary:
            table.add_row(label, _fmt(fmt, summary[key]))
    return table


# ------------------------------------------------------------------ atomic files
def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, then rename over `path`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write '{path}': {exc.strerror or exc}; choose another --out folder") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n"))


def _json_default(o: Any):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_frame(path_stem: Path, df: pd.DataFrame) -> Path:
    """Parquet when pyarrow is installed, else CSV. Returns the path written."""
    try:
        import pyarrow  # noqa: F401

        path = path_stem.with_suffix(".parquet")
        atomic_write(path, lambda p: df.to_parquet(p, index=False))
    except ImportError:
        path = path_stem.with_suffix(".csv")
        atomic_write(path, lambda p: df.to_csv(p, index=False))
    return path


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


def plot_timeline(timeline: pd.DataFrame, kv_blocks: int, title: str, axes=None):
    """Running requests and KV use per instance over time (step functions)."""
    plt = _pyplot()
    if axes is None:
        fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    else:
        fig = axes[0].figure
    n_inst = timeline["instance"].nunique() if len(timeline) else 0
    cmap = plt.get_cmap("viridis", max(n_inst, 1))
    for k, (inst, df) in enumerate(timeline.groupby("instance")):
        color = cmap(k)
        axes[0].step(df["time_s"], df["running"], where="post", color=color, lw=0.8, alpha=0.8)
        axes[1].step(df["time_s"], df["kv_used_blocks"] / max(kv_blocks, 1), where="post", color=color, lw=0.8, alpha=0.8)
    axes[0].set_ylabel("running requests")
    axes[1].set_ylabel("KV used (fraction)")
    axes[1].set_xlabel("time (s)")
    axes[0].set_title(title)
    return fig


def plot_finish_cdf(results: dict[str, pd.DataFrame], ax=None):
    """CDF of request finish times, one line per policy."""
    plt = _pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4))
    for name, req in results.items():
        t = np.sort(req["finish_s"].to_numpy())
        ax.plot(t, np.arange(1, len(t) + 1) / len(t), label=name)
    ax.set_xlabel("finish time (s)")
    ax.set_ylabel("fraction of requests finished")
    ax.axhline(0.9, color="grey", lw=0.5, ls="--")
    ax.legend()
    return ax.figure


def write_run(out_dir: Path, result, title: str) -> list[Path]:
    """--out of `seersim run`: per-request and per-instance records, summary, timeline plot."""
    written = [
        write_frame(out_dir / "requests", result.requests),
        write_frame(out_dir / "instances", result.instances),
        write_frame(out_dir / "timeline", result.timeline),
    ]
    write_json(out_dir / "summary.json", {"summary": result.summary, "steps": [s.summary for s in result.steps]})
    written.append(out_dir / "summary.json")
    step = result.steps[-1]
    kv_blocks = int(step.instances["kv_blocks"].iloc[0]) if len(step.instances) else 1
    fig = plot_timeline(step.timeline, kv_blocks, title)
    save_figure(fig, out_dir / "timeline.png")
    written.append(out_dir / "timeline.png")
    return written
