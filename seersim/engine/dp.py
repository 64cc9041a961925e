"""Data-parallel attention ranks of one instance (e.g. Kimi-K2's DP32 + EP32).

With DP attention each sequence lives on one DP rank: its KV is read by that rank's
GPU alone, its prefill or recompute runs there, and each rank has its own share of
the token budget and of `max_num_seqs` (the engine knobs are per instance, the sum
of its ranks, as vLLM's DP ranks each run an engine core with the per-rank values).
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

Within a stretch every rank's context grows linearly in the step index k, so the
iteration time is the upper envelope of lines in k: `LinearStretch` sums it in closed
form, and fast-forward stays exact.
"""

from __future__ import annotations

import numpy as np

from seersim.cost import CostModel, LinearStretch, StepLines


class DPRanks:
    """Prices iterations of an instance with `dp` attention ranks (dp = 1: one engine)."""

    __slots__ = ("cost", "dp")

    def __init__(self, cost: CostModel, dp: int) -> None:
        self.cost, self.dp = cost, dp

    def per_rank(self, rank: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
        """Σ of `values` (default: count) over each rank's sequences, as int64 (length dp)."""
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
            return _shift(lines, overhead_s), float(c0[0]), float(rate[0])
        a_k: list[float] = []
        b_k: list[float] = []
        n_all, t_all = int(seqs.sum()), int(tokens.sum())
        for r in np.flatnonzero(seqs).tolist():
            lr = cost.step_lines(n_all, t_all, dp * int(extra_pairs[r]), float(queries[r]))
            for a, b in zip(lr.intercepts_s, lr.slopes_s):
                a_k.append(a + overhead_s + b * dp * float(c0[r]))
                b_k.append(b * dp * float(rate[r]))
        return _envelope(a_k, b_k), 0.0, 1.0

    def stretch(self, *args, overhead_s: float = 0.0) -> LinearStretch:
        """A `LinearStretch` over the lines of `lines(*args)`."""
        lines, c0, n = self.lines(*args, overhead_s=overhead_s)
        return LinearStretch(lines, c0, n)

    def step_s(self, seqs, tokens, extra_pairs, queries, context) -> float:
        """Time of one iteration (per-rank arguments as `lines`, context at that iteration)."""
        zero = np.zeros(self.dp)
        lines, c0, _ = self.lines(seqs, tokens, extra_pairs, queries, context, zero)
        return lines.at(c0)


def _shift(lines: StepLines, overhead_s: float) -> StepLines:
    if not overhead_s:
        return lines
    return StepLines(tuple(a + overhead_s for a in lines.intercepts_s), lines.slopes_s)


def _envelope(intercepts: list[float], slopes: list[float]) -> StepLines:
    """The lines that can be on top for k ≥ 1: drop any line that a steeper (or equally
    steep) line beats at k = 1, since it then beats it for every k ≥ 1."""
    order = sorted(range(len(slopes)), key=lambda i: (-slopes[i], -intercepts[i]))
    keep_a: list[float] = []
    keep_b: list[float] = []
    best_at_1 = -np.inf
    for i in order:
        v = intercepts[i] + slopes[i]
        if v > best_at_1:
            keep_a.append(intercepts[i])
            keep_b.append(slopes[i])
            best_at_1 = v
    return StepLines(tuple(keep_a), tuple(keep_b))
