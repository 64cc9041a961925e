"""The parts of live validation that need no server: ranking with ties, the report's
keys, metrics parsing, prompt ids, the profiling grid's feasibility."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from seersim.backends.vllm import PROMPT_TOKEN_RANGE, ServerInfo, parse_metrics, prompt_ids
from seersim.profile.vllm import feasible
from seersim.studies.validate import PolicyValidation, ValidationResult, _pairs, _stats


def _pv(policy: str, live_s: float, sim_s: float) -> PolicyValidation:
    m = {"makespan_s": live_s, "throughput_tokens_per_s": 1.0, "tail_s": 1.0}
    s = {"makespan_s": sim_s, "throughput_tokens_per_s": 1.0, "tail_s": 1.0}
    err = {k: (s[k] - m[k]) / m[k] for k in m}
    return PolicyValidation(policy, m, {k: 0.0 for k in m}, s, err, 1.0, 1.0)


def _runs(spec: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"policy": p, "makespan_s": v} for p, vals in spec.items() for v in vals])


def test_differences_within_the_live_spread_are_ties():
    runs = _runs({"baseline": [100, 110, 120], "divided": [90, 95, 105], "context_aware": [60, 62, 64]})
    pols = [_pv("baseline", 110, 100), _pv("divided", 95, 101), _pv("context_aware", 62, 70)]
    pairs = {tuple(p["pair"]): p for p in _pairs(pols, runs)}
    # 110 vs 95: 15 s apart, spread 20 s -> a tie, although the simulator orders them the other way
    assert pairs[("baseline", "divided")]["live"] == "tie" and pairs[("baseline", "divided")]["agrees"]
    assert pairs[("baseline", "context_aware")]["live"] == "context_aware<baseline"
    assert pairs[("divided", "context_aware")]["agrees"]
    res = ValidationResult(None, ["u"], 3, pols, list(pairs.values()), runs, pd.DataFrame(), pd.DataFrame())
    assert res.ranking_agrees


def test_a_ranked_pair_the_simulator_orders_the_other_way_disagrees():
    runs = _runs({"baseline": [100, 101], "divided": [80, 81]})
    pols = [_pv("baseline", 100.5, 90), _pv("divided", 80.5, 95)]
    (pair,) = _pairs(pols, runs)
    assert pair["live"] == "divided<baseline" and pair["sim"] == "baseline<divided" and not pair["agrees"]
    res = ValidationResult(None, ["u"], 2, pols, [pair], runs, pd.DataFrame(), pd.DataFrame())
    assert not res.ranking_agrees


def test_stats_are_median_and_relative_range():
    med, spread = _stats(np.array([10.0, 12.0, 11.0, 9.0, 13.0]))
    assert med == 11.0 and spread == pytest.approx(4.0 / 11.0)


def test_parse_metrics_sums_labelled_series_and_skips_comments():
    text = (
        "# HELP vllm:num_requests_running x\n"
        'vllm:num_requests_running{engine="0",model_name="m"} 3.0\n'
        'vllm:num_requests_waiting_by_reason{reason="capacity"} 2.0\n'
        'vllm:num_requests_waiting_by_reason{reason="deferred"} 1.0\n'
        "process_open_fds 12\n"
    )
    m = parse_metrics(text)
    assert m["vllm:num_requests_running"] == 3.0
    assert m["vllm:num_requests_waiting_by_reason"] == 3.0
    assert m["process_open_fds"] == 12.0


def test_prompt_ids_are_shared_by_siblings_and_seeded():
    a, b = prompt_ids(0, 3, 50), prompt_ids(0, 3, 50)
    assert a == b and len(a) == 50  # siblings (same group) share the prompt: prefix caching
    assert prompt_ids(0, 4, 50) != a and prompt_ids(1, 3, 50) != a
    assert prompt_ids(0, 3, 50, run=1) != a  # a later run misses the cache the earlier one left
    assert min(a) >= PROMPT_TOKEN_RANGE[0] and max(a) < PROMPT_TOKEN_RANGE[1]


def test_profile_grid_skips_points_the_kv_cache_cannot_hold():
    info = ServerInfo("u", "tiny", 4096, 128, 36)  # 4,608 tokens
    assert feasible(info, 16, 256)  # 16 x 2 blocks
    assert not feasible(info, 16, 384)  # 16 x 3 blocks > 36
    assert not feasible(info, 1, 4097)  # past max_model_len


def test_a_loaded_profiling_pass_does_not_move_the_pooled_table():
    from seersim.studies.validate import median_of_passes

    def pass_(t: float, extra: bool = False) -> pd.DataFrame:
        rows = [("iteration", 8, 8, 2000, 0, 8, t, 0.001, 40)]
        if extra:
            rows.append(("iteration", 2048, 1, 2048, 2048, 0, 0.2, 0.0, 1))
        return pd.DataFrame(rows, columns=["op", "num_tokens", "batch_size", "context_tokens", "prefill_tokens",
                                           "decode_tokens", "time_s", "time_s_std", "repeats"])

    pooled = median_of_passes([pass_(0.010), pass_(0.030, extra=True), pass_(0.011)])  # the second pass ran loaded
    decode = pooled[pooled["decode_tokens"] == 8].iloc[0]
    assert decode["time_s"] == pytest.approx(0.011) and decode["repeats"] == 120
    assert len(pooled) == 2  # a point one pass measured keeps that pass's time
    assert pooled.loc[pooled["prefill_tokens"] == 2048, "time_s"].iloc[0] == pytest.approx(0.2)
