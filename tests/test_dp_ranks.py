"""DP attention ranks (issue 11 fix 1): each sequence lives on one rank, with its own KV
reads, token budget and sequence slots; the iteration waits for the slowest rank."""

from __future__ import annotations

import numpy as np
import pytest

import seersim
from conftest import REPO_ROOT, load_small
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


def _four_requests(tmp_path, outputs: tuple[int, ...], dp: int, **over) -> seersim.Scenario:
    """One instance of `dp` ranks (48 KV blocks of 16 tokens each) serving one request
    per group with these output lengths (32-token prompts)."""
    trace = tmp_path / "four.csv"
    trace.write_text("group_id,input_tokens,output_tokens\n" + "".join(f"{g},32,{o}\n" for g, o in enumerate(outputs)))
    return seersim.load_scenario(
        REPO_ROOT / "scenarios" / "small.yaml",
        **{
            "cluster.instances": 1,
            "cluster.parallelism.dp": dp,
            "engine.max_num_seqs": 4,
            "engine.max_num_batched_tokens": 256,
            "engine.block_size_tokens": 16,
            "engine.kv_capacity_tokens": 2 * 48 * 16,
            "workload": {"kind": "replay", "path": str(trace), "format": "csv", "max_tokens": 600},
            **over,
        },
    )


def test_a_rank_short_of_kv_preempts_its_own_sequence_while_another_rank_has_room(tmp_path):
    """Each DP rank is its own engine core with its own KV cache (vLLM): requests 0 and 2
    land on rank 0 (the least KV-loaded rank, ties to the lowest), grow to 37
    blocks each and overflow rank 0's 48 blocks, so rank 0 preempts its later sequence
    while rank 1 (requests 1 and 3, 5 blocks each) has 38 blocks free. A pooled KV of
    96 blocks holds all four (84 blocks) and never preempts."""
    outputs = (560, 40, 560, 40)
    sc = _four_requests(tmp_path, outputs, dp=2)
    ff = seersim.simulate(sc)
    sbs = seersim.simulate(sc, **{"engine.mode": "step_by_step"})
    _assert_equivalent(ff, sbs)
    preempted = ff.requests.set_index("request_id")["preemptions"]
    assert preempted[2] > 0, "rank 0 preempts from the back of its own sequences"
    assert preempted[0] == 0 and preempted[1] == 0 and preempted[3] == 0
    pooled = seersim.simulate(_four_requests(tmp_path, outputs, dp=1))
    assert pooled.summary["preemptions"] == 0, "one pooled cache of the same size has room for all four"


def test_a_prefix_is_reused_only_on_the_rank_that_caches_it(tmp_path):
    """A chunk coming back to the instance joins the rank that caches its earlier
    context (and hits it there); the KV records add up over the ranks."""
    sc = _four_requests(tmp_path, (500, 40, 40, 40), dp=2, **{"policy.name": "divided", "policy.chunk_tokens": 128})
    ff = seersim.simulate(sc)
    sbs = seersim.simulate(sc, **{"engine.mode": "step_by_step"})
    _assert_equivalent(ff, sbs)
    req = ff.requests.set_index("request_id")
    assert req.loc[0, "chunks"] >= 4
    # every later chunk of request 0 hits its own cached context: only its prompt and
    # each chunk's last partial block are ever computed again
    assert ff.summary["prefill_tokens"] < 4 * 32 + req.loc[0, "chunks"] * 16
    assert int(ff.instances["kv_blocks"].iloc[0]) == 2 * 48


def _record_plan_kinds(monkeypatch) -> list[tuple[str, int, bool]]:
    """(kind, steps, preempted) of every plan the instances make."""
    from seersim.engine.instance import Instance

    seen: list[tuple[str, int, bool]] = []
    original = Instance._plan

    def recording(self):
        plan = original(self)
        if plan is not None:
            seen.append((plan.kind, plan.steps, bool(self._preempted.any())))
        return plan

    monkeypatch.setattr(Instance, "_plan", recording)
    return seen


# two instances of two ranks, 6,000 tokens of KV per rank, a budget that cuts prefills;
# the chunked policies admit on current KV use and let the ranks preempt
PER_RANK_PRESSURE = {
    **DP2,
    "engine.kv_capacity_tokens": 12000,
    "engine.max_num_batched_tokens": 512,
    "policy.chunk_tokens": 1024,
    "policy.kv_reservation": "none",
}


@pytest.mark.parametrize("policy", ["baseline", "divided", "context_aware", "seer", "oracle_lpt", "partial_rollout"])
def test_per_rank_preemption_fast_forward_exact(policy):
    ff, sbs = _both(policy, **PER_RANK_PRESSURE)
    _assert_equivalent(ff, sbs)
    assert ff.summary["preemptions"] > 0, "ranks must run short of KV to be meaningful"


def test_prefill_stretches_and_preemption_tails_are_exercised_exactly(monkeypatch):
    """Budget-cut prefills (recomputes after preemption) run as multi-iteration
    "prefill" plans, and preemption iterations head decode stretches; both equal
    step-by-step."""
    seen = _record_plan_kinds(monkeypatch)
    ff, sbs = _both("baseline", **PER_RANK_PRESSURE)
    _assert_equivalent(ff, sbs)
    # (step-by-step plans are one iteration each: these are fast-forward's)
    assert any(kind == "prefill" and steps > 1 for kind, steps, _ in seen)
    assert any(kind == "mixed" and steps > 1 and preempted for kind, steps, preempted in seen)


# the same two instances of two ranks, chunks reserved at their limit
# (policy.kv_reservation: chunk_limit): per-instance reservations let a rank run short
RESERVED_PER_RANK = {**PER_RANK_PRESSURE, "policy.kv_reservation": "chunk_limit"}


@pytest.mark.parametrize("policy", ["divided", "context_aware", "seer"])
def test_chunks_reserved_at_their_limit_never_make_a_rank_preempt(policy):
    """Each rank has its own KV: a chunk is reserved on, and sent to, one rank (its own
    cached context's, else the one with the most unreserved blocks), so its rank never
    preempts. Checked per instance (half the instance's KV free, all of it on the other
    rank) the same chunks made the ranks preempt."""
    ff, sbs = _both(policy, **RESERVED_PER_RANK)
    _assert_equivalent(ff, sbs)
    assert ff.summary["preemptions"] == 0
    assert ff.requests["chunks"].max() > 1, "requests come back in chunks: affinity matters"


def test_the_driver_reserves_each_chunk_on_the_rank_it_runs_on(monkeypatch):
    """The rank the driver reserves a chunk on is the rank the engine runs it on, no
    rank's reservations exceed its KV, and they all return when the chunks do."""
    from seersim.driver import Driver
    from seersim.engine.instance import Instance

    sent, ran, drivers = [], [], []
    original_apply, original_assign = Driver._apply, Instance._assign_arrivals

    def apply(self, d):
        original_apply(self, d)
        drivers.append(self)
        assert (self.rank_reserved_blocks <= self.rank_total_blocks).all()
        sent.append((d.instance_id, d.request_id, int(self._rank[d.request_id])))

    def assign(self):
        arrivals = list(self._arrivals)
        original_assign(self)
        for rid, _, _ in arrivals:
            ran.append((self.id, rid, next(r for r, q in enumerate(self.queues) if any(x == rid for x, _ in q))))

    monkeypatch.setattr(Driver, "_apply", apply)
    monkeypatch.setattr(Instance, "_assign_arrivals", assign)
    seersim.simulate(load_small(**RESERVED_PER_RANK), policy="divided")
    assert sent and sorted(sent) == sorted(ran)
    assert {r for _, _, r in sent} == {0, 1}
    assert not drivers[-1].rank_reserved_blocks.any()


def test_a_kv_pull_landing_mid_stretch_settles_its_rank_exactly():
    """Pulled KV lands on one DP rank while the instance runs a stretch: that rank's
    allocations so far are applied first (`Instance.settle_kv(rank)`), so the landing
    finds the free blocks step-by-step simulation shows."""
    over = {**PER_RANK_PRESSURE, "policy.imbalance_threshold": 0, "policy.migrate_margin_tokens": 0, "seed": 2}
    ff, sbs = _both("divided", **over)
    _assert_equivalent(ff, sbs)
    assert ff.summary["pulled_bytes"] > 0, "chunks must pull KV through the pool to be meaningful"
