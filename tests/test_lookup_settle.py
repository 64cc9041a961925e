"""A policy's cached-prefix lookup mid-stretch settles the stretch's KV allocations only
where they could evict a block of the looked-up entries (`Instance._settle_for_lookup`):
its answer must be the one of settling first, also when the skipped allocations evict
other cached blocks."""

from __future__ import annotations

import pytest

import seersim
from conftest import load_small
from seersim.engine.instance import Instance

# Tight KV with prefix caching and chunks: stretches evict cached prefixes while the
# policy looks prefixes up (the fast-forward tests' PARTIAL_EVICTION, with DP ranks too).
TIGHT = {
    "workload.prompts": 12,
    "workload.max_tokens": 4096,
    "workload.output_tokens.mean": 1500,
    "engine.kv_capacity_tokens": 20000,
    "policy.chunk_tokens": 512,
    "policy.imbalance_threshold": 1,
}


def _cached_blocks(inst: Instance) -> int:
    return sum(kv.cached_blocks for kv in inst.kvs)


@pytest.mark.parametrize("dp", [1, 2])
def test_lookup_without_settling_is_the_settled_answer(monkeypatch, dp):
    lookup = Instance.cached_prefix_blocks
    seen = {"lookups": 0, "skipped_evicting": 0}

    def checking(self, request_id):
        got = lookup(self, request_id)
        cached = _cached_blocks(self)
        self.settle_kv()  # settling early is exact too (it is what step by step shows)
        seen["skipped_evicting"] += _cached_blocks(self) < cached
        assert lookup(self, request_id) == got, request_id
        seen["lookups"] += 1
        return got

    monkeypatch.setattr(Instance, "cached_prefix_blocks", checking)
    overrides = {**TIGHT, "cluster.instances": 2 * dp, "cluster.parallelism.dp": dp}
    seersim.simulate(load_small(**overrides), policy="divided")
    assert seen["lookups"] > 0
    assert seen["skipped_evicting"] > 0, "scenario must skip a settle whose allocations evict other entries"
