"""Reproduce the Seer paper's ablation (v3 Table 4) on the shipped paper scenarios.

`seersim reproduce` runs baseline, divided, context_aware and seer on the Moonlight,
Qwen2-VL-72B and Kimi-K2 scenarios (identical work per scenario) and writes the
table of paper vs seersim speedups and Seer's tail reduction.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from seersim.compare import compare
from seersim.config import load_scenario

# Paper v3 Table 4 (cumulative rollout-throughput speedup) and Seer's tail reduction (DESIGN §4, §6).
PAPER = {
    "moonlight": {"divided": 1.41, "context_aware": 1.47, "seer": 1.90, "tail_reduction": 0.84},
    "qwen2-vl-72b": {"divided": 1.42, "context_aware": 1.56, "seer": 2.04, "tail_reduction": 0.94},
    "kimi-k2": {"divided": 1.16, "context_aware": 1.27, "seer": 1.53, "tail_reduction": 0.72},
}
STEPS = ("divided", "context_aware", "seer")
TOLERANCE = 0.10  # "within ±10 percentage points": |ratio − paper ratio| ≤ 0.10


def reproduce(scenarios_dir: Path, seeds: int = 1, jobs: int = 1, progress=None) -> pd.DataFrame:
    rows = []
    for name, paper in PAPER.items():
        sc = load_scenario(scenarios_dir / f"{name}.yaml")
        table = compare(sc, ("baseline", *STEPS), seeds=seeds, jobs=jobs).table.set_index("policy")
        for step in STEPS:
            ours = float(table.loc[step, "speedup_vs_baseline"])
            rows.append({"model": name, "metric": f"speedup {step}", "paper": paper[step], "seersim": ours})
        ours_tail = float(table.loc["seer", "tail_reduction_vs_baseline"])
        rows.append({"model": name, "metric": "tail reduction seer", "paper": paper["tail_reduction"], "seersim": ours_tail})
        if progress:
            progress(len(rows) // 4, len(PAPER))
    df = pd.DataFrame(rows)
    df["diff"] = df["seersim"] - df["paper"]
    df["within_10pp"] = df["diff"].abs() <= TOLERANCE
    return df


CHUNKS = (2048, 8192, 32768)  # DESIGN §6: publish how results move with 2K / 8K / 32K chunks


def chunk_sensitivity(scenarios_dir: Path, policies=("divided", "context_aware"), jobs: int = 1) -> pd.DataFrame:
    """Speedup over the baseline of chunked policies at each chunk size, per paper model."""
    rows = []
    for name in PAPER:
        for chunk in CHUNKS:
            sc = load_scenario(scenarios_dir / f"{name}.yaml", **{"policy.chunk_tokens": chunk})
            table = compare(sc, ("baseline", *policies), jobs=jobs).table.set_index("policy")
            for pol in policies:
                rows.append(
                    {
                        "model": name,
                        "policy": pol,
                        "chunk_tokens": chunk,
                        "speedup": float(table.loc[pol, "speedup_vs_baseline"]),
                        "tail_reduction": float(table.loc[pol, "tail_reduction_vs_baseline"]),
                    }
                )
    return pd.DataFrame(rows)


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
