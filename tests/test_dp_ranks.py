"""DP attention ranks (issue 11 fix 1): each sequence lives on one rank, with its own KV
reads, token budget and sequence slots; the iteration waits for the slowest rank."""

from __future__ import annotations

import numpy as np
import pytest

import seersim
from conftest import REPO_ROOT
from seersim.cost import build_cost_model
from seersim.engine.dp import DPRanks
from test_fast_forward import SMALL, _assert_equivalent, _both

DP2 = {**SMALL, "cluster.parallelism.dp": 2, "cluster.instances": 2}


def test_a_long_sequence_decoding_alone_reads_its_kv_on_one_gpu():
    """Kimi-K2 is DP32 + EP32: a 98K-token sequence's 6.9 GB of KV sit on its rank's GPU,
    ~2.95 ms at H800 HBM bandwidth x efficiency — not 1/32 of that."""
    sc = seersim.load_scenario(REPO_ROOT / "scenarios" / "kimi-k2.yaml")
    dp = sc.cluster.parallelism.dp
    assert dp == 32
    cost = build_cost_model(sc)
    ranks = DPRanks(cost, dp)

    def alone(context: int) -> float:
        seqs = np.zeros(dp, np.int64)
        seqs[5] = 1
        ctx = np.zeros(dp)
        ctx[5] = context
        return ranks.step_s(seqs, seqs, np.zeros(dp), np.ones(dp), ctx)

    kv_read_s = alone(98_304) - alone(1)
    pooled = cost.step_lines(1, 1, 0)
    pooled_kv_read_s = pooled.at(98_304) - pooled.at(1)
    assert kv_read_s == pytest.approx(dp * pooled_kv_read_s, rel=1e-9)
    assert 2.0e-3 < kv_read_s < 4.5e-3, kv_read_s
    expected = sc.model.kv_bytes_per_token * 98_304 / (sc.gpu.hbm_bandwidth_bytes_per_s * sc.gpu.bandwidth_efficiency)
    assert kv_read_s == pytest.approx(expected, rel=0.35)


def test_the_iteration_waits_for_the_slowest_rank():
    sc = seersim.load_scenario(REPO_ROOT / "scenarios" / "kimi-k2.yaml")
    ranks = DPRanks(build_cost_model(sc), 32)
    seqs = np.full(32, 4)
    ctx = np.full(32, 4 * 20_000.0)
    balanced = ranks.step_s(seqs, seqs, np.zeros(32), np.ones(32), ctx)
    ctx_skewed = ctx.copy()
    ctx_skewed[0] *= 3
    ctx_skewed[1:] *= (32 - 3) / 31  # the same total context, one rank holding 3x
    assert ranks.step_s(seqs, seqs, np.zeros(32), np.ones(32), ctx_skewed) > balanced * 1.1


def test_dp1_prices_like_the_cost_model():
    sc = seersim.load_scenario(REPO_ROOT / "scenarios" / "small.yaml")
    cost = build_cost_model(sc)
    lines, c0, n = DPRanks(cost, 1).lines(
        np.array([7]), np.array([9]), np.array([3]), np.array([1.0]), np.array([1234]), np.array([7])
    )
    assert lines == cost.step_lines(7, 9, 3, 1.0) and (c0, n) == (1234, 7)


def _record_rank_tokens(monkeypatch) -> list[np.ndarray]:
    from seersim.engine.instance import Instance

    seen: list[np.ndarray] = []
    original = Instance._schedule

    def recording(self):
        out = original(self)
        new = out[0]
        if new is not None and self.ranks.dp > 1:
            seen.append(np.bincount(self.batch.rank, weights=new, minlength=self.ranks.dp))
            seen.append(-np.bincount(self.batch.rank, minlength=self.ranks.dp))  # (negated) sequences per rank
        return out

    monkeypatch.setattr(Instance, "_schedule", recording)
    return seen


@pytest.mark.parametrize("policy", ["baseline", "divided", "seer"])
def test_dp_ranks_fast_forward_exact_and_per_rank_limits(monkeypatch, policy):
    over = {**DP2, "engine.max_num_seqs": 32, "engine.max_num_batched_tokens": 1024}
    seen = _record_rank_tokens(monkeypatch)
    ff, sbs = _both(policy, **over)
    _assert_equivalent(ff, sbs)
    tokens = np.array(seen[0::2])
    seqs = -np.array(seen[1::2])
    assert tokens.max() <= 1024 // 2, "each rank keeps to its share of the token budget"
    assert seqs.max() <= 32 // 2, "each rank keeps to its share of max_num_seqs"
    assert (tokens.sum(axis=0) > 0).all(), "both ranks get work"
    assert (tokens.max(axis=1) == 1024 // 2).any(), "the per-rank budget binds"


def test_max_num_seqs_below_dp_is_a_clear_error():
    from seersim.errors import SpecError

    with pytest.raises(SpecError, match="max_num_seqs=1 is per instance"):
        seersim.simulate(seersim.load_scenario(REPO_ROOT / "scenarios" / "small.yaml", **{**DP2, "engine.max_num_seqs": 1}))


def test_decode_stretch_runs_past_a_head_short_of_kv_exactly(monkeypatch):
    """A preempted head whose cached prefix is being evicted but which misses KV even for
    a one-token prefill does not cut decode stretches (kimi-k2 planned 181k one-iteration
    stretches before); fast-forward still equals step-by-step."""
    from seersim.engine.instance import Instance

    short: list[bool] = []
    original = Instance._head_short_of_kv

    def recording(self, rid, group):
        short.append(original(self, rid, group))
        return short[-1]

    monkeypatch.setattr(Instance, "_head_short_of_kv", recording)
    over = {**DP2, "workload.prompts": 8, "engine.kv_capacity_tokens": 11000, "engine.max_num_batched_tokens": 256}
    ff, sbs = _both("baseline", **over)
    _assert_equivalent(ff, sbs)
    assert ff.summary["preemptions"] > 0
    assert any(short), "the scenario reaches a head short of KV"
