"""policy.kv_reservation: what a chunked policy reserves on an instance per in-flight chunk."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import seersim
from conftest import load_small
from seersim.policies.base import chunk_blocks


def _view(mean):
    return SimpleNamespace(
        input_tokens=np.array([60]), generated_tokens=np.array([40]), block_size=16, mean_chunk_tokens=mean
    )


@pytest.mark.parametrize(
    "rule,mean,blocks",
    [
        ("chunk_limit", 200.3, -(-1100 // 16)),  # context 100 + the whole chunk of 1000
        ("expected_growth", None, -(-1100 // 16)),  # no chunk returned yet: the whole chunk
        ("expected_growth", 200.3, -(-(100 + 201) // 16)),  # + the mean growth so far
        ("expected_growth", 5000.0, -(-1100 // 16)),  # never beyond the chunk
        ("none", 200.3, -(-100 // 16)),  # the context only
    ],
)
def test_chunk_blocks_per_rule(rule, mean, blocks):
    assert chunk_blocks(_view(mean), 0, 1000, rule) == blocks


def test_reserving_less_fills_more_kv_and_conserves_tokens():
    runs = {}
    for rule in ("chunk_limit", "expected_growth", "none"):
        sc = load_small(**{"policy.kv_reservation": rule})  # a small KV: the reservation binds
        r = seersim.simulate(sc, policy="divided")
        assert (r.requests["generated_tokens"] == r.requests["output_tokens"]).all()
        runs[rule] = float(r.timeline["kv_used_blocks"].mean())
    assert runs["none"] >= runs["expected_growth"] >= runs["chunk_limit"]
    assert runs["none"] > runs["chunk_limit"], runs


def test_reservations_count_a_shared_prompt_once_per_instance_and_group():
    """What the driver reserves equals, at every scheduling pass, each in-flight chunk's
    blocks beyond its group's shared prompt plus that prompt once per instance holding
    the group (prefix caching shares it), and it returns to zero."""
    from seersim.driver import Driver
    from seersim.engine import SimBackend
    from seersim.policies import make_policy
    from seersim.workload import build_workload

    sc = load_small(**{"policy.name": "divided", "workload.prompts": 12})
    policy = make_policy(sc.policy)
    in_flight: dict[int, tuple[int, int]] = {}  # request -> (instance, blocks beyond the shared prompt)
    checked = []
    decide, on_chunk_done = policy.decide, policy.on_chunk_done

    def checking_decide(view):
        expected = np.zeros(view.num_instances, np.int64)
        held = set()
        for rid, (iid, own) in in_flight.items():
            expected[iid] += own
            held.add((iid, int(view.group_id[rid])))
        for iid, group in held:
            expected[iid] += view.shared_prompt_blocks(group)
        np.testing.assert_array_equal(view.rank_reserved_blocks.sum(axis=1), expected)  # one rank per instance
        checked.append(len(held) < len(in_flight))  # some instance holds siblings at once
        out = decide(view)
        for d in out:
            group = int(view.group_id[d.request_id])
            own = chunk_blocks(view, d.request_id, d.max_new_tokens, "chunk_limit") - view.shared_prompt_blocks(group)
            in_flight[d.request_id] = (d.instance_id, own)
        return out

    def tracking_chunk_done(view, request_id, finished):
        del in_flight[request_id]
        on_chunk_done(view, request_id, finished)

    policy.decide, policy.on_chunk_done = checking_decide, tracking_chunk_done
    wl = build_workload(sc, np.random.default_rng(0))
    driver = Driver(SimBackend(sc), policy, wl)
    driver.run()
    assert any(checked), "siblings never shared an instance: the test checks nothing"
    assert int(driver.shared_prompt_blocks(0)) == int(wl.requests[0].input_tokens) // sc.engine.block_size_tokens
    np.testing.assert_array_equal(driver.rank_reserved_blocks, 0)


def test_without_prefix_caching_nothing_is_shared():
    """Without prefix caching every request holds its own prompt: nothing is shared, and
    reserving each chunk at its limit still never preempts."""
    from seersim.driver import Driver
    from seersim.engine import SimBackend
    from seersim.policies import make_policy
    from seersim.workload import build_workload

    sc = load_small(**{"policy.name": "divided", "workload.prompts": 16, "engine.prefix_caching": False})
    wl = build_workload(sc, np.random.default_rng(0))
    driver = Driver(SimBackend(sc), make_policy(sc.policy), wl, prefix_caching=False)
    assert driver.shared_prompt_blocks(0) == 0
    assert seersim.simulate(sc).summary["preemptions"] == 0
