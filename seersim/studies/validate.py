"""`seersim validate`: how well does the simulator predict live vLLM servers?

One scenario runs live (`backends/vllm.py`) and in the simulator on identical work
(the same seeded requests, output lengths forced live). The simulator is calibrated
from a *separate* profiling run of the same servers taken just before (never from the
validation runs): `profile/vllm.py` → `calibrate/costfit.fit_iteration` → a scenario
`cost: {model: calibrated, file: ...}`; its engine takes the servers' block size and
KV capacity. Live repeats are interleaved across policies (repeat r runs every policy,
in an order rotated by r) so slow drifts of a shared machine hit all policies alike.

Per policy it reports the live median and spread (max − min over repeats, as a
fraction of the median) of makespan, throughput and tail, the simulated value, and
the signed error (sim − live median) / live median. Two policies are *ranked* only
where their live medians differ by more than the larger of their spreads; smaller
differences are ties, and the ranking agrees when the simulator orders every ranked
pair the same way.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from seersim.config import Scenario, with_overrides
from seersim.errors import ScenarioError

DEFAULT_POLICIES = ("baseline", "divided", "context_aware")
#: repeats per policy: the issue's floor, enough for a median and a spread
DEFAULT_REPEATS = 5
METRICS = ("makespan_s", "throughput_tokens_per_s", "tail_s")


@dataclass
class PolicyValidation:
    policy: str
    live: dict[str, float]  # metric -> median
    live_spread: dict[str, float]  # metric -> (max − min) / median
    sim: dict[str, float]
    error: dict[str, float]  # metric -> (sim − live) / live
    live_speedup: float  # baseline live median makespan / this policy's
    sim_speedup: float

    def to_json(self) -> dict:
        return {
            "policy": self.policy,
            "live_makespan_s": self.live["makespan_s"],
            "live_spread": self.live_spread["makespan_s"],
            "sim_makespan_s": self.sim["makespan_s"],
            "makespan_error": self.error["makespan_s"],
            "live_throughput_tokens_per_s": self.live["throughput_tokens_per_s"],
            "live_throughput_spread": self.live_spread["throughput_tokens_per_s"],
            "sim_throughput_tokens_per_s": self.sim["throughput_tokens_per_s"],
            "throughput_error": self.error["throughput_tokens_per_s"],
            "live_tail_s": self.live["tail_s"],
            "live_tail_spread": self.live_spread["tail_s"],
            "sim_tail_s": self.sim["tail_s"],
            "tail_error": self.error["tail_s"],
            "live_speedup_vs_baseline": self.live_speedup,
            "sim_speedup_vs_baseline": self.sim_speedup,
            "speedup_error": (self.sim_speedup - self.live_speedup) / self.live_speedup,
        }


@dataclass
class ValidationResult:
    scenario: Scenario  # as simulated: calibrated cost, the servers' engine geometry
    servers: list[str]
    repeats: int
    policies: list[PolicyValidation]
    pairs: list[dict]  # each pair of policies: live order or tie, sim order, agrees
    live_runs: pd.DataFrame  # one row per live run (policy, repeat, order, summary)
    live_requests: pd.DataFrame  # request records of every live run (policy, repeat)
    sim_requests: pd.DataFrame  # request records of each simulated policy
    profile: dict = field(default_factory=dict)  # table path, meta, fit quality

    @property
    def ranking_agrees(self) -> bool:
        return all(p["agrees"] for p in self.pairs if p["live"] != "tie")

    def to_json(self) -> dict:
        return {
            "scenario": self.scenario.name,
            "servers": self.servers,
            "repeats": self.repeats,
            "ranking_agrees": self.ranking_agrees,
            "ranked_pairs": sum(p["live"] != "tie" for p in self.pairs),
            "pairs": self.pairs,
            "max_abs_makespan_error": max(abs(p.error["makespan_s"]) for p in self.policies),
            "policies": [p.to_json() for p in self.policies],
            "profile": self.profile,
            "spread": "(max - min) / median over the live repeats",
            "error": "(simulated - live median) / live median",
        }


def calibrated_scenario(scenario: Scenario, calibration: Path, block_size: int, kv_tokens: int) -> Scenario:
    """The scenario as the simulator must see the servers: their KV geometry, the fitted cost."""
    return with_overrides(
        scenario,
        **{
            "engine.block_size_tokens": block_size,
            "engine.kv_capacity_tokens": kv_tokens,
            "engine.speculation.mode": "none",
            "kv_pool.enabled": False,  # vLLM servers share no KV pool
            "cost.model": "calibrated",
            "cost.file": str(Path(calibration).resolve()),
        },
    )


def profile_and_calibrate(
    urls: list[str], folder: Path, model: str, gpu: str, grid=None, seed: int = 0
) -> tuple[Path, dict]:
    """The separate profiling run: profile the servers, fit an iteration calibration of
    `model` on `gpu` (the scenario's names: the deployment being validated)."""
    from seersim.calibrate.costfit import fit_iteration
    from seersim.calibrate.tables import read_cost_data
    from seersim.cost.calibration import save_calibration
    from seersim.profile.table import write_profile_table
    from seersim.profile.vllm import ProfileGrid, profile_vllm

    rows, meta = profile_vllm(urls, grid or ProfileGrid(), seed=seed, gpu=gpu, model=model)
    table = folder / "profile.csv"
    write_profile_table(rows, table, meta)
    fit = fit_iteration(read_cost_data(table), seed, "seersim validate (profiling run)")
    cal_path = folder / "calibration.yaml"
    save_calibration(fit.calibration, cal_path)
    info = {
        "table": table.name,
        "calibration": cal_path.name,
        "rows": int(len(rows)),
        "fit_heldout_mape": fit.heldout_mape,
        "fit_train_mape": fit.train_mape,
        "fit": fit.params,
        "profiling_s": meta.get("elapsed_s"),
    }
    return cal_path, info


def _stats(values: np.ndarray) -> tuple[float, float]:
    med = float(np.median(values))
    return med, float((values.max() - values.min()) / med) if med > 0 else 0.0


def _pairs(policies: list[PolicyValidation], live_runs: pd.DataFrame) -> list[dict]:
    out = []
    for a, b in itertools.combinations(policies, 2):
        ma, mb = a.live["makespan_s"], b.live["makespan_s"]
        spread_s = max(
            float(np.ptp(live_runs.loc[live_runs["policy"] == p.policy, "makespan_s"])) for p in (a, b)
        )
        live = "tie" if abs(ma - mb) <= spread_s else (f"{a.policy}<{b.policy}" if ma < mb else f"{b.policy}<{a.policy}")
        sa, sb = a.sim["makespan_s"], b.sim["makespan_s"]
        sim = f"{a.policy}<{b.policy}" if sa < sb else f"{b.policy}<{a.policy}"
        out.append(
            {
                "pair": [a.policy, b.policy],
                "live_difference_s": abs(ma - mb),
                "live_spread_s": spread_s,
                "live": live,
                "sim": sim,
                "agrees": live == "tie" or live == sim,
            }
        )
    return out


def validate(
    scenario: Scenario,
    urls: list[str],
    policies: list[str] | None = None,
    repeats: int = DEFAULT_REPEATS,
    work_dir: Path | None = None,
    grid=None,
    on_run: Callable[[str, int, dict], None] | None = None,
) -> ValidationResult:
    """Profile + calibrate, run every policy live `repeats` times (interleaved), simulate
    each once on the same requests, and compare. `work_dir` keeps the profiling table
    and the calibration (a temporary folder when None)."""
    import tempfile

    from seersim.backends.vllm import VLLMBackend, run_live
    from seersim.studies.runner import make_task, run_all

    policies = list(policies or DEFAULT_POLICIES)
    if "baseline" not in policies:
        raise ScenarioError("--policies must include baseline (speedups are relative to it)")
    if repeats < 1:
        raise ScenarioError(f"--repeats must be >= 1 (got {repeats})")
    if scenario.steps != 1:
        raise ScenarioError(f"steps: validation compares one rollout step (got {scenario.steps}); set steps: 1")
    backend = VLLMBackend(urls, max_num_seqs=scenario.engine.max_num_seqs)
    kv_tokens = {s.kv_blocks * s.block_size for s in backend.servers}
    if len(kv_tokens) != 1:
        raise ScenarioError(f"the servers hold different KV capacities {sorted(kv_tokens)} tokens; start them alike")
    if len(backend.servers) != scenario.cluster.instances:
        scenario = with_overrides(scenario, **{"cluster.instances": len(backend.servers)})

    tmp = None
    if work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="seersim-validate-")
        work_dir = Path(tmp.name)
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        cal_path, profile_info = profile_and_calibrate(
            urls, work_dir, scenario.model.name, scenario.gpu.name, grid, seed=scenario.seed
        )
        sim_sc = calibrated_scenario(scenario, cal_path, backend.block_size, kv_tokens.pop())

        runs, live_reqs = [], []
        for r in range(repeats):
            order = policies[r % len(policies):] + policies[: r % len(policies)]
            for k, pol in enumerate(order):
                res = run_live(scenario, backend, policy=pol)
                s = res.summary
                runs.append({"policy": pol, "repeat": r, "order": k, **s})
                live_reqs.append(res.requests.assign(policy=pol, repeat=r))
                if on_run is not None:
                    on_run(pol, r, s)
        live_runs = pd.DataFrame(runs)

        tasks = [make_task(sim_sc, p, sim_sc.seed, key=p, keep=True) for p in policies]
        outcomes = run_all(tasks)
        sim_summary, sim_reqs = {}, []
        for p in policies:
            o = outcomes[p]
            if o.error is not None:
                raise o.error
            sim_summary[p] = o.summary
            sim_reqs.append(o.result.requests.assign(policy=p))
    finally:
        if tmp is not None:
            tmp.cleanup()

    base_live = float(np.median(live_runs.loc[live_runs["policy"] == "baseline", "makespan_s"]))
    base_sim = sim_summary["baseline"]["makespan_s"]
    rows = []
    for p in policies:
        lr = live_runs[live_runs["policy"] == p]
        live, spread, sim, err = {}, {}, {}, {}
        for m in METRICS:
            live[m], spread[m] = _stats(lr[m].to_numpy(dtype=float))
            sim[m] = float(sim_summary[p][m])
            err[m] = (sim[m] - live[m]) / live[m] if live[m] else float("nan")
        rows.append(PolicyValidation(p, live, spread, sim, err, base_live / live["makespan_s"], base_sim / sim["makespan_s"]))
    return ValidationResult(
        scenario=sim_sc,
        servers=[s.url for s in backend.servers],
        repeats=repeats,
        policies=rows,
        pairs=_pairs(rows, live_runs),
        live_runs=live_runs,
        live_requests=pd.concat(live_reqs, ignore_index=True),
        sim_requests=pd.concat(sim_reqs, ignore_index=True),
        profile=profile_info,
    )


def plot_finish_cdfs(result: ValidationResult):
    """Live (every repeat, thin) vs simulated (thick, dashed) finish-time CDFs per policy."""
    from seersim.report import _pyplot

    plt = _pyplot()
    n = len(result.policies)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), sharey=True, squeeze=False)
    for ax, pv in zip(axes[0], result.policies):
        live = result.live_requests[result.live_requests["policy"] == pv.policy]
        for r, req in live.groupby("repeat"):
            t = np.sort(req["finish_s"].dropna().to_numpy())
            ax.plot(t, np.arange(1, len(t) + 1) / len(t), color="tab:blue", lw=0.8, alpha=0.6,
                    label="live (each repeat)" if r == 0 else None)
        sim = result.sim_requests[result.sim_requests["policy"] == pv.policy]
        t = np.sort(sim["finish_s"].dropna().to_numpy())
        ax.plot(t, np.arange(1, len(t) + 1) / len(t), color="tab:red", lw=2, ls="--", label="simulated")
        ax.set_title(f"{pv.policy}: error {pv.error['makespan_s']:+.1%}")
        ax.set_xlabel("finish time (s)")
        ax.axhline(0.9, color="grey", lw=0.5, ls=":")
    axes[0][0].set_ylabel("fraction of requests finished")
    axes[0][0].legend(loc="lower right")
    fig.suptitle(f"{result.scenario.name}: live vs simulated ({result.repeats} live repeats, {len(result.servers)} servers)")
    fig.tight_layout()
    return fig


def write_validation(out: Path, result: ValidationResult) -> list[Path]:
    """validation.json, the live runs and request records, the simulated records, the CDF plot."""
    from seersim.report import save_figure, write_frame, write_json

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "validation.json"]
    write_json(paths[0], result.to_json())
    paths.append(write_frame(out / "live_runs", result.live_runs))
    paths.append(write_frame(out / "live_requests", result.live_requests))
    paths.append(write_frame(out / "sim_requests", result.sim_requests))
    save_figure(plot_finish_cdfs(result), out / "finish_cdf.png")
    paths.append(out / "finish_cdf.png")
    return paths
