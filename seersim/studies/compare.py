"""Compare policies on identical work: every policy runs the same scenario with the
same seeds (so the same requests), and results are aggregated over seeds.

Ratios follow DESIGN §6: speedup_vs_baseline = throughput / baseline throughput (per
seed, then averaged); tail_reduction_vs_baseline = 1 − tail_s / baseline tail_s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from seersim.api import RunResult
from seersim.config import Scenario
from seersim.limits import check_work, study_estimate
from seersim.policies import policy_class
from seersim.studies.runner import Executor, Outcome, Progress, Task, make_task, run_all, seed_list

DEFAULT_POLICIES = ("baseline", "divided", "context_aware", "seer")
METRICS = ("makespan_s", "throughput_tokens_per_s", "tail_s")


@dataclass
class Comparison:
    scenario: Scenario
    policies: list[str]
    seeds: list[int]
    baseline: str
    runs: pd.DataFrame  # one row per (policy, seed): the run's summary
    examples: dict[str, RunResult] = field(default_factory=dict)  # first seed's full result per policy

    @property
    def table(self) -> pd.DataFrame:
        """One row per policy: metric means, spreads over seeds, ratios vs the baseline."""
        runs = self.runs
        base = runs[runs["policy"] == self.baseline].set_index("seed")
        rows = []
        for pol in self.policies:
            r = runs[runs["policy"] == pol].set_index("seed")
            speed = r["throughput_tokens_per_s"] / base["throughput_tokens_per_s"]
            tail_red = 1.0 - r["tail_s"] / base["tail_s"].replace(0.0, np.nan)
            row = {"policy": pol}
            for m in METRICS:
                row[m] = float(r[m].mean())
                row[m + "_std"] = float(r[m].std(ddof=1)) if len(r) > 1 else 0.0
            row["speedup_vs_baseline"] = float(speed.mean())
            row["speedup_vs_baseline_std"] = float(speed.std(ddof=1)) if len(r) > 1 else 0.0
            row["tail_reduction_vs_baseline"] = float(tail_red.mean())
            row["tail_reduction_vs_baseline_std"] = float(tail_red.std(ddof=1)) if len(r) > 1 else 0.0
            for m in ("requests", "finished_requests", "preemptions", "migrations", "output_tokens", "gpu_utilization", "cost_usd"):
                if m in r:
                    row[m] = float(r[m].mean())
            rows.append(row)
        return pd.DataFrame(rows)

    def to_json(self) -> dict:
        return {
            "scenario": self.scenario.name,
            "baseline": self.baseline,
            "seeds": self.seeds,
            "results": self.table.to_dict(orient="records"),
        }


def compare_tasks(scenario: Scenario, policies: list[str], seeds: list[int], prefix: str = "", keep: bool = True) -> list[Task]:
    """One task per policy × seed (keys `prefix + policy/seed`); the first seed keeps its records."""
    for p in policies:
        policy_class(p)  # fail fast on an unknown name
    return [
        make_task(scenario, p, s, f"{prefix}{p}/{s}", keep=keep and s == seeds[0])
        for s in seeds
        for p in policies
    ]


def comparison_from(scenario: Scenario, policies: list[str], seeds: list[int], outcomes: dict[str, Outcome], prefix: str = "") -> Comparison:
    """Assemble a Comparison from the runner's outcomes (raising a point's typed error)."""
    rows, examples = [], {}
    for s in seeds:
        for p in policies:
            out = outcomes[f"{prefix}{p}/{s}"]
            if out.error is not None:
                raise out.error
            rows.append({**out.summary, "policy": p, "seed": s})
            if out.result is not None:
                examples[p] = out.result
    baseline = "baseline" if "baseline" in policies else policies[0]
    return Comparison(scenario, policies, seeds, baseline, pd.DataFrame(rows), examples)


def compare(
    scenario: Scenario,
    policies: list[str] | tuple[str, ...] = DEFAULT_POLICIES,
    seeds: int = 1,
    jobs: int = 1,
    progress: Progress | None = None,
    executor: Executor = "local",
    address: str | None = None,
) -> Comparison:
    """Run every policy × seed through the runner. Seeds are scenario.seed, scenario.seed+1, ...

    Results are identical whatever `jobs` and `executor`; a custom cost model is part of
    the scenario, so workers rebuild it.
    """
    policies = list(dict.fromkeys(policies))
    seeds_run = seed_list(scenario, seeds)
    tasks = compare_tasks(scenario, policies, seeds_run)
    check_work(scenario, study_estimate(scenario, policies, seeds, jobs))
    outcomes = run_all(tasks, jobs=jobs, executor=executor, address=address, progress=progress)
    return comparison_from(scenario, policies, seeds_run, outcomes)


# ---------------------------------------------------------------------------- plots
def plot_comparison(cmp: Comparison):
    """Figures: per-policy timelines side by side, finish-time CDF, throughput bars."""
    from seersim.report import TIMELINE_PANELS, _pyplot, plot_finish_cdf, plot_timeline

    plt = _pyplot()
    n = len(cmp.policies)
    sc, seed = cmp.scenario, cmp.seeds[0]
    fig_tl, axes = plt.subplots(
        len(TIMELINE_PANELS), n, figsize=(4.5 * n, 7.5), sharex=True, sharey="row", squeeze=False
    )
    for j, pol in enumerate(cmp.policies):
        step = cmp.examples[pol].steps[0]
        kv = int(step.instances["kv_blocks"].iloc[0])
        plot_timeline(step.timeline, kv, pol, axes=axes[:, j], legend=False)
    for ax in axes.flat:
        ax.label_outer()
    fig_tl.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center", ncol=4, bbox_to_anchor=(0.5, -0.04))
    fig_tl.suptitle(f"{sc.name}: seed {seed}, {sc.cluster.instances} instances, first step")
    fig_cdf = plot_finish_cdf(
        {p: cmp.examples[p].steps[0].requests for p in cmp.policies},
        title=f"{sc.name}: request finish times (seed {seed}, first step)",
    )
    fig_bar, ax = plt.subplots(figsize=(1.8 * n + 2, 4.5))
    t = cmp.table
    x = np.arange(n)
    ax.bar(x, t["throughput_tokens_per_s"], yerr=t["throughput_tokens_per_s_std"], color="tab:blue", capsize=4)
    for k, r in enumerate(t.to_dict(orient="records")):
        # inside the bar, below the error bar's lower whisker
        label = f"{r['speedup_vs_baseline']:.2f}x"
        if r["finished_requests"] < r["requests"]:
            label += f"\n{r['finished_requests']:,.0f} of {r['requests']:,.0f}\nfinished"
        low = r["throughput_tokens_per_s"] - r["throughput_tokens_per_s_std"]
        ax.text(k, low * 0.96, label, ha="center", va="top", fontsize="small", color="white", fontweight="bold")
    ax.set_xticks(x, t["policy"], rotation=20, ha="right")
    ax.set_ylabel("output tokens / s")
    spread = f", ± std over {len(cmp.seeds)} seeds" if len(cmp.seeds) > 1 else ""
    ax.set_title(f"{sc.name}: rollout throughput (speedup vs {cmp.baseline}{spread})")
    return {"timelines.png": fig_tl, "finish_cdf.png": fig_cdf, "throughput.png": fig_bar}
