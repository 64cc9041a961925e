"""`seersim validate`: how well does the simulator predict live vLLM servers?

One scenario runs live (`backends/vllm.py`) and in the simulator on identical work
(the same seeded requests, output lengths forced live). The simulator is calibrated
from *separate* profiling runs of the same servers (never from the validation runs):
`profile/vllm.py` → `calibrate/costfit.fit_iteration` → a scenario `cost: {model:
calibrated, file: ...}`; its engine takes the servers' block size and KV capacity.
Live repeats are interleaved across policies (repeat r runs every policy, in an order
rotated by r), and one pass of the profiling grid runs before each repeat, so slow
drifts of a shared machine hit every policy and the calibration alike; the fit takes
per point the median over the passes (`median_of_passes`). Repeat r runs instance i on
server (i + r) mod n, so a server slower than the others (its core busier with other
work) does not always host the same instance, as the simulator prices all alike.

Given the servers' per-step logs (`logs`), profiling reads real engine steps from
them, and each live run also gets its engine totals per server (steps, prefill and
recomputed tokens, busy time: `profile/steplog.step_summary`), reported beside the
simulator's per-instance records. With a `work_dir`, every finished live run is
written at once (`live_runs-partial.*`, `live_requests-partial.*`, replaced
atomically): an interrupted validation keeps what it measured.

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
    live_steps: pd.DataFrame = field(default_factory=pd.DataFrame)  # per live run and server: logged engine totals
    sim_instances: pd.DataFrame = field(default_factory=pd.DataFrame)  # per simulated policy and instance

    def engine_comparison(self) -> list[dict]:
        """Per policy, live (median over repeats of the sum over servers) vs simulated
        engine totals: what explains a makespan error (more steps, more recomputation,
        dearer steps)."""
        if self.live_steps.empty or self.sim_instances.empty:
            return []
        per_run = self.live_steps.groupby(["policy", "repeat"]).agg(
            steps=("steps", "sum"), prefill_tokens=("prefill_tokens", "sum"),
            recomputed_tokens=("recomputed_tokens", "sum"), busy_s=("busy_s", "sum"),
        )
        out = []
        for p in self.policies:
            live = per_run.loc[p.policy].median() if p.policy in per_run.index.get_level_values(0) else None
            sim = self.sim_instances[self.sim_instances["policy"] == p.policy]
            if live is None or sim.empty:
                continue
            out.append({
                "policy": p.policy,
                "live_steps": float(live["steps"]),
                "sim_steps": int(sim["iterations"].sum()),
                "live_prefill_tokens": float(live["prefill_tokens"]),
                "live_recomputed_tokens": float(live["recomputed_tokens"]),
                "sim_prefill_tokens": int(sim["prefill_tokens"].sum()),
                "sim_preemptions": int(sim["preemptions"].sum()),
                "live_mean_step_s": float(live["busy_s"] / live["steps"]) if live["steps"] else float("nan"),
                "sim_mean_step_s": float(sim["busy_s"].sum() / sim["iterations"].sum()) if sim["iterations"].sum() else float("nan"),
            })
        return out

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
            "engine": self.engine_comparison(),
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


def calibrate_from_profile(rows: pd.DataFrame, meta: dict, folder: Path, seed: int = 0) -> tuple[Path, dict]:
    """Write the profiling table and fit the iteration calibration the simulator uses."""
    from seersim.calibrate.costfit import fit_iteration
    from seersim.calibrate.tables import read_cost_data
    from seersim.cost.calibration import save_calibration
    from seersim.profile.schema import write_profile_table

    table = folder / "profile.csv"
    write_profile_table(rows, table, meta)
    fit = fit_iteration(read_cost_data(table), seed, "seersim validate (profiling runs)")
    cal_path = folder / "calibration.yaml"
    save_calibration(fit.calibration, cal_path)
    info = {
        "table": table.name,
        "calibration": cal_path.name,
        "source": meta.get("source"),
        "rows": int(len(rows)),
        "measurements": int(rows["repeats"].sum()),
        "fit_heldout_mape": fit.heldout_mape,
        "fit_train_mape": fit.train_mape,
        "fit": fit.params,
        "profiling_s": meta.get("elapsed_s"),
    }
    return cal_path, info


def median_of_passes(passes: list[pd.DataFrame]) -> pd.DataFrame:
    """The profiling passes as one table: per point, the median over the passes that
    measured it of their times (a load spike on a shared machine during one pass does
    not move the fit, as one slow repeat does not move a live median), the measurements
    summed."""
    d = pd.concat([p for p in passes if not p.empty], ignore_index=True)
    keys = ["op", "num_tokens", "batch_size", "context_tokens", "prefill_tokens", "decode_tokens"]
    extra = {"forward_s": ("forward_s", "median")} if "forward_s" in d.columns else {}
    return d.groupby(keys, sort=True).agg(
        time_s=("time_s", "median"), time_s_std=("time_s_std", "median"), repeats=("repeats", "sum"), **extra
    ).reset_index()


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
    logs: list[Path] | None = None,
) -> ValidationResult:
    """Run every policy live `repeats` times (interleaved, a profiling pass before each
    repeat), calibrate on the profiling passes, simulate each policy once on the same
    requests, and compare. `work_dir` keeps the profiling table, the calibration and
    each live run as it finishes (a temporary folder when None); `logs`: the servers'
    per-step logs, one per URL."""
    import dataclasses
    import tempfile

    from seersim.backends.vllm import VLLMBackend, run_live
    from seersim.io import write_frame
    from seersim.profile.steplog import read_step_log, step_summary
    from seersim.profile.vllm import ProfileGrid, profile_vllm, settle_logs
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
    kv_tokens = kv_tokens.pop()
    logs = [Path(p) for p in logs] if logs else None
    if logs is not None and len(logs) != len(backend.servers):
        raise ScenarioError(f"--server-logs: give one log per server URL ({len(backend.servers)} URLs, {len(logs)} logs)")
    # one grid pass per repeat: together as many measurements as one run of `grid`
    grid = grid or ProfileGrid()
    grid_pass = dataclasses.replace(grid, repeats=max(1, -(-grid.repeats // repeats)))
    try:
        slices, meta, profiling_s = [], {}, 0.0
        runs, live_reqs, live_steps = [], [], []
        backends = {0: backend}
        for r in range(repeats):
            rows, meta = profile_vllm(urls, grid_pass, seed=scenario.seed + r, gpu=scenario.gpu.name,
                                      model=scenario.model.name, logs=logs)
            slices.append(rows)
            write_frame(work_dir / f"profile-pass-{r}", rows)
            profiling_s += float(meta.get("elapsed_s") or 0.0)
            order = policies[r % len(policies):] + policies[: r % len(policies)]
            # instance i runs on server (i + r) mod n: a server slower than the others
            # (its core more loaded by other work) does not always host the same instance
            shift = r % len(urls)
            rotated = backends.setdefault(shift, VLLMBackend(urls[shift:] + urls[:shift], scenario.engine.max_num_seqs))
            for k, pol in enumerate(order):
                offsets = [p.stat().st_size for p in logs] if logs else []
                res = run_live(scenario, rotated, policy=pol)
                s = res.summary
                runs.append({"policy": pol, "repeat": r, "order": k, **s})
                live_reqs.append(res.requests.assign(policy=pol, repeat=r))
                if logs:
                    settle_logs(logs)
                    for server, (p, off) in enumerate(zip(logs, offsets)):
                        steps = read_step_log(p, off)
                        live_steps.append({"policy": pol, "repeat": r, "server": server,
                                           "instance": (server - shift) % len(urls),
                                           **step_summary(steps, backend.block_size, kv_tokens)})
                if tmp is None:  # keep what is measured so far
                    write_frame(work_dir / "live_runs-partial", pd.DataFrame(runs))
                    write_frame(work_dir / "live_requests-partial", pd.concat(live_reqs, ignore_index=True))
                    if live_steps:
                        write_frame(work_dir / "live_steps-partial", pd.DataFrame(live_steps))
                if on_run is not None:
                    on_run(pol, r, s)
        live_runs = pd.DataFrame(runs)
        meta = {**meta, "elapsed_s": round(profiling_s, 1), "passes": repeats, "grid": {**meta["grid"], "repeats": grid_pass.repeats}}
        cal_path, profile_info = calibrate_from_profile(median_of_passes(slices), meta, work_dir, seed=scenario.seed)
        sim_sc = calibrated_scenario(scenario, cal_path, backend.block_size, kv_tokens)

        tasks = [make_task(sim_sc, p, sim_sc.seed, key=p, keep=True) for p in policies]
        outcomes = run_all(tasks)
        sim_summary, sim_reqs, sim_inst = {}, [], []
        for p in policies:
            o = outcomes[p]
            if o.error is not None:
                raise o.error
            sim_summary[p] = o.summary
            sim_reqs.append(o.result.requests.assign(policy=p))
            sim_inst.append(o.result.instances.assign(policy=p))
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
        live_steps=pd.DataFrame(live_steps),
        sim_instances=pd.concat(sim_inst, ignore_index=True),
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
    paths.append(write_frame(out / "sim_instances", result.sim_instances))
    if not result.live_steps.empty:
        paths.append(write_frame(out / "live_steps", result.live_steps))
    save_figure(plot_finish_cdfs(result), out / "finish_cdf.png")
    paths.append(out / "finish_cdf.png")
    for partial in out.glob("*-partial.*"):  # superseded by the complete records
        partial.unlink()
    return paths
