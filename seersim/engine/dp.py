"""Data-parallel attention ranks of one instance (e.g. Kimi-K2's DP32 + EP32): pricing.

With DP attention each sequence lives on one DP rank: its KV is read by that rank's
GPU alone, its prefill or recompute runs there. As in vLLM, where each DP rank is an
engine core of its own, each rank has its own KV cache (the instance's blocks / dp),
waiting queue, scheduler and preemption (victims from the back of that rank's own
sequences), and its share of the token budget and of `max_num_seqs` (the engine knobs
are per instance, the sum of its ranks). The instance (`engine/instance.py`) keeps
those per rank; a dispatched chunk joins, at the next iteration boundary, the rank
caching its own earlier context, else the least KV-loaded rank (`Instance._pick_rank`).
A group's shared prompt cached on one rank is a hit only for siblings on that rank.
The ranks step in lockstep (the MoE layers' expert-parallel all-to-alls join them),
so an iteration lasts as long as its slowest rank.

Rank r's time is the instance's cost model called with the instance's sequences and
tokens (the token-dependent GEMM, MoE and all-to-all work, which the cost model
spreads over the ranks) and with rank r's own attention: its prefill pairs e_r and
its context C_r, both scaled by dp — the cost model divides attention work by the
instance's dp GPUs, so dp·e_r and dp·C_r price them on rank r's one GPU. A 98K-token
sequence decoding alone thus reads its 6.9 GB of KV on one GPU, and the iteration
waits for the slowest rank. Not modelled here: the dense GEMMs of a single rank's
prefill run on that rank alone (the cost model spreads them), and the imbalance
between expert-parallel GPUs at a given token count (the cost model's to price).

Within a stretch every rank's context (and, in a stretch of budget-cut prefills, its
prefill pairs) grows linearly in the step index k, so the iteration time is the upper
envelope of lines in k: `LinearStretch` sums it in closed form, and fast-forward stays
exact.
"""

from __future__ import annotations

import math

import numpy as np

from seersim.cost import CostModel, LinearStretch, StepLines


class DPRanks:
    """Prices iterations of an instance with `dp` attention ranks (dp = 1: one engine)."""

    __slots__ = ("cost", "dp")

    def __init__(self, cost: CostModel, dp: int) -> None:
        self.cost, self.dp = cost, dp

    def per_rank(self, rank: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
        """Σ of `values` (default: count) over each rank's sequences, as int64 (length dp)."""
        if self.dp == 1:
            return np.array([len(rank) if values is None else values.sum()], np.int64)
        if values is None:
            return np.bincount(rank, minlength=self.dp)
        return np.bincount(rank, weights=values, minlength=self.dp).astype(np.int64)

    def lines(
        self,
        seqs: np.ndarray,
        tokens: np.ndarray,
        extra_pairs: np.ndarray,
        queries: np.ndarray,
        c0: np.ndarray,
        rate: np.ndarray,
        overhead_s: float = 0.0,
    ) -> tuple[StepLines, float, float]:
        """(lines, c0, n) such that iteration k of a stretch lasts lines.at(c0 + n·k).

        Arguments are per rank: sequences, tokens computed per iteration, extra
        attention pairs, queries per sequence, context at k = 0 and its growth per
        iteration. With dp = 1 these are the cost model's own lines; otherwise the
        lines are in k (c0 = 0, n = 1): the envelope over busy ranks.
        """
        cost, dp = self.cost, self.dp
        if dp == 1:
            lines = cost.step_lines(int(seqs[0]), int(tokens[0]), int(extra_pairs[0]), float(queries[0]))
            return lines.raised(overhead_s), float(c0[0]), float(rate[0])
        seqs_l = seqs.tolist()
        groups = _groups(seqs_l, list(zip(extra_pairs.tolist(), queries.tolist())), list(zip(c0.tolist(), rate.tolist())))
        return self._envelope_in_k(groups, sum(seqs_l), int(tokens.sum()), overhead_s), 0.0, 1.0

    def _envelope_in_k(self, groups: dict, n_all: int, t_all: int, overhead_s: float) -> StepLines:
        """The envelope in k of the busy ranks' lines, `groups` holding their (context at
        k = 0, growth) per cost-model key (prefill pairs, queries per sequence)."""
        # Ranks with the same prefill pairs and queries share the cost model's lines;
        # among them a rank whose context and growth another's match or beat has lines
        # that the other's beat (or equal) everywhere, so only the Pareto front of
        # (context, growth) can shape the envelope (`_envelope` keeps exactly the same
        # lines either way: it is a function of the set of undominated lines)
        cost, dp = self.cost, self.dp
        candidates: list[tuple[float, float]] = []  # (slope, intercept) per line
        for (e, q), points in groups.items():
            lr = cost.step_lines(n_all, t_all, dp * int(e), float(q)).raised(overhead_s)
            shifted = [(a, b * dp) for a, b in zip(lr.intercepts_s, lr.slopes_s)]
            if len(points) > 1 and min(lr.slopes_s) >= 0:
                points = _front(points)
            for c, g in points:
                c, g = float(c), float(g)
                candidates += [(b * g, a + b * c) for a, b in shifted]
        return _envelope(candidates)

    def decode_stretch(self, seqs, context) -> LinearStretch:
        """Iterations of a plain decode batch: `seqs` sequences per rank, each computing one
        token, from `context` tokens per rank (growing by `seqs` per iteration); as
        `stretch(seqs, seqs, 0, 1, context, seqs)`, without the per-rank keys (one: no
        prefill pairs, one query). With one rank `seqs` and `context` are ints."""
        if self.dp == 1:
            return LinearStretch(self.cost.step_lines(seqs, seqs, 0, 1.0), float(context), float(seqs))
        seqs_l = seqs.tolist()
        n_all = sum(seqs_l)
        groups = {(0, 1.0): [(c, g) for c, g in zip(context.tolist(), seqs_l) if g]}
        return LinearStretch(self._envelope_in_k(groups, n_all, n_all, 0.0), 0.0, 1.0)

    def stretch(self, *args, overhead_s: float = 0.0) -> LinearStretch:
        """A `LinearStretch` over the lines of `lines(*args)`."""
        lines, c0, n = self.lines(*args, overhead_s=overhead_s)
        return LinearStretch(lines, c0, n)

    def growing_stretch(self, seqs, tokens, extra_pairs, extra_growth, context, growth, steps: int) -> LinearStretch | None:
        """Iterations k = 1..steps of a fixed batch (per-rank sequences and tokens, one
        query per sequence) whose prefill pairs are extra_pairs + (k−1)·extra_growth and
        context context + (k−1)·growth per rank: a `LinearStretch` in k.

        Relies on the cost model's time being linear in the extra attention pairs (its
        contract: pairs are counted, not shaped); checked at k = steps, else None (the
        caller then plans one iteration)."""
        cost, dp = self.cost, self.dp
        seqs_l = seqs.tolist()
        n_all, t_all = sum(seqs_l), int(tokens.sum())
        # ranks with the same pairs and growth share the cost model's lines
        groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for n, e, de, c, g in zip(seqs_l, extra_pairs.tolist(), extra_growth.tolist(), context.tolist(), growth.tolist()):
            if n:
                groups.setdefault((dp * e, dp * de), []).append((c, g))
        candidates: list[tuple[float, float]] = []  # (slope, intercept) per line and rank
        for (e1, de), points in groups.items():
            first = cost.step_lines(n_all, t_all, e1, 1.0)
            a1, slopes = first.intercepts_s, first.slopes_s
            da: tuple[float, ...] | list[float] = (0.0,) * len(a1)
            if de:
                second = cost.step_lines(n_all, t_all, e1 + de, 1.0)
                last = cost.step_lines(n_all, t_all, e1 + (steps - 1) * de, 1.0)
                if second.slopes_s != slopes or last.slopes_s != slopes:
                    return None
                da = [y - x for x, y in zip(a1, second.intercepts_s)]
                if not all(abs(x + d * (steps - 1) - y) <= 1e-12 * abs(y) for x, d, y in zip(a1, da, last.intercepts_s)):
                    return None
            # the line at k = 1 is the first iteration
            lines = list(zip(a1, slopes, da))
            for c, g in points:
                dc, dg = dp * float(c), dp * float(g)
                for a, b, d in lines:
                    slope = d + b * dg
                    candidates.append((slope, a + b * dc - slope))
        return LinearStretch(_envelope(candidates), 0, 1)

    def step_s(self, seqs, tokens, extra_pairs, queries, context) -> float:
        """Time of one iteration (per-rank arguments as `lines`, context at that iteration)."""
        cost, dp = self.cost, self.dp
        if dp == 1:
            return cost.step_lines(int(seqs[0]), int(tokens[0]), int(extra_pairs[0]), float(queries[0])).at(float(context[0]))
        seqs_l = seqs.tolist()
        n_all, t_all = sum(seqs_l), int(tokens.sum())
        # iteration time rises with a rank's prefill pairs and its context (the cost model
        # prices more attention work as slower): among ranks with the same queries only
        # those that no other rank beats in both can be the slowest
        by_queries = _groups(seqs_l, queries.tolist(), list(zip(extra_pairs.tolist(), context.tolist())))
        slowest_s = 0.0
        for q, points in by_queries.items():
            for e, c in _front(points):
                slowest_s = max(slowest_s, cost.step_lines(n_all, t_all, dp * int(e), float(q)).at(dp * float(c)))
        return slowest_s


def _groups(seqs: list[int], keys: list, points: list[tuple]) -> dict:
    """The busy ranks' points grouped by their keys, in order of first appearance (one
    group, the common case, without a per-rank dictionary update)."""
    distinct = {key for n, key in zip(seqs, keys) if n}
    if len(distinct) == 1:
        return {distinct.pop(): [point for n, point in zip(seqs, points) if n]}
    groups: dict = {}
    for n, key, point in zip(seqs, keys, points):
        if n:
            groups.setdefault(key, []).append(point)
    return groups


def _front(points: list[tuple]) -> list[tuple]:
    """The (x, y) points that no other point matches or beats in both (one of equal ones)."""
    if len(points) == 1:
        return points
    front: list[tuple] = []
    for x, y in sorted(points, reverse=True):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def _envelope(lines: list[tuple[float, float]]) -> StepLines:
    """The lines a + b·k, given as (b, a), of the upper envelope over k ≥ 1, in order of slope.

    A function of the set of lines only: a line that another beats in both intercept
    and slope never survives the first pass, nor changes what else does."""
    # drop every line that a steeper (or equally steep) line beats at k = 1
    lines.sort(reverse=True)
    kept: list[tuple[float, float]] = []
    best = -math.inf
    for b, a in lines:
        at1 = a + b
        if at1 > best:
            kept.append((a, b))
            best = at1
    # slopes increasing, values at k = 1 decreasing; upper hull: drop a line the lines
    # beside it beat everywhere
    hull_a: list[float] = []
    hull_b: list[float] = []
    for ai, bi in reversed(kept):
        while len(hull_a) >= 2:
            a1, b1, a2, b2 = hull_a[-2], hull_b[-2], hull_a[-1], hull_b[-1]
            # line 2 is useless if line i overtakes line 1 no later than line 2 does
            if (ai - a1) * (b2 - b1) >= (a2 - a1) * (bi - b1):
                hull_a.pop()
                hull_b.pop()
            else:
                break
        hull_a.append(ai)
        hull_b.append(bi)
    return StepLines(tuple(hull_a), tuple(hull_b))
