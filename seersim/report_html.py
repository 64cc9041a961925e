"""`seersim report DIR`: one self-contained HTML page for an output folder.

The folder's kind is recognised by the file its command writes (plan.json, sweep.json,
compare.json, summary.json); each kind contributes its tables, and every PNG plot is
embedded as base64, so the page can be mailed or attached to a CI run as one file.
New kinds register a (marker file, renderer) pair in `KINDS`.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Callable

import pandas as pd

from seersim.errors import OutputError
from seersim.io import atomic_write
from seersim.report import SUMMARY_ROWS, _fmt

Section = tuple[str, str]  # (heading, HTML body)
MAX_ROWS = 200  # longer tables are cut (the full data stays in the folder's files)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; margin: 0.5em 0; } pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
.note { color: #666; font-size: 0.9em; }
"""


def read_frame(stem: Path) -> pd.DataFrame | None:
    """A table written by `report.write_frame` (parquet, or CSV without pyarrow)."""
    for suffix, reader in ((".parquet", pd.read_parquet), (".csv", pd.read_csv)):
        path = stem.with_suffix(suffix)
        if path.is_file():
            return reader(path)
    return None


def table_html(df: pd.DataFrame, max_rows: int = MAX_ROWS) -> str:
    note = ""
    if len(df) > max_rows:
        note = f'<p class="note">first {max_rows} of {len(df)} rows</p>'
        df = df.head(max_rows)
    return df.to_html(index=False, float_format=lambda v: f"{v:,.4g}", na_rep="", border=0) + note


def png_html(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _mapping_html(d: dict) -> str:
    return table_html(pd.DataFrame({"field": list(d), "value": [json.dumps(v, default=str) if isinstance(v, (dict, list)) else v for v in d.values()]}))


# ------------------------------------------------------------------ kinds
def _run(folder: Path) -> list[Section]:
    data = json.loads((folder / "summary.json").read_text())
    summary = data["summary"]
    rows = [(label, _fmt(fmt, summary[key])) for key, label, fmt in SUMMARY_ROWS if key in summary]
    sections = [("Summary", table_html(pd.DataFrame(rows, columns=["metric", "value"])))]
    if len(data.get("steps", [])) > 1:
        sections.append(("Steps", table_html(pd.DataFrame(data["steps"]))))
    inst = read_frame(folder / "instances")
    if inst is not None:
        sections.append(("Instances", table_html(inst)))
    req = read_frame(folder / "requests")
    if req is not None:
        sections.append(("Requests (distribution)", table_html(req.describe().T.reset_index(names="column"))))
    return sections


def _compare(folder: Path) -> list[Section]:
    data = json.loads((folder / "compare.json").read_text())
    sections = [
        (f"Policies on {data['scenario']} (seeds {data['seeds']}, vs {data['baseline']})", table_html(pd.DataFrame(data["results"])))
    ]
    runs = read_frame(folder / "runs")
    if runs is not None:
        sections.append(("Runs (one per policy and seed)", table_html(runs)))
    return sections


def _sweep(folder: Path) -> list[Section]:
    spec = json.loads((folder / "sweep.json").read_text())
    table = read_frame(folder / "results")
    sections = [("Sweep", _mapping_html({k: spec[k] for k in ("scenario", "grid", "policies", "seeds", "points")}))]
    if table is None:
        return sections + [("Results", '<p class="note">no results table yet: the sweep has not finished</p>')]
    keys = list(spec["grid"])
    cols = [c for c in (*keys, "policy", "seed", "rl_step_s", "makespan_s", "throughput_tokens_per_s", "tail_s",
                        "preemptions", "gpus", "gpu_hours", "cost_usd", "error") if c in table]
    sections.append(("Results", table_html(table[cols])))
    plots = "".join(png_html(figure_png(fig), alt) for alt, fig in _sweep_figures(table, keys))
    if plots:
        sections.append(("Plots", plots))
    return sections


def _sweep_figures(table: pd.DataFrame, keys: list[str]):
    from seersim.report import _pyplot

    ok = table[table["error"].isna()] if "error" in table else table
    if ok.empty:
        return
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for pol, g in ok.groupby("policy"):
        ax.scatter(g["rl_step_s"], g["cost_usd"], s=18, alpha=0.7, label=pol)
    ax.set_xlabel("RL step time (s)")
    ax.set_ylabel("cost per RL step ($)")
    ax.set_title("every point: step time vs cost")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    yield "step time vs cost", fig
    numeric = [k for k in keys if pd.api.types.is_numeric_dtype(ok[k])]
    if numeric:
        x = numeric[0]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for pol, g in ok.groupby("policy"):
            m = g.groupby(x)["rl_step_s"].mean()
            ax.plot(m.index, m.to_numpy(), marker="o", label=pol)
        ax.set_xlabel(x)
        ax.set_ylabel("RL step time (s), mean over the other keys and seeds")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        yield f"step time vs {x}", fig


def _plan(folder: Path) -> list[Section]:
    data = json.loads((folder / "plan.json").read_text())
    head = {k: data.get(k) for k in ("scenario", "target_step_s", "objective", "budget_usd", "seeds", "stat", "met_target", "evaluated", "space")}
    head["pruned"] = data.get("pruned")
    sections = [("Plan", _mapping_html(head))]
    chosen = data.get("best") or data.get("fastest")
    if chosen:
        title = "Best configuration" if data.get("best") else "Nothing meets the target: the fastest configuration found"
        sections.append((title, _mapping_html(chosen)))
    if data.get("frontier"):
        frontier = pd.DataFrame(data["frontier"])
        frontier["overrides"] = frontier["overrides"].map(lambda o: ", ".join(f"{k}={v}" for k, v in o.items()))
        frontier = frontier.drop(columns=["gpu_hour_usd_source"], errors="ignore")  # shown with the best
        sections.append(("Pareto frontier (simulated points)", table_html(frontier)))
    points = read_frame(folder / "points")
    if points is not None:
        sections.append(("Every point of the space (status: simulated or why it was pruned)", table_html(points)))
    best_yaml = folder / "best.yaml"
    if best_yaml.is_file():
        sections.append(("best.yaml (ready to run)", f"<pre>{html.escape(best_yaml.read_text())}</pre>"))
    return sections


# marker file -> (kind, renderer); checked in this order (a plan folder is not also a run)
KINDS: list[tuple[str, str, Callable[[Path], list[Section]]]] = [
    ("plan.json", "plan", _plan),
    ("sweep.json", "sweep", _sweep),
    ("compare.json", "compare", _compare),
    ("summary.json", "run", _run),
]


def render(folder: Path) -> str:
    """The report's HTML for an output folder."""
    if not folder.is_dir():
        raise OutputError(f"'{folder}' is not a folder; give an output folder of run, compare, sweep or plan (--out)")
    for marker, kind, renderer in KINDS:
        if (folder / marker).is_file():
            break
    else:
        known = ", ".join(f"{m} ({k})" for m, k, _ in KINDS)
        raise OutputError(f"'{folder}' holds none of {known}; give a folder written by a seersim command's --out")
    try:
        sections = renderer(folder)
    except (ValueError, KeyError) as exc:  # (a JSONDecodeError or a UnicodeDecodeError is a ValueError)
        raise OutputError(f"{folder / marker}: unreadable ({exc.__class__.__name__}: {exc}); re-run the command") from None
    for png in sorted(folder.glob("*.png")):
        sections.append((png.stem.replace("_", " "), png_html(png.read_bytes(), png.name)))
    body = "".join(f"<h2>{html.escape(h)}</h2>\n{b}\n" for h, b in sections)
    title = f"seersim {kind} report: {folder.resolve().name}"
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n{body}</body></html>\n"
    )


def write_report(folder: Path, out: Path | None = None) -> Path:
    """Render `folder` and write it (default `folder/report.html`) atomically."""
    text = render(folder)
    path = out or folder / "report.html"
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
    return path
