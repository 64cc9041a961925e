"""The step's token budget (issue 11 fix 6): vLLM needs max_num_batched_tokens ≥
max_num_seqs only; draft tokens that do not fit a step are cut, exactly in both modes."""

from __future__ import annotations

import numpy as np
import pytest

import seersim
from conftest import load_small
from seersim.errors import ScenarioError
from test_fast_forward import _assert_equivalent, _both

# 256 sequences with a 2,048-token budget (a real vLLM configuration); short prompts and
# long outputs so that ~256 sequences decode at once: 256 x (1 + 8 drafts) > 2,048.
WIDE = {
    "cluster.instances": 1,
    "workload.prompts": 32,
    "workload.max_tokens": 2048,
    "workload.input_tokens.mean": 100,
    "workload.input_tokens.max": 256,
    "workload.output_tokens.mean": 1000,
    "engine.max_num_seqs": 256,
    "engine.max_num_batched_tokens": 2048,
    "engine.kv_capacity_tokens": 400000,
}


def test_budget_only_needs_max_num_seqs():
    sc = load_small(**{"engine.max_num_seqs": 256, "engine.max_num_batched_tokens": 256})
    assert sc.engine.max_num_batched_tokens == 256
    with pytest.raises(ScenarioError, match="max_num_batched_tokens=255 must be >= max_num_seqs=256"):
        load_small(**{"engine.max_num_seqs": 256, "engine.max_num_batched_tokens": 255})


def _count_cut_drafts(monkeypatch) -> dict:
    from seersim.engine.specdec import SpecDecoder

    seen = {"cut": 0, "starved": 0}
    original = SpecDecoder.scheduled_tau_q

    def counting(self, b, new):
        decoding = b.tokens - b.computed == 1
        seen["cut"] += int((decoding & (new - 1 < b.gamma)).sum())
        seen["starved"] += int((decoding & (new == 0)).sum())
        return original(self, b, new)

    monkeypatch.setattr(SpecDecoder, "scheduled_tau_q", counting)
    return seen


@pytest.mark.parametrize(
    "policy,speculation",
    [
        ("baseline", {}),
        ("baseline", {"engine.speculation.mode": "fixed", "engine.speculation.draft_tokens": 8}),
        ("seer", {"policy.chunk_tokens": 512}),  # small chunks: KV room for ~256 in flight
    ],
)
def test_256_seqs_with_2048_tokens_fast_forward_exact(monkeypatch, policy, speculation):
    seen = _count_cut_drafts(monkeypatch)
    ff, sbs = _both(policy, **WIDE, **speculation)
    _assert_equivalent(ff, sbs)
    assert ff.summary["output_tokens"] == int(ff.requests["output_tokens"].sum())
    assert int(ff.timeline["running"].max()) > 2048 // 9, "the batch must outgrow the budget's drafts"
    if "engine.speculation.mode" in speculation:
        assert seen["cut"] > 0, "fixed 8-token drafts for >227 decodes must be cut by the budget"
    else:
        assert seen["cut"] == 0, "grouped_adaptive chooses drafts that fit the budget"


def test_cut_drafts_accept_by_the_drafts_verified():
    """A decode whose drafts are cut to d emits by τ(d), not by τ of its full draft length."""
    from seersim.engine.batch import RunningBatch
    from seersim.engine.specdec import Q, SpecDecoder
    from seersim.requests import GroupProgress

    cfg = seersim.load_scenario("scenarios/small.yaml", **{"engine.speculation.mode": "fixed"}).engine.speculation
    spec = SpecDecoder(cfg, GroupProgress(np.zeros(3, np.int64)), cost=None, token_budget=2048)
    spec._tau_q = np.arange(9, dtype=np.int64)[None, :] * Q + Q  # τ(γ) = 1 + γ, recognisable
    b = RunningBatch()
    b.extend([(i, 100, 101, 50, 0, 7, 0, 0, 8, 9 * Q, 8, 0, 100, 0) for i in range(3)])  # decodes with 8 drafts
    got = spec.scheduled_tau_q(b, np.array([9, 4, 0]))
    assert got.tolist() == [9 * Q, 4 * Q, 1 * Q]


def test_adaptive_drafts_fit_the_budget(monkeypatch):
    """grouped_adaptive chooses only drafts the step can verify: with 64 sequences and a
    128-token budget, no decode's drafts are ever cut (without the cap, thousands are)."""
    seen = _count_cut_drafts(monkeypatch)
    ff, sbs = _both(
        "seer",
        **{
            "workload.prompts": 16,
            "workload.max_tokens": 2048,
            "workload.output_tokens.mean": 800,
            "engine.max_num_seqs": 64,
            "engine.max_num_batched_tokens": 128,
            "policy.chunk_tokens": 512,
        },
    )
    _assert_equivalent(ff, sbs)
    assert int(ff.timeline["running"].max()) > 128 // 9, "8-draft decodes of the batch must overflow the budget"
    assert seen["cut"] == 0


def test_rank_order_is_a_stable_sort_of_the_ranks():
    """The batch's cached rank order (int16 radix sort) groups sequences by DP rank in
    admission order, as a stable sort of the rank column, and follows reshapes."""
    from seersim.engine.batch import RunningBatch

    rng = np.random.default_rng(5)
    b = RunningBatch()
    for _ in range(30):
        k = int(rng.integers(1, 200))
        b.extend([(0,) * 11 + (int(r), 0, 0) for r in rng.integers(0, 32, k)])
        assert (b.rank_order(32) == np.argsort(b.rank, kind="stable")).all()
        b.keep(rng.random(len(b)) < 0.7)
        assert (b.rank_order(32) == np.argsort(b.rank, kind="stable")).all()
