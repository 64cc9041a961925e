"""The running batch of one instance, and the plan of a stretch of iterations over it.

Shared by the instance (`instance.py`, which schedules and applies) and the
speculative-decoding strategy (`specdec.py`, which chooses drafts and computes what
a speculative stretch emits), so neither reaches into the other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Literal, Protocol

import numpy as np

if TYPE_CHECKING:
    from seersim.engine.dp import DPRanks

#: Accumulator units per token of speculative emission (`acc`, `tau_q` columns).
Q = 1 << 20


def any_of(mask: np.ndarray) -> bool:
    """mask.any() without numpy's Python-level method wrapper (4x the cost on the engine's
    small arrays, asked several times per stretch)."""
    return np.count_nonzero(mask) > 0


def all_of(mask: np.ndarray) -> bool:
    """mask.all(), as `any_of`."""
    return np.count_nonzero(mask) == mask.size


def min_of(a: np.ndarray) -> int:
    """int(a.min()) of a non-empty array through argmin, a plain loop: a min is a ufunc
    reduction, ~3x argmin's instructions on the engine's small arrays."""
    return int(a[a.argmin()])


def max_of(a: np.ndarray) -> int:
    """int(a.max()), as `min_of`."""
    return int(a[a.argmax()])


def indices_of(mask: np.ndarray) -> np.ndarray:
    """np.flatnonzero of a 1-d array, without its Python-level wrappers."""
    return mask.nonzero()[0]


_COLUMNS = (
    "rid", "computed", "tokens", "left", "shared", "blocks", "group", "acc", "gamma", "tau_q", "draft", "rank", "prompt",
    "shareable",
)


class RunningBatch:
    """Running sequences in admission order, one named int64 column each.

    - rid: request id; group: its group id;
    - computed: tokens whose KV is computed; tokens: context tokens (prompt + output);
      a sequence decodes when tokens − computed == 1;
    - left: tokens its chunk may still emit (its limit, or fewer where the output ends);
    - shared: blocks of the group's shared prompt it references; blocks: its own blocks;
    - acc, tau_q: speculative emission accumulator and τ·Q (units of 1/Q token);
      draft: its draft length per path for the current epoch; gamma: the draft slots
      it verifies this iteration (paths · min(draft, left − 1); 0 without speculation).
    - rank: the DP attention rank it lives on (`engine/dp.py`; 0 without DP);
    - prompt: its prompt tokens; shareable: the prompt tokens (whole blocks) it would
      publish as its group's shared prompt (0 without prefix caching). Both are copies
      of the request table's, kept here so per-iteration passes need no gather.

    Storage is one 14 × n matrix, so masking the batch is one numpy operation; the
    columns are views of its rows, refreshed whenever the batch is reshaped. Update a
    column in place (`b.left -= k`, `b.acc[:] = ...`), never rebind it.
    """

    __slots__ = ("_m", "_rank_counts", "_rank_order", *_COLUMNS)

    rid: np.ndarray
    computed: np.ndarray
    tokens: np.ndarray
    left: np.ndarray
    shared: np.ndarray
    blocks: np.ndarray
    group: np.ndarray
    acc: np.ndarray
    gamma: np.ndarray
    tau_q: np.ndarray
    draft: np.ndarray
    rank: np.ndarray
    prompt: np.ndarray
    shareable: np.ndarray

    def __init__(self) -> None:
        self._set(np.zeros((len(_COLUMNS), 0), np.int64))

    def _set(self, m: np.ndarray) -> None:
        self._m = m
        self._rank_counts: np.ndarray | None = None
        self._rank_order: np.ndarray | None = None
        (
            self.rid,
            self.computed,
            self.tokens,
            self.left,
            self.shared,
            self.blocks,
            self.group,
            self.acc,
            self.gamma,
            self.tau_q,
            self.draft,
            self.rank,
            self.prompt,
            self.shareable,
        ) = m

    def __len__(self) -> int:
        return self._m.shape[1]

    def keep(self, which: np.ndarray | slice) -> None:
        """Keep the sequences selected by a boolean mask or a slice (order kept)."""
        self._set(self._m[:, which])

    def extend(self, rows: list[tuple[int, ...]]) -> None:
        """Append sequences, each a tuple in column order."""
        self._set(np.concatenate((self._m, np.array(rows, dtype=np.int64).T), axis=1))

    def rank_counts(self, dp: int) -> np.ndarray:
        """Sequences per DP rank (length dp; read-only, kept until the batch is reshaped:
        a sequence's rank never changes)."""
        counts = self._rank_counts
        if counts is None:
            counts = np.bincount(self.rank, minlength=dp) if dp > 1 else np.array([len(self)], np.int64)
            counts.flags.writeable = False
            self._rank_counts = counts
        return counts

    def rank_order(self, dp: int) -> np.ndarray:
        """The sequences' indices grouped by DP rank, in admission order within a rank (a
        stable sort of `rank`; read-only, kept until the batch is reshaped, as `rank_counts`).

        Sorted as int16 where the ranks fit: numpy's stable sort is then a radix sort,
        4-5x faster than on int64 at a DP32 instance's thousands of sequences."""
        order = self._rank_order
        if order is None:
            order = np.argsort(self.rank.astype(np.int16) if dp <= 1 << 15 else self.rank, kind="stable")
            order.flags.writeable = False
            self._rank_order = order
        return order

    def row(self, i: int) -> list[int]:
        """Sequence i's columns as Python ints, in column order (rid, computed, ...)."""
        return self._m[:, i].tolist()


class Plan:
    """One scheduled stretch of `steps` iterations over the running batch.

    kind "decode": every iteration is the same plain decode batch. "mixed": the first
    iteration computes `new` tokens per sequence (prefills, decodes), followed — when
    `steps` > 1 and `stretch` is a HeadStretch — by a plain decode tail. "prefill": every
    iteration computes the same `new` tokens per sequence (budget-cut prefills that do
    not complete, decodes). "spec_decode":
    every iteration is a speculative decode of the batch (the strategy's emissions).
    `blocks_fn(k)`: blocks per DP rank (an int64 array) that iterations 1..k allocate
    beyond what scheduling allocated (None: the stretch allocates none after scheduling).
    """

    __slots__ = ("steps", "stretch", "kind", "new", "blocks_fn", "total_blocks", "may_evict", "settled_steps", "groups")

    def __init__(
        self,
        steps: int,
        stretch,
        kind: Literal["decode", "mixed", "prefill", "spec_decode"],
        new: np.ndarray | None = None,
        blocks_fn: Callable[[int], np.ndarray] | None = None,
    ) -> None:
        self.steps, self.stretch, self.kind, self.new, self.blocks_fn = steps, stretch, kind, new, blocks_fn
        self.total_blocks: np.ndarray | None = None  # blocks_fn(steps), computed on first need
        # whether its allocations may evict a cached block (None: not known yet)
        self.may_evict: bool | None = None
        self.settled_steps = 0  # iterations whose blocks settle_kv() has allocated
        self.groups: set[int] | None = None  # the batch's groups, once a sibling's finish asks


class EngineState(Protocol):
    """What a decoding strategy may read of its instance (public, read-only)."""

    @property
    def batch(self) -> RunningBatch: ...
    @property
    def block_size(self) -> int: ...
    @property
    def fast_forward(self) -> bool: ...
    @property
    def ranks(self) -> "DPRanks":
        """The instance's DP attention ranks (prices iterations per rank)."""
        ...
    def mixed_step_s(self, new: np.ndarray) -> float:
        """Time of one iteration computing `new` tokens per running sequence."""
        ...
    def stretch_block_limit(self) -> np.ndarray:
        """Blocks per DP rank a stretch may allocate without changing what the scheduler would admit."""
        ...
