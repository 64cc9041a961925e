"""Cost-model interface: the time of one engine iteration (forward pass).

An iteration's time is linear in the context tokens it attends (attention FLOPs and
KV reads both are), with intercepts that depend on the batch's token count and size.
So a cost model returns `StepLines`: time = max_j(intercept_j + slope_j · context),
the upper envelope of a few lines (a roofline is the max of a compute line and a
memory line; an additive fitted model is a single line). Within a fast-forwarded
decode stretch the batch is fixed and the context grows by a constant each step,
so the stretch's total time is a closed-form sum (DESIGN §5; engine/stretch.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True, slots=True)
class StepLines:
    """Iteration time in seconds = max_j(intercepts_s[j] + slopes_s[j] · context_tokens)."""

    intercepts_s: tuple[float, ...]
    slopes_s: tuple[float, ...]

    def at(self, context_tokens: float) -> float:
        a, b = self.intercepts_s, self.slopes_s
        if len(a) == 2:  # the common roofline case, without the generator
            x, y = a[0] + b[0] * context_tokens, a[1] + b[1] * context_tokens
            return x if x > y else y
        return max(ai + bi * context_tokens for ai, bi in zip(a, b))

    def raised(self, seconds: float) -> "StepLines":
        """The same lines, each `seconds` later (a per-iteration overhead on top)."""
        if not seconds:
            return self
        return StepLines(tuple(a + seconds for a in self.intercepts_s), self.slopes_s)

    def at_array(self, context_tokens: np.ndarray) -> np.ndarray:
        c = np.asarray(context_tokens, dtype=np.float64)
        out = self.intercepts_s[0] + self.slopes_s[0] * c
        for a, b in zip(self.intercepts_s[1:], self.slopes_s[1:]):
            out = np.maximum(out, a + b * c)
        return out


@runtime_checkable
class CostModel(Protocol):
    """Step-time model. Implementations: `RooflineCost` (analytic), fitted models (calibrate/)."""

    name: str

    def step_lines(
        self, num_seqs: int, new_tokens: int, extra_attn_pairs: int, queries_per_seq: float = 1.0
    ) -> StepLines:
        """Lines for a batch of `num_seqs` sequences computing `new_tokens` tokens in total.

        The caller evaluates them at context_tokens = Σ_i (computed_i + new_i). Attention
        pairs are queries_per_seq · context_tokens + extra_attn_pairs: a decode step has
        one query per sequence and extra 0; a prefill chunk attends more (extra > 0);
        verifying γ draft tokens is γ+1 queries per sequence.
        """
        ...


class CachedStepLines:
    """Base for cost models: memoises `step_lines` in a plain dict, which pickles (an
    `lru_cache` bound to the instance does not, and process-parallel runs pickle the
    model). Subclasses implement `_step_lines` with the same arguments."""

    name: str = "cost"
    _CACHE_SIZE = 65536

    def step_lines(
        self, num_seqs: int, new_tokens: int, extra_attn_pairs: int, queries_per_seq: float = 1.0
    ) -> StepLines:
        cache = self.__dict__.setdefault("_lines_cache", {})
        key = (num_seqs, new_tokens, extra_attn_pairs, queries_per_seq)
        hit = cache.get(key)
        if hit is None:
            if len(cache) >= self._CACHE_SIZE:
                cache.clear()
            hit = cache[key] = self._step_lines(num_seqs, new_tokens, extra_attn_pairs, queries_per_seq)
        return hit

    def _step_lines(
        self, num_seqs: int, new_tokens: int, extra_attn_pairs: int, queries_per_seq: float
    ) -> StepLines:
        raise NotImplementedError
