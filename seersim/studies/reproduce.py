"""Reproduce the Seer paper's ablation (v3 Table 4) on the shipped paper scenarios.

`seersim reproduce` runs baseline, divided, context_aware and seer on the Moonlight,
Qwen2-VL-72B and Kimi-K2 scenarios (identical work per scenario) and writes the
table of paper vs seersim speedups and Seer's tail reduction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from seersim.config import Scenario, load_scenario, with_overrides
from seersim.studies.compare import comparison_from, compare_tasks
from seersim.studies.runner import Executor, Progress, run_all

# Paper v3 Table 4 (cumulative rollout-throughput speedup) and Seer's tail reduction (DESIGN §4, §6).
PAPER = {
    "moonlight": {"divided": 1.41, "context_aware": 1.47, "seer": 1.90, "tail_reduction": 0.84},
    "qwen2-vl-72b": {"divided": 1.42, "context_aware": 1.56, "seer": 2.04, "tail_reduction": 0.94},
    "kimi-k2": {"divided": 1.16, "context_aware": 1.27, "seer": 1.53, "tail_reduction": 0.72},
}
STEPS = ("divided", "context_aware", "seer")
TOLERANCE = 0.10  # "within ±10 percentage points": |ratio − paper ratio| ≤ 0.10
CHUNKS = (2048, 8192, 32768)  # DESIGN §6: publish how results move with 2K / 8K / 32K chunks
CHUNK_POLICIES = ("divided", "context_aware")


@dataclass
class Reproduction:
    table4: pd.DataFrame  # model, metric, paper, seersim, diff, within_10pp
    chunks: pd.DataFrame | None  # model, policy, chunk_tokens, speedup, tail_reduction


def reproduce(
    scenarios_dir: Path,
    seeds: int = 1,
    jobs: int = 1,
    progress: Progress | None = None,
    chunks: bool = False,
    executor: Executor = "local",
    address: str | None = None,
) -> Reproduction:
    """Table 4 (and, with `chunks`, the chunk-size table) from one batch of runner tasks."""
    studies: list[tuple[str, Scenario, tuple[str, ...]]] = []
    for name in PAPER:
        sc = load_scenario(scenarios_dir / f"{name}.yaml")
        studies.append((f"{name}/table4/", sc, ("baseline", *STEPS)))
        if chunks:
            for chunk in CHUNKS:
                studies.append((f"{name}/chunk{chunk}/", with_overrides(sc, **{"policy.chunk_tokens": chunk}), ("baseline", *CHUNK_POLICIES)))
    seed_lists = {prefix: [sc.seed + i for i in range(seeds if prefix.endswith("table4/") else 1)] for prefix, sc, _ in studies}
    tasks = [t for prefix, sc, pols in studies for t in compare_tasks(sc, list(pols), seed_lists[prefix], prefix, keep=False)]
    outcomes = run_all(tasks, jobs=jobs, executor=executor, address=address, progress=progress)
    tables = {
        prefix: comparison_from(sc, list(pols), seed_lists[prefix], outcomes, prefix).table.set_index("policy")
        for prefix, sc, pols in studies
    }
    rows = []
    for name, paper in PAPER.items():
        table = tables[f"{name}/table4/"]
        for step in STEPS:
            ours = float(table.loc[step, "speedup_vs_baseline"])
            rows.append({"model": name, "metric": f"speedup {step}", "paper": paper[step], "seersim": ours})
        ours_tail = float(table.loc["seer", "tail_reduction_vs_baseline"])
        rows.append({"model": name, "metric": "tail reduction seer", "paper": paper["tail_reduction"], "seersim": ours_tail})
    df = pd.DataFrame(rows)
    df["diff"] = df["seersim"] - df["paper"]
    df["within_10pp"] = df["diff"].abs() <= TOLERANCE
    chunk_rows = [
        {
            "model": name,
            "policy": pol,
            "chunk_tokens": chunk,
            "speedup": float(tables[f"{name}/chunk{chunk}/"].loc[pol, "speedup_vs_baseline"]),
            "tail_reduction": float(tables[f"{name}/chunk{chunk}/"].loc[pol, "tail_reduction_vs_baseline"]),
        }
        for name in PAPER
        for pol in CHUNK_POLICIES
        for chunk in (CHUNKS if chunks else ())
    ]
    return Reproduction(df, pd.DataFrame(chunk_rows) if chunks else None)


def chunk_markdown(df: pd.DataFrame) -> str:
    lines = ["| model | policy | " + " | ".join(f"{c // 1024}K chunks" for c in CHUNKS) + " |", "|---|---|" + "---|" * len(CHUNKS)]
    for (model, pol), g in df.groupby(["model", "policy"], sort=False):
        cells = [f"{r.speedup:.2f}x (tail {-r.tail_reduction:+.0%})" for r in g.sort_values("chunk_tokens").itertuples()]
        lines.append(f"| {model} | {pol} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_markdown(df: pd.DataFrame) -> str:
    lines = [
        "| model | metric | paper | seersim | diff | within ±10 pp |",
        "|---|---|---|---|---|---|",
    ]
    for r in df.itertuples():
        fmt = "{:.0%}" if "tail" in r.metric else "{:.2f}x"
        lines.append(
            f"| {r.model} | {r.metric} | {fmt.format(r.paper)} | {fmt.format(r.seersim)} | {r.diff:+.2f} | "
            f"{'yes' if r.within_10pp else 'no'} |"
        )
    return "\n".join(lines) + "\n"
