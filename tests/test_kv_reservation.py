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
