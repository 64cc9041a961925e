"""Exactness bugs found by an independent audit (issue 13), each reproduced exactly as
reported: fast-forward and step-by-step must agree, records must be complete, and an
impossible or broken run must say why."""

from __future__ import annotations

import numpy as np
import pytest

import seersim
from conftest import assert_frames_equivalent, load_small


def _both(policy: str, **overrides):
    sc = load_small(**overrides)
    return seersim.simulate(sc, policy=policy), seersim.simulate(sc, policy=policy, **{"engine.mode": "step_by_step"})


def _assert_same_records(ff, sbs) -> None:
    for attr in ("requests", "instances", "timeline"):
        assert_frames_equivalent(getattr(ff, attr), getattr(sbs, attr))


def test_partial_rollout_abort_counts_its_iterations():
    """Instance.abort applied the iterations an interrupted stretch completed without
    adding them to busy_s / iterations (was 2,582 vs 2,617 iterations)."""
    ff, sbs = _both("partial_rollout", **{"workload.prompts": 8, "workload.max_tokens": 2048, "workload.output_tokens.mean": 800})
    assert ff.summary["iterations"] == sbs.summary["iterations"]
    for key in ("gpu_utilization", "idle_gpu_s"):
        assert ff.summary[key] == pytest.approx(sbs.summary[key], rel=1e-9)
    _assert_same_records(ff, sbs)


ONE_TOKEN_LAST_PREFILL = {
    "cluster.instances": 1,
    "engine.max_num_seqs": 1,
    "engine.max_num_batched_tokens": 9,
    "workload.prompts": 1,
    "workload.group_size": 1,
    "workload.input_tokens": {"dist": "constant", "mean": 10},
    "workload.output_tokens": {"dist": "constant", "mean": 5},
}


def test_first_token_recorded_when_the_last_prefill_piece_is_one_token():
    """Input 10 with a 9-token budget: iteration 1 prefills 9 tokens, iteration 2 the
    last one (a decode-shaped step) and emits the first token (was NaN)."""
    ff, sbs = _both("baseline", **ONE_TOKEN_LAST_PREFILL)
    for res in (ff, sbs):
        req = res.requests.iloc[0]
        assert not np.isnan(req["first_token_s"])
        assert req["dispatch_s"] < req["first_token_s"] < req["finish_s"]
    assert ff.summary["iterations"] == 1 + 5  # two prefill pieces, then 4 decodes
    _assert_same_records(ff, sbs)


# divided rollout, 7-token chunks, the KV pool, seed 44: chunks ending at one instant on
# two instances reached the policy in a different order in each mode (simpy orders
# same-time events by creation), so 10 of 16 requests were placed differently.
TINY_CHUNKS_POOL = {
    "cluster.instances": 2,
    "engine.max_num_seqs": 16,
    "engine.max_num_batched_tokens": 144,
    "engine.block_size_tokens": 32,
    "engine.kv_capacity_tokens": 842,
    "workload.prompts": 16,
    "workload.group_size": 1,
    "workload.max_tokens": 500,
    "workload.input_tokens": {"dist": "constant", "mean": 40},
    "workload.output_tokens": {"dist": "uniform", "mean": 250, "intra_group_corr": 0.77},
    "policy.chunk_tokens": 7,
    "policy.imbalance_threshold": 0,
    "policy.migrate_margin_tokens": 16,
    "kv_pool.enabled": True,
    "policy.anti_starvation_every": 2,
    "gpu": "h200",
    "seed": 44,
}


def test_divided_tiny_chunks_with_kv_pool_seed_44():
    ff, sbs = _both("divided", **TINY_CHUNKS_POOL)
    assert ff.summary["pulled_bytes"] > 0 and ff.summary["migrations"] > 0
    _assert_same_records(ff, sbs)


# One instance whose KV holds exactly prompt + max_tokens (48 + 512 = 560 tokens).
FULL_CONTEXT = {
    "cluster.instances": 1,
    "workload.prompts": 2,
    "workload.group_size": 2,
    "workload.max_tokens": 512,
    "workload.input_tokens": {"dist": "constant", "mean": 48},
    "workload.output_tokens": {"dist": "constant", "mean": 512},
    "engine.kv_capacity_tokens": 560,
    "engine.speculation.mode": "fixed",
    "engine.speculation.draft_tokens": 8,
}


def test_draft_slots_are_capped_by_the_tokens_a_chunk_has_left():
    """A lone sequence one token from its limit no longer needs 8 draft slots beyond
    its context (the run died: "request 0 needs 553 tokens of KV but the instance
    holds only 560"); both modes agree."""
    ff, sbs = _both("baseline", **FULL_CONTEXT)
    assert (ff.requests["generated_tokens"] == 512).all()
    _assert_same_records(ff, sbs)


@pytest.mark.parametrize("mode, paths", [("fixed", 2), ("grouped_adaptive", 4)])
def test_speculative_lookahead_is_checked_up_front(mode, paths):
    """Multi-path drafts need (paths − 1)·γ slots beyond the context: a clear SpecError
    before the run, naming the fields, never a failure mid-run."""
    sc = load_small(**{**FULL_CONTEXT, "engine.speculation.mode": mode, "engine.speculation.paths": paths})
    with pytest.raises(seersim.SpecError, match=r"engine\.speculation.*draft slots.*holds only 560"):
        seersim.simulate(sc, policy="baseline")


def test_engine_errors_surface_as_themselves(monkeypatch):
    """Only a stalled event loop is "the policy stopped dispatching"; a bug in the
    engine propagates with its own type and message."""
    from seersim.engine.instance import Instance

    def broken(self):
        raise RuntimeError("engine bug")

    monkeypatch.setattr(Instance, "_plan", broken)
    with pytest.raises(RuntimeError, match="engine bug"):
        seersim.simulate(load_small(**{"workload.prompts": 2}), policy="baseline")


def test_a_policy_that_stops_dispatching_is_named():
    from seersim.api import simulate_step
    from seersim.policies import Dispatch
    from seersim.policies.base import Policy
    from seersim.workload import build_workload

    class OnlyFirst(Policy):
        name = "only_first"

        def decide(self, view):
            return [Dispatch(0, 0, 10)] if view.generated_tokens[0] == 0 and view.in_flight[0] == 0 else []

    sc = load_small(**{"workload.prompts": 1, "workload.group_size": 2})
    wl = build_workload(sc, np.random.default_rng(0))
    with pytest.raises(seersim.SimulationError, match="only_first stopped dispatching with 2 request"):
        simulate_step(sc, wl, OnlyFirst(sc.policy))
