"""A policy skips trying again the request that found no room at the end of its last
`decide` when only chunks that cannot give it room returned since (`BlockedHead`): every
skipped try must be one that fails."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import load_small
from seersim.driver import Driver
from seersim.engine import SimBackend
from seersim.policies import Loads, chunk_limit, make_policy, place_chunk
from seersim.policies.base import BlockedHead
from seersim.workload import build_workload


@pytest.mark.parametrize("dp", [1, 4])
@pytest.mark.parametrize("policy_name", ["divided", "context_aware"])
def test_a_skipped_try_is_one_that_fails(policy_name, dp, monkeypatch):
    sc = load_small(**{
        "policy.name": policy_name, "cluster.parallelism.dp": dp, "cluster.instances": 2, "engine.max_num_seqs": 64,
        "workload.prompts": 24, "engine.kv_capacity_tokens": 60000, "policy.chunk_tokens": 512,
    })
    policy = make_policy(sc.policy)
    seen = {"skipped": 0, "tried": 0}
    skip = BlockedHead.skip

    def checking_skip(self, view, request_id):
        skipped = skip(self, view, request_id)
        seen["skipped" if skipped else "tried"] += 1
        if skipped:  # (a try that fails books nothing: the view is left as it was)
            max_new = chunk_limit(view, request_id, sc.policy.chunk_tokens)
            assert place_chunk(view, Loads(view, sc.policy), request_id, max_new, sc.policy) is None
        return skipped

    monkeypatch.setattr(BlockedHead, "skip", checking_skip)
    wl = build_workload(sc, np.random.default_rng(sc.seed))
    Driver(SimBackend(sc), policy, wl).run()
    assert seen["skipped"] and seen["tried"], f"the test checks little ({seen})"
