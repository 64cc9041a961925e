"""DP-rank pricing builds a stretch's envelope from the Pareto front of each cost-model
key's ranks (engine/dp.py): the same lines, bit for bit, as from every busy rank's."""

from __future__ import annotations

import numpy as np

import seersim
from conftest import REPO_ROOT
from seersim.cost import build_cost_model
from seersim.engine.dp import DPRanks, _envelope, _front


def _every_rank_lines(ranks: DPRanks, seqs, tokens, extra_pairs, queries, c0, rate, overhead_s):
    """`DPRanks.lines` without the Pareto filter: every busy rank's lines."""
    dp, cost = ranks.dp, ranks.cost
    n_all, t_all = int(seqs.sum()), int(tokens.sum())
    candidates = []
    for r in np.flatnonzero(seqs).tolist():
        lr = cost.step_lines(n_all, t_all, dp * int(extra_pairs[r]), float(queries[r]))
        for a, b in zip(lr.intercepts_s, lr.slopes_s):
            a0, bd = a + overhead_s, b * dp
            candidates.append((bd * float(rate[r]), a0 + bd * float(c0[r])))
    return _envelope(candidates)


def test_the_pareto_front_keeps_the_envelope_of_every_rank():
    sc = seersim.load_scenario(REPO_ROOT / "scenarios" / "kimi-k2.yaml")
    ranks = DPRanks(build_cost_model(sc), 32)
    rng = np.random.default_rng(7)
    for case in range(300):
        dp = 32
        seqs = rng.integers(0, 4, dp) * (rng.random(dp) < 0.8)
        seqs[rng.integers(dp)] += 1
        # few distinct values, so ties (equal contexts, equal growths, equal keys) are common
        c0 = rng.integers(0, 5, dp) * 20_000 + rng.integers(0, 3, dp)
        rate = seqs * rng.integers(1, 3, dp) if case % 2 else seqs.copy()
        extra = rng.integers(0, 2, dp) * 1000 * (case % 3 == 0)
        queries = (1.0 + rng.integers(0, 3, dp)) if case % 4 == 1 else np.ones(dp)
        overhead_s = 1e-4 if case % 5 == 0 else 0.0
        if case % 6 == 0:
            c0 = c0 + rng.random(dp)  # speculation's expected contexts are fractional
        args = (seqs, seqs, extra, queries, c0, rate)
        lines, c, n = ranks.lines(*args, overhead_s=overhead_s)
        assert (c, n) == (0.0, 1.0)
        assert lines == _every_rank_lines(ranks, *args, overhead_s), case


def test_front_is_the_set_of_points_none_matches_or_beats_in_both():
    rng = np.random.default_rng(3)
    for _ in range(200):
        points = [tuple(p) for p in rng.integers(0, 6, (rng.integers(1, 12), 2)).tolist()]
        front = _front(list(points))
        dominated = {p for p in points if any(q != p and q[0] >= p[0] and q[1] >= p[1] for q in points)}
        assert set(front) == set(points) - dominated
        assert len(front) == len(set(front))


def test_decode_stretch_is_the_stretch_of_a_decode_batch():
    """`DPRanks.decode_stretch` (no per-rank keys; ints with one rank) prices exactly as the
    general `stretch` of sequences each computing one token with one query."""
    sc = seersim.load_scenario(REPO_ROOT / "scenarios" / "kimi-k2.yaml")
    cost = build_cost_model(sc)
    rng = np.random.default_rng(11)
    for dp in (1, 4, 32):
        ranks = DPRanks(cost, dp)
        for _ in range(100):
            seqs = rng.integers(0, 5, dp) * (rng.random(dp) < 0.8)
            seqs[rng.integers(dp)] += 1
            context = seqs * rng.integers(100, 90_000, dp)
            general = ranks.stretch(seqs, seqs, np.zeros(dp), np.ones(dp), context, seqs)
            args = (int(seqs[0]), int(context[0])) if dp == 1 else (seqs, context)
            fast = ranks.decode_stretch(*args)
            assert (fast.lines, fast.c0, fast.n) == (general.lines, general.c0, general.n)
            assert [fast.cumulative(k) for k in (1, 7, 300)] == [general.cumulative(k) for k in (1, 7, 300)]
