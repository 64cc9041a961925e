"""Fast-forward arithmetic: the cumulative time of a stretch of engine iterations.

A cost model answers "what does one iteration cost" as `StepLines` (linear in the
context for a fixed batch); the engine strings iterations into stretches whose
per-step context grows by a constant, so the stretch's total time is a closed-form
sum (DESIGN §5), and an interrupt settles the steps already done by inverting it.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

import numpy as np

from seersim.cost.base import StepLines


class LinearStretch:
    """Cumulative time of k decode steps whose context is C0 + n·k at step k (k = 1..K).

    Closed form per envelope segment, so a stretch costs O(lines), not O(steps).
    """

    __slots__ = ("lines", "c0", "n", "_breaks", "_starts", "_cum")
    # The envelope is convex in k: which line dominates where, as k-ranges. Per
    # segment: (first k, intercept at k=0, slope per k); its first k; time before it.
    _breaks: list[tuple[int, float, float]]
    _starts: list[int]
    _cum: list[float]

    def __init__(self, lines: StepLines, c0: int, n: int) -> None:
        self.lines, self.c0, self.n = lines, c0, n
        if len(lines.slopes_s) == 2:
            self._build_two()
        else:
            self._build_general()

    def _index(self) -> None:
        """`_starts` and `_cum` of the segments in `_breaks`."""
        self._starts = [s[0] for s in self._breaks]
        total = 0.0
        self._cum = [0.0]
        for i in range(1, len(self._breaks)):
            total += self._seg_sum(i - 1, self._breaks[i][0] - 1)
            self._cum.append(total)

    def _build_two(self) -> None:
        """Two lines (a roofline): at most one crossover, found in closed form (and the
        index built here: the hot path of speculative stretches)."""
        (a1, a2), (b1, b2) = self.lines.intercepts_s, self.lines.slopes_s
        c0, n = self.c0, self.n
        if b1 > b2 or (b1 == b2 and a1 < a2):  # make line 1 the less steep one
            a1, a2, b1, b2 = a2, a1, b2, b1
        i1, n1 = a1 + b1 * c0, b1 * n
        i2, n2 = a2 + b2 * c0, b2 * n
        if n2 == n1 or i1 + n1 <= i2 + n2:
            # steeper line already on top at k=1 (or parallel): it stays on top
            self._breaks = [(1, i1, n1) if i1 + n1 > i2 + n2 else (1, i2, n2)]
            self._starts, self._cum = [1], [0.0]
            return
        cross = (i1 - i2) / (n2 - n1)  # k where the steeper line overtakes
        k = max(2, math.floor(cross) + 1)
        self._breaks = [(1, i1, n1), (k, i2, n2)]
        self._starts, self._cum = [1, k], [0.0, 0.0 + self._seg_sum(0, k - 1)]

    def _build_general(self) -> None:
        pieces = sorted(zip(self.lines.slopes_s, self.lines.intercepts_s))
        # per-step time as a function of k: (a + b·c0) + (b·n)·k
        segs: list[tuple[int, float, float]] = []
        k = 1
        while True:
            val = [(a + b * self.c0) + (b * self.n) * k for b, a in pieces]
            j = max(range(len(pieces)), key=lambda i: (val[i], pieces[i][0]))
            b, a = pieces[j]
            segs.append((k, a + b * self.c0, b * self.n))
            # next k where a steeper line overtakes this one
            nxt = None
            for b2, a2 in pieces:
                if b2 * self.n > b * self.n:
                    a0, a20 = a + b * self.c0, a2 + b2 * self.c0
                    cross = (a0 - a20) / ((b2 - b) * self.n)
                    kk = max(k + 1, int(np.floor(cross)) + 1)
                    if nxt is None or kk < nxt:
                        nxt = kk
            if nxt is None:
                break
            k = nxt
        self._breaks = segs
        self._index()

    def _seg_sum(self, i: int, k_end: int) -> float:
        """Σ of segment i's per-step times for k in [start_i, k_end]."""
        k0, a, b = self._breaks[i]
        cnt = k_end - k0 + 1
        if cnt <= 0:
            return 0.0
        return cnt * a + b * (k0 + k_end) * cnt / 2.0

    def step_time(self, k: int) -> float:
        return self.lines.at(self.c0 + self.n * k)

    def cumulative(self, k: int) -> float:
        """Total time of steps 1..k."""
        if k <= 0:
            return 0.0
        i = bisect.bisect_right(self._starts, k) - 1
        return self._cum[i] + self._seg_sum(i, k)

    def steps_done_by(self, elapsed_s: float, k_max: int) -> int:
        """Number of whole steps (≤ k_max) finished within `elapsed_s` of the stretch start.

        Solves the segment's quadratic for a guess, then corrects it against
        `cumulative` itself so the answer agrees exactly with the summed times.
        """
        if k_max <= 0 or self.cumulative(1) > elapsed_s:
            return 0
        if self.cumulative(k_max) <= elapsed_s:
            return k_max
        i = bisect.bisect_right(self._cum, elapsed_s) - 1  # segment where the time runs out
        k0, a, b = self._breaks[i]
        rem = elapsed_s - self._cum[i]
        # cnt·a + b·(2·k0 + cnt − 1)·cnt/2 = rem, solved for cnt
        lin = a + b * (k0 - 0.5)
        if b > 0:
            cnt = (-lin + math.sqrt(max(lin * lin + 2.0 * b * rem, 0.0))) / b
        else:
            cnt = rem / lin if lin > 0 else 0.0
        k = min(max(int(cnt) + k0 - 1, 0), k_max)
        while k < k_max and self.cumulative(k + 1) <= elapsed_s:
            k += 1
        while k > 0 and self.cumulative(k) > elapsed_s:
            k -= 1
        return k


class TabulatedStretch:
    """Cumulative time of steps with arbitrary per-step context (e.g. speculative decoding)."""

    __slots__ = ("_cum",)

    def __init__(self, lines: StepLines, context_per_step: np.ndarray) -> None:
        self._cum = np.concatenate(([0.0], np.cumsum(lines.at_array(context_per_step))))

    @classmethod
    def single(cls, step_s: float) -> "TabulatedStretch":
        """A one-iteration stretch of known duration."""
        obj = cls.__new__(cls)
        obj._cum = np.array([0.0, step_s])
        return obj

    def cumulative(self, k: int) -> float:
        return float(self._cum[k])

    def steps_done_by(self, elapsed_s: float, k_max: int) -> int:
        return int(min(k_max, np.searchsorted(self._cum, elapsed_s, side="right") - 1))


class HeadStretch:
    """One mixed iteration (e.g. a prefill) followed by a pure-decode `LinearStretch`."""

    __slots__ = ("head_s", "tail")

    def __init__(self, head_s: float, tail: LinearStretch) -> None:
        self.head_s, self.tail = head_s, tail

    def cumulative(self, k: int) -> float:
        return 0.0 if k <= 0 else self.head_s + self.tail.cumulative(k - 1)

    def steps_done_by(self, elapsed_s: float, k_max: int) -> int:
        if elapsed_s < self.head_s or k_max <= 0:
            return 0
        return 1 + self.tail.steps_done_by(elapsed_s - self.head_s, k_max - 1)


class SegmentedStretch:
    """Consecutive `LinearStretch` pieces of one stretch: piece i runs from iteration
    starts[i] (the first is 1) to the next piece's start − 1."""

    __slots__ = ("_starts", "_parts", "_before")

    def __init__(self, parts: list[tuple[int, LinearStretch]]) -> None:
        self._starts = [first for first, _ in parts]
        self._parts = [part for _, part in parts]
        self._before = [0.0]  # time of the iterations before each piece
        for i in range(1, len(parts)):
            self._before.append(self._before[-1] + self._parts[i - 1].cumulative(self._starts[i] - self._starts[i - 1]))

    def cumulative(self, k: int) -> float:
        """Total time of iterations 1..k."""
        if k <= 0:
            return 0.0
        i = bisect.bisect_right(self._starts, k) - 1
        return self._before[i] + self._parts[i].cumulative(k - self._starts[i] + 1)

    def steps_done_by(self, elapsed_s: float, k_max: int) -> int:
        """Whole iterations (≤ k_max) finished within `elapsed_s`, agreeing exactly with `cumulative`."""
        if k_max <= 0 or self.cumulative(1) > elapsed_s:
            return 0
        if self.cumulative(k_max) <= elapsed_s:
            return k_max
        i = max(bisect.bisect_right(self._before, elapsed_s) - 1, 0)
        first = self._starts[i]
        span = (self._starts[i + 1] if i + 1 < len(self._starts) else k_max + 1) - first
        k = min(first - 1 + self._parts[i].steps_done_by(elapsed_s - self._before[i], span), k_max)
        while k < k_max and self.cumulative(k + 1) <= elapsed_s:
            k += 1
        while k > 0 and self.cumulative(k) > elapsed_s:
            k -= 1
        return k


def steps_within(blocks_at: Callable[[int], np.ndarray], limit: np.ndarray, steps: int) -> int:
    """The longest stretch of at most `steps` iterations whose KV fits: the largest k
    with `blocks_at(k)` ≤ `limit` on every DP rank, by bisection (blocks grow with k;
    one iteration always fits, its blocks being allocated already)."""
    if steps <= 1 or not bool((blocks_at(steps) > limit).any()):
        return steps
    lo, hi = 1, steps  # blocks_at(lo) fits, blocks_at(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if bool((blocks_at(mid) > limit).any()):
            hi = mid
        else:
            lo = mid
    return lo
