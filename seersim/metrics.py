"""Step metrics from raw records (DESIGN §6 definitions).

- makespan_s: time the last request finishes (the step's rollout time);
- throughput_tokens_per_s: output tokens generated in the step / makespan;
- tail_s: makespan minus the time by which 90% of requests had finished;
- idle_gpu_s: GPU-seconds instances spent with nothing to run before the makespan.
"""

from __future__ import annotations

import math

import numpy as np

from seersim.config import Scenario
from seersim.driver import StepRecords

TAIL_FRACTION = 0.9


def finish_quantile_s(finish_s: np.ndarray, fraction: float) -> float:
    """Time by which `fraction` of the requests finished in the step had finished
    (all requests, unless a partial rollout carried some over)."""
    done = np.sort(finish_s[~np.isnan(finish_s)])
    if not len(done):
        return float("nan")
    k = max(1, math.ceil(fraction * len(done)))
    return float(done[k - 1])


def summarize(out: StepRecords, scenario: Scenario, policy: str, seed: int) -> dict:
    req, inst = out.requests, out.instances
    finish = req["finish_s"].to_numpy()
    makespan = float(np.nanmax(finish)) if (~np.isnan(finish)).any() else 0.0
    t90 = finish_quantile_s(finish, TAIL_FRACTION)
    tokens = int(req["step_tokens"].sum())  # generated in this step (carried tokens count where made)
    gpus = scenario.gpus_total
    busy_gpu_s = float((inst["busy_s"] * inst["gpus"]).sum())
    gpu_s = makespan * gpus
    rl_step_s = makespan + scenario.training_s
    gpu_hours = rl_step_s * gpus / 3600.0
    summary = {
        "scenario": scenario.name,
        "policy": policy,
        "seed": seed,
        "requests": int(len(req)),
        "finished_requests": int((~np.isnan(finish)).sum()),
        "groups": int(req["group_id"].nunique()),
        "output_tokens": tokens,
        "makespan_s": makespan,
        "throughput_tokens_per_s": tokens / makespan if makespan > 0 else 0.0,
        "p90_finish_s": t90,
        "tail_s": makespan - t90,
        "tail_fraction": (makespan - t90) / makespan if makespan > 0 else 0.0,
        "mean_finish_s": float(np.nanmean(finish)) if len(finish) else 0.0,
        "preemptions": int(req["preemptions"].sum()),
        "migrations": int(req["migrations"].sum()),
        "chunks": int(req["chunks"].sum()),
        "pulled_bytes": float(req["pulled_bytes"].sum()),
        "prefill_tokens": int(inst["prefill_tokens"].sum()),
        "iterations": int(inst["iterations"].sum()),
        # tokens a decoding sequence emits per iteration (1 without speculation; τ with it)
        "mean_accepted_tokens": float(inst["decode_emitted_tokens"].sum() / max(1, inst["decode_seq_steps"].sum())),
        "instances": int(len(inst)),
        "gpus": gpus,
        "kv_capacity_tokens_per_instance": out.kv_blocks_per_instance * out.block_size,
        "gpu_utilization": busy_gpu_s / gpu_s if gpu_s > 0 else 0.0,
        "idle_gpu_s": gpu_s - busy_gpu_s,
        "rl_step_s": rl_step_s,
        "gpu_hours": gpu_hours,
        "cost_usd": gpu_hours * scenario.gpu.gpu_hour_usd,
    }
    summary.update(out.pool)
    return summary
