"""The policy ↔ cluster contract.

A policy is a global scheduler. The cluster (simulated here; a live vLLM fleet in
`backends/`) tells it what happened — the step started, a chunk ended — and asks it
to `decide`: the policy returns `Dispatch` decisions (request, instance, chunk limit,
whether to pull KV through the pool) and never mutates the cluster. It sees only a
read-only `ClusterView` of what a real scheduler can observe: instance loads and KV
use, each request's tokens so far, where its KV is cached, finished siblings'
lengths. True output lengths are not in the view (an `oracle_*` policy gets them
explicitly and says so in its name).
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterable, Mapping, Protocol, Sequence

import numpy as np

from seersim.config import KVReservation, PolicyConfig


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Run up to `max_new_tokens` more tokens of a request on an instance.

    `pull_kv`: fetch the request's KV missing on the target from the global pool
    (else the target recomputes what it lacks).
    """

    request_id: int
    instance_id: int
    max_new_tokens: int
    pull_kv: bool = False


class ClusterView(Protocol):
    """Read-only, observable state. Arrays are read-only numpy views; do not keep them."""

    @property
    def now_s(self) -> float: ...
    @property
    def num_instances(self) -> int: ...
    @property
    def block_size(self) -> int: ...
    @property
    def max_num_seqs(self) -> int: ...
    @property
    def kv_total_blocks(self) -> np.ndarray: ...
    @property
    def in_flight(self) -> np.ndarray:
        """Chunks dispatched to each instance and not yet returned (incl. KV in transit)."""
        ...
    @property
    def rank_total_blocks(self) -> np.ndarray:
        """KV blocks of each DP attention rank of each instance, shape (instances, ranks);
        each rank has its own KV cache (one rank without DP attention)."""
        ...
    @property
    def rank_reserved_blocks(self) -> np.ndarray:
        """Blocks reserved on each rank of each instance by the in-flight chunks sent to
        it (`RankReservations`; chunked policies only): each chunk's `chunk_blocks` beyond
        its group's shared prompt, plus that prompt (`shared_prompt_blocks`) once per
        rank holding the group."""
        ...
    def group_rank_in_flight(self, group_id: int) -> np.ndarray:
        """Chunks of this group in flight on each rank of each instance (instances, ranks)."""
        ...
    def affinity_ranks(self, request_id: int) -> np.ndarray:
        """The rank of each instance where the request's previous chunk there ran (its own
        context is cached there), -1 where it has not run."""
        ...
    def shared_prompt_blocks(self, group_id: int) -> int:
        """Full prompt blocks the group's requests share on one instance (prefix caching; else 0)."""
        ...
    @property
    def mean_chunk_tokens(self) -> float | None:
        """Mean tokens the chunks returned so far in this step generated (None before any returns)."""
        ...
    @property
    def group_id(self) -> np.ndarray: ...
    @property
    def input_tokens(self) -> np.ndarray: ...
    @property
    def generated_tokens(self) -> np.ndarray:
        """Tokens each request has generated so far (as of its last returned chunk)."""
        ...
    @property
    def max_tokens(self) -> int: ...
    @property
    def num_requests(self) -> int: ...
    def finished_lengths(self, group_id: int) -> list[int]:
        """Output lengths of the group's finished responses (observable: they ended)."""
        ...
    def cached_tokens(self, request_id: int, instance_ids: Iterable[int] | None = None) -> dict[int, int]:
        """Instance id -> tokens of this request's prefix cached there, on `instance_ids`
        (default: every instance it ran on); instances caching nothing are left out."""
        ...
    def cached_tokens_bound(self, request_id: int) -> Mapping[int, int]:
        """Instance id -> what `cached_tokens` there can be at most, for every instance the
        request ran on: its context when its last chunk there ended (at the chunk's limit
        while it runs). A policy looks up only the instances whose bound can matter: each
        lookup reads an engine's KV cache."""
        ...
    def pool_tokens(self, request_id: int) -> int:
        """Tokens of this request's KV held in the global pool."""
        ...
    @property
    def returned_chunks(self) -> Sequence[tuple[int, int, int]]:
        """(instance, DP rank, KV blocks its reservation freed there) of each chunk returned
        since the policy's last `decide`, in order (rank -1, 0 blocks: sent to no rank)."""
        ...


class Policy(ABC):
    """Base of every scheduling policy; subclasses register by `name`."""

    name: ClassVar[str]
    #: True only for reference policies that read hidden output lengths
    uses_true_lengths: ClassVar[bool] = False
    #: speculative-decoding mode the policy switches on in the engines when the
    #: scenario leaves it at "none" (Seer = context-aware + grouped_adaptive)
    speculation: ClassVar[str | None] = None
    #: partial rollout: the simulator over-issues groups and ends steps early (APRIL)
    over_issue: ClassVar[bool] = False
    #: dispatches requests in chunks of policy.chunk_tokens (the work estimate counts them)
    chunked: ClassVar[bool] = True

    def __init__(self, cfg: PolicyConfig) -> None:
        self.cfg = cfg

    def reveal_true_lengths(self, output_tokens: np.ndarray) -> None:
        """Hidden output lengths; given only to policies with `uses_true_lengths`."""
        raise NotImplementedError

    def on_step_start(self, view: ClusterView, request_ids: np.ndarray) -> None:
        """A new RL step: these requests wait for their first chunk."""

    def on_chunk_done(self, view: ClusterView, request_id: int, finished: bool) -> None:
        """A chunk returned; the request is finished, or pending again."""

    @abstractmethod
    def decide(self, view: ClusterView) -> list[Dispatch]:
        """Dispatch decisions now (may be empty: wait for the next event)."""


@dataclass(slots=True)
class Projection:
    """Where a chunk would run on each instance — the DP rank `RankReservations.ranks`
    picks — and the KV blocks it would reserve on that rank; `chunk_blocks` and
    `shared_blocks` are its `chunk_blocks` and its group's shared prompt. (Not frozen:
    one is built per placement try, and a frozen dataclass builds several times slower.)"""

    ranks: np.ndarray
    blocks: np.ndarray
    group: int
    chunk_blocks: int
    shared_blocks: int


class RankReservations:
    """KV blocks reserved on each DP rank of each instance by the chunks in flight: the one
    copy of the rule by which the driver books chunks and `Loads` checks room, so a chunk
    that fits in `Loads` fits on the rank the driver sends it to.

    A chunk runs on the rank holding its request's own earlier context on that instance
    (as the engine's affinity: elsewhere it would recompute all of it), else on the rank
    with the most unreserved blocks, lowest index first (`ranks`). It reserves its
    `chunk_blocks` there, of which its group's shared prompt only where no sibling's chunk
    on that rank holds it yet (prefix caching shares it: once per rank and group,
    `blocks`). A Seer-like global scheduler routes each chunk to its rank (vLLM takes a
    target data-parallel rank per request), so its reservation and its KV land together.

    `group_counts(group)` gives the chunks of a group not booked here yet (the driver:
    none; `Loads`: those the driver booked); a group is copied on its first booking.
    """

    def __init__(
        self, total_blocks: np.ndarray, reserved_blocks: np.ndarray, group_counts: Callable[[int], np.ndarray]
    ) -> None:
        self.total = total_blocks
        self.reserved = reserved_blocks.copy()  # (instances, ranks)
        self.free = total_blocks - reserved_blocks  # unreserved blocks
        self.free_rank = self.free.argmax(axis=1)  # per instance, kept up to date by _take
        #: one rank per instance (no DP attention): every chunk runs on rank 0
        self.single_rank = self.free.shape[1] == 1
        self._initial_counts = group_counts
        self._counts: dict[int, np.ndarray] = {}  # group -> its chunks booked on each (instance, rank)

    def ranks(self, own_ranks: np.ndarray) -> np.ndarray:
        """The rank a chunk runs on at each instance, given the rank of the request's own
        earlier chunk there (-1 where none: `ClusterView.affinity_ranks`)."""
        return np.where(own_ranks >= 0, own_ranks, self.free_rank)

    def rank(self, instance_id: int, own_rank: int) -> int:
        """`ranks` at one instance."""
        return own_rank if own_rank >= 0 else int(self.free_rank[instance_id])

    def group_counts(self, group: int) -> np.ndarray:
        """Chunks of the group in flight on each (instance, rank)."""
        counts = self._counts.get(group)
        return self._initial_counts(group) if counts is None else counts

    @staticmethod
    def blocks(chunk_blocks: int, shared_blocks: int, siblings: np.ndarray | int) -> np.ndarray | int:
        """Blocks a chunk adds to its rank's reservation beside `siblings` (>= 0) chunks of its
        group on that rank (an array: on each instance's rank): its own blocks, plus the
        shared prompt if it is the first there."""
        if isinstance(siblings, np.ndarray):
            return np.where(siblings, chunk_blocks - shared_blocks, chunk_blocks)
        return chunk_blocks - shared_blocks if siblings else chunk_blocks

    def book(self, instance_id: int, rank: int, group: int, chunk_blocks: int, shared_blocks: int) -> None:
        counts = self._counts.get(group)
        if counts is None:
            counts = self._counts[group] = self._initial_counts(group).copy()
        self._take(instance_id, rank, self.blocks(chunk_blocks, shared_blocks, int(counts[instance_id, rank])))
        counts[instance_id, rank] += 1

    def release(self, instance_id: int, rank: int, group: int, chunk_blocks: int, shared_blocks: int) -> int:
        """Undo a `book`; returns the blocks it frees."""
        counts = self._counts[group]
        counts[instance_id, rank] -= 1
        blocks = self.blocks(chunk_blocks, shared_blocks, int(counts[instance_id, rank]))
        self._take(instance_id, rank, -blocks)
        return blocks

    def _take(self, instance_id: int, rank: int, blocks: int) -> None:
        """Reserve `blocks` (release: negative) on the rank, keeping `free_rank` its instance's
        argmax without a scan unless the argmax itself shrinks: another rank shrinking leaves
        it, a rank growing takes over only past it (or level with it at a lower index)."""
        self.reserved[instance_id, rank] += blocks
        row = self.free[instance_id]
        row[rank] -= blocks
        if self.single_rank:
            return
        best = int(self.free_rank[instance_id])
        if rank == best:
            if blocks > 0:
                self.free_rank[instance_id] = row.argmax()
        elif blocks < 0:
            grown, top = int(row[rank]), int(row[best])
            if grown > top or (grown == top and rank < best):
                self.free_rank[instance_id] = rank


class Loads:
    """A policy's tentative bookkeeping within one `decide`: the loads and KV reservations
    its own earlier decisions in the same call will add.

    KV room is checked per DP rank: each rank has its own KV cache and preempts on its
    own, so an instance has room for a chunk when the rank it would run on has. The
    driver books each chunk on that rank by the same `RankReservations` rule, so a chunk
    that fits here never makes its rank preempt."""

    def __init__(self, view: ClusterView, cfg: PolicyConfig) -> None:
        self.view = view
        self.rule = cfg.kv_reservation
        self.in_flight = view.in_flight.astype(np.int64)
        self.max_num_seqs = view.max_num_seqs
        self._seq_room = self.in_flight < self.max_num_seqs
        self.reservations = RankReservations(
            view.rank_total_blocks, view.rank_reserved_blocks, view.group_rank_in_flight
        )
        self._rows = _instance_rows(len(self.in_flight))
        # the in-flight spread, kept by `add`: the least load and how many instances have it, the most
        loads = self.in_flight.tolist()  # (Python's min/max beat numpy's on a few dozen values)
        self._least, self._most = min(loads), max(loads)
        self._at_least = loads.count(self._least)

    @property
    def spread(self) -> int:
        """Most minus least in-flight chunks on an instance."""
        return self._most - self._least

    def projected_blocks(self, request_id: int, max_new_tokens: int) -> Projection:
        """The rank the chunk would run on at each instance and the blocks it would add to
        that rank's reservation: its own context and growth, plus its group's shared
        prompt where no sibling on that rank already holds it."""
        view, res = self.view, self.reservations
        group = int(view.group_id[request_id])
        total = chunk_blocks(view, request_id, max_new_tokens, self.rule)
        shared = view.shared_prompt_blocks(group)
        if res.single_rank:  # (the same, without gathering one rank per instance)
            ranks = _rank_zero(len(self._rows))
            siblings = res.group_counts(group)[:, 0]
        else:
            ranks = res.ranks(view.affinity_ranks(request_id))
            siblings = res.group_counts(group)[self._rows, ranks]
        return Projection(ranks, res.blocks(total, shared, siblings), group, total, shared)

    def headroom(self, p: Projection) -> np.ndarray:
        """Unreserved blocks of the rank the chunk would run on, on each instance."""
        free = self.reservations.free
        return free[:, 0] if self.reservations.single_rank else free[self._rows, p.ranks]

    def has_room(self, p: Projection) -> np.ndarray:
        """Instances where the chunk fits on its rank beside every in-flight chunk's reservation."""
        return (p.blocks <= self.headroom(p)) & self._seq_room

    def seq_room(self) -> list[bool]:
        """Whether each instance has a sequence slot left."""
        return self._seq_room.tolist()

    def add(self, instance_id: int, request_id: int, p: Projection) -> None:
        self.in_flight[instance_id] += 1
        load = int(self.in_flight[instance_id])
        self._seq_room[instance_id] = load < self.max_num_seqs
        self._most = max(self._most, load)
        if load - 1 == self._least:
            self._at_least -= 1
            if not self._at_least:  # it was the last at the least: all now have more
                self._least = load
                self._at_least = self.in_flight.tolist().count(load)
        self.reservations.book(instance_id, int(p.ranks[instance_id]), p.group, p.chunk_blocks, p.shared_blocks)


@functools.cache
def _instance_rows(n: int) -> np.ndarray:
    """0..n-1, read-only (Loads gathers one rank per instance with it on every call)."""
    rows = np.arange(n)
    rows.flags.writeable = False
    return rows


@functools.cache
def _rank_zero(n: int) -> np.ndarray:
    """Rank 0 on each of n instances, read-only (instances without DP attention)."""
    ranks = np.zeros(n, np.int64)
    ranks.flags.writeable = False
    return ranks


def chunk_blocks(view: ClusterView, request_id: int, max_new_tokens: int, rule: KVReservation) -> int:
    """KV blocks an instance reserves for a chunk while it is in flight (`policy.kv_reservation`).

    The chunk's context (prompt + generated) plus its growth allowance (the prompt's
    full blocks are shared with the siblings in flight on the same instance: the
    driver and `Loads` count them once per instance (DP rank) and group):
    - "chunk_limit": the whole chunk — what it holds at its limit, so the instance
      never preempts, but chunks that end early (EOS) leave reserved KV idle;
    - "expected_growth": the mean tokens the step's returned chunks generated (the
      whole chunk until one returns) — over many in-flight chunks the sum concentrates
      near what they will hold; a surplus is the engine's to preempt;
    - "none": nothing — admit on current contexts, and let the engine preempt.
    """
    context = int(view.input_tokens[request_id] + view.generated_tokens[request_id])
    if rule == "chunk_limit":
        growth = max_new_tokens
    elif rule == "expected_growth":
        mean = view.mean_chunk_tokens
        growth = max_new_tokens if mean is None else min(max_new_tokens, math.ceil(mean))
    else:
        growth = 0
    return -(-(context + growth) // view.block_size)


def chunk_limit(view: ClusterView, request_id: int, chunk_tokens: int) -> int:
    """min(chunk, max_tokens − generated): the next chunk of a request (DESIGN §6)."""
    return int(min(chunk_tokens, view.max_tokens - view.generated_tokens[request_id]))


def place_chunk(view: ClusterView, loads: Loads, request_id: int, max_new: int, cfg: PolicyConfig) -> Dispatch | None:
    """Seer's divided-rollout placement rule (DESIGN §6, the paper's §3.2).

    While the in-flight spread is within `imbalance_threshold`, the chunk goes back to
    the instance caching the longest prefix of the request (affinity). Past it, or when
    that instance lacks KV room, it goes to the least-loaded instance with room, which
    pulls the missing KV from the pool when the affinity gap exceeds
    `migrate_margin_tokens`, else recomputes. None when no instance has room.
    """
    blocks = loads.projected_blocks(request_id, max_new)
    room = loads.has_room(blocks)
    if not room.any():
        return None
    prefix = CachedPrefix(view, request_id)
    target = -1
    if loads.spread <= cfg.imbalance_threshold:
        target = prefix.longest(room, loads.in_flight)
    if target < 0:
        candidates = np.flatnonzero(room)
        # fewest in-flight chunks; ties by the most KV headroom (of the rank it would run on), then id
        target = int(candidates[np.lexsort((-loads.headroom(blocks)[candidates], loads.in_flight[candidates]))[0]])
    pull = prefix.pull_pays(target, view.pool_tokens(request_id), cfg.migrate_margin_tokens)
    loads.add(target, request_id, blocks)
    return Dispatch(request_id, target, max_new, pull)


class BlockedHead:
    """Skips a placement try that must fail: the request that found no room at the end of
    the last `decide`, tried first again.

    A chunk finds no room while no instance has KV for it on the rank it would run on
    and a sequence slot (`Loads.has_room`). Between two passes the cluster changes only
    by the chunks that returned (`ClusterView.returned_chunks`), each freeing its KV on
    its rank and a slot on its instance, and the waiting chunk's own reservation can only
    grow (fewer siblings share its prompt). So the try fails again while, on every
    instance a chunk returned to, the waiting chunk's rank is fixed (its earlier context
    is there, or the instance has one rank), a slot was free anyway, and what returned to
    that rank has freed less than the chunk lacked there when it failed (kimi-k2 divided:
    half of its 13K retries; under `expected_growth` the chunk's reservation follows the
    step's mean chunk, which must not have moved either).
    """

    def __init__(self, cfg: PolicyConfig) -> None:
        self.cfg = cfg
        self._request_id = -1  # the request whose try ended the last decide; -1: none did
        self._mean: float | None = None
        # per instance, at that try: the rank the chunk would run on, whether that rank is
        # fixed, whether a slot was free, and the blocks it lacked there (less what has
        # returned to that rank since)
        self._rank: list[int] = []
        self._fixed: list[bool] = []
        self._slot: list[bool] = []
        self._short: list[int] = []

    def place(self, view: ClusterView, loads: Loads, request_id: int) -> Dispatch | None:
        """`place_chunk` of the request's next chunk; where it finds no room (the decide
        ends there), what the chunk lacked is kept for `skip`."""
        max_new = chunk_limit(view, request_id, self.cfg.chunk_tokens)
        d = place_chunk(view, loads, request_id, max_new, self.cfg)
        if d is None:
            self._failed(view, loads, request_id, max_new)
        return d

    def _failed(self, view: ClusterView, loads: Loads, request_id: int, max_new_tokens: int) -> None:
        p = loads.projected_blocks(request_id, max_new_tokens)
        self._request_id, self._mean = request_id, view.mean_chunk_tokens
        self._rank, self._slot = p.ranks.tolist(), loads.seq_room()
        self._short = (p.blocks - loads.headroom(p)).tolist()
        n = len(self._rank)
        self._fixed = [True] * n if loads.reservations.single_rank else (view.affinity_ranks(request_id) >= 0).tolist()

    def skip(self, view: ClusterView, request_id: int) -> bool:
        """Whether this decide's first try, of `request_id`, must fail as the last one did
        (then the decide dispatches nothing); else the last failure is forgotten."""
        if request_id == self._request_id and self._still_short(view):
            return True
        self._request_id = -1
        return False

    def _still_short(self, view: ClusterView) -> bool:
        if self.cfg.kv_reservation == "expected_growth" and view.mean_chunk_tokens != self._mean:
            return False
        short = self._short
        for instance_id, rank, freed_blocks in view.returned_chunks:
            if not (self._fixed[instance_id] and self._slot[instance_id]):
                return False
            if rank == self._rank[instance_id]:
                short[instance_id] -= freed_blocks
                if short[instance_id] <= 0:
                    return False
        return True


class CachedPrefix:
    """A request's cached prefix on the instances it ran on, looked up lazily.

    Each lookup reads (and first settles) an engine's KV cache, and a placement usually
    needs only the instance its last chunk ran on: the others are visited in descending
    order of `cached_tokens_bound`, and only while their bound can still change the
    answer, which is therefore the one a lookup of every instance gives."""

    def __init__(self, view: ClusterView, request_id: int) -> None:
        self.view, self.request_id = view, request_id
        self._bound = view.cached_tokens_bound(request_id)
        self._by_bound = sorted(self._bound, key=self._bound.__getitem__, reverse=True)
        self._tokens: dict[int, int] = {}

    def on(self, instance_id: int) -> int:
        """Tokens of the prefix cached on the instance (0 where the request never ran)."""
        tokens = self._tokens.get(instance_id)
        if tokens is None:
            tokens = 0
            if instance_id in self._bound:
                tokens = self.view.cached_tokens(self.request_id, (instance_id,)).get(instance_id, 0)
            self._tokens[instance_id] = tokens
        return tokens

    def longest(self, room: np.ndarray, in_flight: np.ndarray) -> int:
        """The instance with room caching the longest prefix (ties by load, then id); -1
        when none with room caches any."""
        best: tuple[int, int, int] | None = None
        for i in self._by_bound:
            if best is not None and self._bound[i] < -best[0]:
                break  # it and the rest cache less than the best so far
            if room[i]:
                tokens = self.on(i)
                if tokens > 0 and (best is None or (-tokens, in_flight[i], i) < best):
                    best = (-tokens, in_flight[i], i)
        return -1 if best is None else best[2]

    def pull_pays(self, instance_id: int, pooled_tokens: int, margin_tokens: int) -> bool:
        """Whether a chunk on the instance pulls its missing KV: the pool holds more of the
        request than the instance caches, and some instance caches more than
        `margin_tokens` beyond it (else it recomputes what it lacks)."""
        local = self.on(instance_id)
        return pooled_tokens > local and self.longest_exceeds(local + margin_tokens)

    def longest_exceeds(self, tokens: int) -> bool:
        """Whether some instance caches more than `tokens` of the prefix."""
        for i in self._by_bound:
            if self._bound[i] <= tokens:
                return False
            if self.on(i) > tokens:
                return True
        return False
