"""Cost model: the closed-form decode-stretch sums and roofline sanity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from seersim.config import Parallelism
from seersim.cost import RooflineCost, StepLines
from seersim.engine.stretch import HeadStretch, LinearStretch, TabulatedStretch
from seersim.specs import get_gpu, get_model


def direct_sum(lines: StepLines, c0: int, n: int, k: int) -> float:
    return math.fsum(lines.at(c0 + n * j) for j in range(1, k + 1))


CROSSING = StepLines((0.01, 0.002), (1e-7, 5e-7))  # cross at context 20,000
PARALLEL_APART = StepLines((0.01, 0.002), (3e-7, 3e-7))  # never cross
THREE = StepLines((0.01, 0.006, 0.0), (1e-7, 3e-7, 4.5e-7))  # each dominates in turn: 20k, 40k

CASES = [
    pytest.param(CROSSING, 10_000, 64, 500, id="two-lines-crossing"),
    pytest.param(CROSSING, 0, 1, 3000, id="two-lines-no-cross-in-range"),
    pytest.param(CROSSING, 30_000, 16, 1000, id="two-lines-steeper-on-top-from-start"),
    pytest.param(StepLines((0.002, 0.01), (5e-7, 1e-7)), 10_000, 64, 500, id="two-lines-reversed-order"),
    pytest.param(PARALLEL_APART, 1000, 8, 700, id="two-parallel-lines"),
    pytest.param(THREE, 0, 100, 800, id="three-lines"),
    pytest.param(THREE, 25_000, 50, 700, id="three-lines-from-middle"),
    pytest.param(StepLines((0.004,), (2e-7,)), 123, 7, 999, id="one-line"),
]


def test_three_line_fixture_really_has_three_segments():
    seen = set()
    for c in range(0, 80_001, 1000):
        vals = [a + b * c for a, b in zip(THREE.intercepts_s, THREE.slopes_s)]
        seen.add(int(np.argmax(vals)))
    assert seen == {0, 1, 2}


@pytest.mark.parametrize("lines, c0, n, K", CASES)
def test_cumulative_equals_direct_sum(lines, c0, n, K):
    s = LinearStretch(lines, c0, n)
    assert s.cumulative(0) == 0.0
    assert s.cumulative(-3) == 0.0
    for k in sorted({1, 2, 3, K // 7, K // 3, K // 2, K - 1, K}):
        assert s.cumulative(k) == pytest.approx(direct_sum(lines, c0, n, k), rel=1e-9), k
    for k in (1, K // 2, K):
        assert s.step_time(k) == pytest.approx(lines.at(c0 + n * k), rel=1e-12)


@pytest.mark.parametrize("lines, c0, n, K", CASES)
def test_steps_done_by_inverts_cumulative(lines, c0, n, K):
    s = LinearStretch(lines, c0, n)
    assert s.steps_done_by(0.0, K) == 0
    for k in sorted({1, 2, K // 3, K // 2, K - 1, K}):
        t = s.cumulative(k)
        tiny = s.step_time(k) * 1e-6
        assert s.steps_done_by(t, K) == k
        assert s.steps_done_by(t - tiny, K) == k - 1
        assert s.steps_done_by(t + tiny, K) == k
    assert s.steps_done_by(s.cumulative(K) * 10, K) == K, "capped at k_max"


def test_cumulative_is_strictly_increasing():
    s = LinearStretch(THREE, 0, 100)
    cum = [s.cumulative(k) for k in range(0, 801)]
    assert all(b > a for a, b in zip(cum, cum[1:]))


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(
    lines=st.lists(
        st.tuples(st.floats(1e-5, 0.05), st.floats(1e-10, 2e-6)), min_size=1, max_size=4
    ),
    c0=st.integers(0, 200_000),
    n=st.integers(1, 1024),
    K=st.integers(1, 3000),
)
def test_property_random_positive_lines(lines, c0, n, K):
    sl = StepLines(tuple(a for a, _ in lines), tuple(b for _, b in lines))
    s = LinearStretch(sl, c0, n)
    for k in sorted({1, K // 2, K}):
        if k < 1:
            continue
        assert s.cumulative(k) == pytest.approx(direct_sum(sl, c0, n, k), rel=1e-9)
    k = max(1, K // 2)
    t = s.cumulative(k)
    assert s.steps_done_by(t, K) == k
    tiny = s.step_time(k) * 1e-6
    assume(t - tiny < t)
    assert s.steps_done_by(t - tiny, K) == k - 1


def test_tabulated_and_head_stretch():
    ctx = np.array([100, 300, 600, 1000])
    tab = TabulatedStretch(CROSSING, ctx)
    expected = np.cumsum([CROSSING.at(c) for c in ctx])
    for k in range(1, 5):
        assert tab.cumulative(k) == pytest.approx(expected[k - 1], rel=1e-12)
        assert tab.steps_done_by(tab.cumulative(k), 4) == k
        assert tab.steps_done_by(tab.cumulative(k) - 1e-9, 4) == k - 1
    assert tab.cumulative(0) == 0.0
    single = TabulatedStretch.single(0.25)
    assert single.cumulative(1) == 0.25 and single.steps_done_by(0.3, 1) == 1 and single.steps_done_by(0.2, 1) == 0

    tail = LinearStretch(CROSSING, 10_000, 64)
    head = HeadStretch(0.5, tail)
    assert head.cumulative(0) == 0.0
    assert head.cumulative(1) == 0.5
    assert head.cumulative(11) == pytest.approx(0.5 + tail.cumulative(10), rel=1e-12)
    assert head.steps_done_by(0.49, 20) == 0
    assert head.steps_done_by(0.5, 20) == 1
    assert head.steps_done_by(head.cumulative(11), 20) == 11
    assert head.steps_done_by(head.cumulative(11) - 1e-9, 20) == 10


# --------------------------------------------------------------------------- roofline sanity
@pytest.fixture(scope="module")
def qwen_cost():
    return RooflineCost(get_model("qwen2.5-7b"), get_gpu("h100-sxm"), Parallelism())


def _decode_step_s(cost, n: int, ctx_per_seq: int) -> float:
    return cost.step_lines(n, n, 0).at(n * ctx_per_seq)


def test_decode_step_grows_with_batch(qwen_cost):
    times = [_decode_step_s(qwen_cost, n, 2000) for n in (1, 8, 64, 256, 1024)]
    assert all(b > a for a, b in zip(times, times[1:])), times


def test_decode_step_grows_with_context(qwen_cost):
    times = [_decode_step_s(qwen_cost, 32, c) for c in (100, 1000, 10_000, 100_000)]
    assert all(b > a for a, b in zip(times, times[1:])), times


def test_small_decode_is_memory_bound_and_plausible(qwen_cost):
    # one sequence: reading 15 GB of weights at ~2.3 TB/s plus overhead: ~10 ms
    t = _decode_step_s(qwen_cost, 1, 1000)
    weights_s = get_model("qwen2.5-7b").weight_bytes / (3.35e12 * 0.7)
    assert weights_s < t < weights_s + 0.02
    lines = qwen_cost.step_lines(1, 1, 0)
    assert lines.at(1000) == lines.intercepts_s[1] + lines.slopes_s[1] * 1000


def test_prefill_costs_more_than_decode(qwen_cost):
    decode = qwen_cost.step_lines(1, 1, 0).at(4096)
    prefill = qwen_cost.step_lines(1, 4096, 4096 * 4097 // 2 - 4096).at(4096)
    assert prefill > 3 * decode


def test_kimi_small_batch_reads_fewer_expert_bytes():
    model = get_model("kimi-k2")
    cost = RooflineCost(model, get_gpu("h800"), Parallelism(tp=1, dp=32, ep=32))
    small, large = cost.step_lines(1, 1, 0), cost.step_lines(1024, 1024, 0)
    assert small.intercepts_s[1] < large.intercepts_s[1], "memory intercept (weights read) grows with batch"
    assert small.intercepts_s[0] < large.intercepts_s[0]
    assert model.distinct_experts_touched(1) == pytest.approx(model.experts_per_token)
    assert model.distinct_experts_touched(1024) == pytest.approx(model.num_experts, rel=0.01)
    assert model.distinct_experts_touched(0) == 0.0
    touched = [model.distinct_experts_touched(t) for t in (1, 2, 8, 64, 512)]
    assert all(b > a for a, b in zip(touched, touched[1:]))


def test_expert_parallel_step_waits_for_the_busiest_rank(monkeypatch):
    """Issue 11: the slowest EP rank carries 1.46x the mean routed-expert load at 8 tokens
    per rank on Kimi-K2's EP32; the imbalance fades as batches grow, and a model without
    EP (or without experts) has none."""
    from seersim.cost.curves import routed_experts_s
    from seersim.cost.calibration import load_calibration, shipped_calibration

    kimi = get_model("kimi-k2")
    assert kimi.ep_load_factor(8, 32) == pytest.approx(1.46, abs=0.01)
    factors = [kimi.ep_load_factor(t, 32) for t in (1, 8, 64, 512, 4096)]
    assert all(b < a for a, b in zip(factors, factors[1:])) and factors[-1] < 1.03
    assert kimi.ep_load_factor(8, 1) == 1.0
    assert get_model("qwen2.5-7b").ep_load_factor(8, 8) == 1.0
    gpu = get_gpu("h800")
    curves = load_calibration(shipped_calibration(gpu.calibration)).curves
    busiest = {t: routed_experts_s(curves, gpu, kimi, t, 1, 32) for t in (8.0, 2048.0)}
    monkeypatch.setattr("seersim.specs.model.EP_ROUTING_SKEW", 0.0)  # every rank at the mean
    mean = {t: routed_experts_s(curves, gpu, kimi, t, 1, 32) for t in (8.0, 2048.0)}
    assert busiest[2048.0] > 1.01 * mean[2048.0]  # compute-bound: the extra rows cost time
    assert busiest[8.0] >= mean[8.0]  # weight-read bound: the same experts are read


def test_dense_model_touches_no_experts():
    assert get_model("qwen2.5-7b").distinct_experts_touched(100) == 0.0


def test_tensor_parallel_speeds_up_a_big_model():
    model, gpu = get_model("qwen2-vl-72b"), get_gpu("h800")
    tp4 = RooflineCost(model, gpu, Parallelism(tp=4))
    tp8 = RooflineCost(model, gpu, Parallelism(tp=8))
    assert tp8.step_lines(64, 64, 0).at(64 * 2000) < tp4.step_lines(64, 64, 0).at(64 * 2000)
    assert tp8.collective_s(64) > 0
    assert RooflineCost(model, gpu, Parallelism()).collective_s(64) == 0.0
