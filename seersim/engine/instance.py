"""One inference instance: a vLLM-like engine with paged KV, continuous batching,
chunked prefill, prefix caching, preemption by recompute — and fast-forward.

Reading guide
-------------
- `_schedule()` is one engine iteration's scheduler, as vLLM v1's, run by every DP
  rank on its own KV cache and waiting queue (one rank without DP, `engine/dp.py`):
  running sequences first (in admission order) each take min(needed, remaining token
  budget) tokens and the KV blocks for them; when a rank's blocks run out its most
  recently admitted sequence is preempted (freed, back to the front of that rank's
  queue, recomputed later); then, on each rank that did not preempt, waiting
  requests are admitted in order while the token budget, `max_num_seqs` and KV
  blocks (after prefix-cache hits on that rank) allow.
- When that iteration is *pure decode* (no admission, no preemption, every sequence
  takes one token), the batch stays the same until the first of: a sequence finishes
  its chunk, the blocks run out, or a dispatch arrives. `_plan()` computes that step
  count in closed form and the engine takes one simpy timeout for all of them. So do
  runs of identical budget-cut prefill iterations (`_prefill_plan`), and a mixed or
  preemption iteration followed by a pure decode tail.
- A dispatch arriving mid-stretch interrupts it; the steps already done are settled
  and the step in progress completes (vLLM schedules between steps), then re-plan.

The running batch (`batch.RunningBatch`) is a struct of numpy columns in admission
order, so bookkeeping per event is vectorised; Python loops touch only the sequences
that change. Speculative decoding is a strategy (`specdec.SpecDecoder`) the instance
calls at fixed points: before scheduling, to plan, and to know what decodes emit.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import simpy

from seersim.config import EngineConfig
from seersim.cost import CostModel
from seersim.engine.batch import Plan, RunningBatch, all_of, any_of, indices_of, max_of, min_of
from seersim.engine.dp import DPRanks
from seersim.engine.events import AFTER_STRETCHES, TIE_REL, At, PendingEnds, delay_to
from seersim.engine.kvcache import KVCache, prompt_key
from seersim.engine.specdec import SpecDecoder
from seersim.engine.stretch import HeadStretch, LinearStretch, TabulatedStretch, steps_within
from seersim.errors import SimulationError
from seersim.requests import RequestTable


class ChunkDone(Protocol):
    """How an instance reports a chunk that ended (to its backend)."""

    def __call__(self, instance_id: int, request_id: int, finished: bool) -> None: ...


@dataclass(slots=True)
class InstanceStats:
    busy_s: float = 0.0
    iterations: int = 0
    preemptions: int = 0
    prefill_tokens: int = 0
    emitted_tokens: int = 0
    verified_tokens: int = 0
    decode_seq_steps: int = 0  # Σ over decode iterations of sequences decoding
    decode_emitted_tokens: int = 0


_RANK_0, _NO_RANK = np.zeros(1, np.int64), np.zeros(0, np.int64)  # rank lists of a one-rank instance
_RANK_0_LIST = (0,)


def _ceil_div(a: np.ndarray | int, b: np.ndarray | int):
    """⌈a / b⌉ for integers, b > 0 (two numpy passes over an array a and an int b)."""
    return (a + (b - 1)) // b


class Instance:
    def __init__(
        self,
        instance_id: int,
        env: simpy.Environment,
        kvs: list[KVCache],
        cost: CostModel,
        cfg: EngineConfig,
        table: RequestTable,
        prompt_blocks: np.ndarray,
        on_chunk_done: ChunkDone,
        spec: SpecDecoder | None = None,
        end_priority: float = 2.0,
        ends: PendingEnds | None = None,
    ) -> None:
        self.id = instance_id
        self.env = env
        self.kvs = kvs  # one KV cache per DP rank (`engine/dp.py`)
        self.cost = cost
        self.cfg = cfg
        self.table = table
        self.prompt_blocks = prompt_blocks  # full prompt blocks prefix caching can share
        self.on_chunk_done = on_chunk_done
        self.spec = spec
        self.end_priority = end_priority  # events.stretch_end_priority of this instance
        self._ends = ends if ends is not None else PendingEnds()  # shared by the cluster's instances
        self.bs = kvs[0].block_size
        self.fast_forward = cfg.mode == "fast_forward"
        dp = len(kvs)
        self.ranks = DPRanks(cost, dp)
        # per-rank shares of the engine's limits (the configured values are per instance)
        self._rank_max_seqs = cfg.max_num_seqs // dp
        self._rank_budget = cfg.max_num_batched_tokens // dp
        self._decodes_fit_budget = self._rank_max_seqs <= self._rank_budget
        self.stats = InstanceStats()
        self.samples: list[tuple] = []  # timeline rows (backends.base.TIMELINE_COLUMNS after "instance")
        # each rank's waiting queue of (request id, tokens left in chunk), as each vLLM DP
        # rank is an engine core with its own scheduler; with several ranks a dispatched
        # chunk waits in `_arrivals` (with the rank it was sent to, or None) until the
        # next boundary puts it on that rank, or picks one
        self.queues: list[deque[tuple[int, int]]] = [deque() for _ in range(dp)]
        self._arrivals: deque[tuple[int, int, int | None]] = deque()
        # per rank: its KV cache's version and its token budget when its waiting head last
        # failed the KV check (version -1: none did, or the head changed since). It fails
        # again while the version stands (only a release frees blocks, and it bumps the
        # version) and the budget has not shrunk (`_schedule`)
        self._blocked_version = [-1] * dp
        self._blocked_budget = [0] * dp
        self._preempted: np.ndarray = _NO_RANK  # ranks that preempted in the last iteration
        self.batch = RunningBatch()
        self._wake: simpy.Event | None = None
        self._interruptible = False
        self._current: tuple[Plan, float] | None = None  # the stretch in progress and its start
        self.spans_epochs = False  # it is speculative and runs into later epochs (`sibling_finished`)
        self._kv_pre = np.zeros(dp, np.int64)  # blocks per rank of that stretch allocated early by settle_kv()
        self._pending: tuple[Plan, list[int]] | None = None  # `_pending_blocks` of a plan
        # a sequence will emit its first token in a decode iteration (its prompt was
        # fully cached at admission, or a prefill left exactly one prompt token)
        self._fresh_decoders = False
        self.process = env.process(self._run())

    # ------------------------------------------------------------------ observable state
    @property
    def block_size(self) -> int:
        return self.bs

    @property
    def num_running(self) -> int:
        return len(self.batch)

    @property
    def num_waiting(self) -> int:
        if self.ranks.dp == 1:
            return len(self.queues[0])
        return len(self._arrivals) + sum(map(len, self.queues))

    @property
    def kv_total_blocks(self) -> int:
        return sum(kv.total_blocks for kv in self.kvs)

    @property
    def kv_used_blocks(self) -> int:
        return self._kv_blocks()[0]

    @property
    def kv_cached_blocks(self) -> int:
        return self._kv_blocks()[1]

    def _kv_blocks(self) -> tuple[int, int]:
        """(used, cached) blocks over the ranks' caches, in one pass."""
        used = cached = 0
        for kv in self.kvs:
            used += kv.used_blocks
            cached += kv.cached_blocks
        return used, cached

    def cached_prefix_blocks(self, request_id: int) -> int:
        """Blocks of the request's prefix cached here, on the rank holding the most of it,
        exactly as step by step: the current stretch's allocations so far are settled
        first (`settle_kv`) where they could evict part of a hit (`_settle_for_lookup`)."""
        group, p_blocks = int(self.table.group_id[request_id]), int(self.prompt_blocks[request_id])
        keys = (request_id, prompt_key(group)) if p_blocks else (request_id,)
        if self.ranks.dp == 1:
            kv = self.kvs[0]
            if not kv.may_hit(request_id, group, p_blocks):
                return 0  # (settling only evicts: nothing to find either way)
            self._settle_for_lookup(keys, _RANK_0_LIST)
            return sum(kv.prefix_blocks(request_id, group, p_blocks))
        # (the directory lists every rank that ever stored a key: the request's own
        # context is a hit only on those ranks, elsewhere only the prompt's present part)
        kvs, where = self.kvs, self.kvs[0].directory
        own_ranks = where.get(request_id, ())
        prompt_ranks = where.get(keys[1], ()) if p_blocks else ()
        for r in prompt_ranks if p_blocks else own_ranks:  # (loops: any()/max() over generators cost more here)
            if kvs[r].may_hit(request_id, group, p_blocks):
                break
        else:
            return 0
        self._settle_for_lookup(keys, own_ranks, prompt_ranks)
        best = 0
        for r in own_ranks:
            hit, own = kvs[r].prefix_blocks(request_id, group, p_blocks)
            if hit + own > best:
                best = hit + own
        if p_blocks and best < p_blocks:
            for r in prompt_ranks:
                if r not in own_ranks:
                    present = kvs[r].prompt_blocks_present(group)
                    if present > best:
                        best = min(present, p_blocks)
                        if best == p_blocks:
                            break
        return best

    def _settle_for_lookup(self, keys: tuple[int, ...], own_ranks, prompt_ranks=()) -> None:
        """`settle_kv()` before a lookup of `keys`' cache entries on `own_ranks` and
        `prompt_ranks`, unless the stretch's allocations cannot evict a block of them there.

        Bounded by what the whole stretch allocates beyond the blocks settled so far
        (`_pending_blocks`), a rank's allocations would evict only entries ahead of
        `keys`' in its LRU order (`KVCache.blocks_before_eviction_of`), so the lookup finds the same
        with or without settling; and deferring a settle is exact (see `settle_kv`). A
        looked-up entry is usually recent and a stretch allocates a few blocks, so most
        lookups settle nothing.
        """
        if self._current is None:
            return
        plan = self._current[0]
        if plan.blocks_fn is None:
            return
        if plan.may_evict is None:
            plan.may_evict = self._may_evict(plan)
        if not plan.may_evict:
            return
        pending, kvs = self._pending_blocks(plan), self.kvs
        for ranks, seen in ((own_ranks, ()), (prompt_ranks, own_ranks)):  # each rank once
            for r in ranks:
                blocks = pending[r]
                if blocks and r not in seen and blocks > kvs[r].blocks_before_eviction_of(keys, blocks):
                    self.settle_kv()
                    return

    def _pending_blocks(self, plan: Plan) -> list[int]:
        """Per rank, the blocks the stretch may still allocate beyond those settled so far
        (its total minus `_kv_pre`; kept until `settle_kv` allocates or the plan changes)."""
        cached = self._pending
        if cached is not None and cached[0] is plan:
            return cached[1]
        if plan.total_blocks is None:
            plan.total_blocks = plan.blocks_fn(plan.steps)
        pending = (plan.total_blocks - self._kv_pre).tolist()
        self._pending = (plan, pending)
        return pending

    def check_kv(self, idle: bool = False) -> None:
        for kv in self.kvs:
            kv.check(idle)

    # ------------------------------------------------------------------ input
    def enqueue(self, request_id: int, left_tokens: int, rank: int | None = None) -> None:
        """A dispatched chunk arrives; it joins at the next iteration boundary, on `rank`
        (the DP rank its dispatcher reserved KV on), else on the rank `_pick_rank` picks."""
        if self.ranks.dp == 1:
            self.queues[0].append((request_id, left_tokens))
        else:
            self._arrivals.append((request_id, left_tokens, rank))
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()
        elif self._interruptible:
            self._interruptible = False
            self.process.interrupt()

    # ------------------------------------------------------------------ main loop
    def _run(self):
        env = self.env
        while True:
            if not len(self.batch) and not self.num_waiting:
                self._wake = env.event()
                yield self._wake
                self._wake = None
                continue
            plan = self._plan()
            if plan is None:
                rank = next(r for r, q in enumerate(self.queues) if q)
                rid, _ = self.queues[rank][0]
                need = int(self.table.input_tokens[rid] + self.table.generated[rid])
                raise SimulationError(
                    f"instance {self.id}: request {rid} needs {need} tokens of KV but its DP rank holds only "
                    f"{self.kvs[rank].total_blocks * self.bs}; raise KV memory (engine.kv_capacity_tokens, GPUs per "
                    "instance) or lower workload.max_tokens"
                )
            start = env.now
            steps = plan.steps
            self._interruptible = steps > 1
            self._current = (plan, start)
            self.spans_epochs = plan.kind == "spec_decode" and self.spec.spans_epochs
            end, delay = self._end_at(plan.stretch.cumulative(steps))
            try:
                yield At(env, delay, self.end_priority)
            except simpy.Interrupt as stop:
                # Settle the steps already done; the one in progress completes (or, for a
                # sibling finishing, the speculative epoch in progress: `sibling_finished`).
                while True:
                    self._ends.release(end)
                    cut = stop.cause if stop.cause is not None else self._steps_done(plan, start, steps) + 1
                    steps = min(cut, steps)
                    end, delay = self._end_at(max(0.0, start + plan.stretch.cumulative(steps) - env.now))
                    try:
                        yield At(env, delay, self.end_priority)
                        break
                    except simpy.Interrupt as again:
                        stop = again
            self._ends.release(end)
            self._interruptible = False
            self._current = None
            self.spans_epochs = False
            self._count(plan, steps)
            if self._advance(plan, steps, start):
                # Chunks ended: let the global scheduler's pass at this instant (already
                # queued) dispatch before this engine schedules its next iteration.
                yield At(env, 0.0, AFTER_STRETCHES)

    def sibling_finished(self, group: int, priority: float) -> None:
        """A request of `group` finished on another instance, at an event of `priority`
        (its stretch end). A speculative stretch running into later epochs whose batch
        holds the group ends at the first epoch end not yet reached, so the next epoch's
        drafts see the new finished count, as step by step (an epoch end at this very
        instant is reached if its event, step by step, comes first). Later finishes can
        only cut it there again: it stops listening."""
        plan, start = self._current
        if plan.groups is None:  # (the batch is fixed in a stretch; finishes come several per stretch)
            plan.groups = set(self.batch.group.tolist())
        if group not in plan.groups:
            return
        now = self.env.now
        for end in self.spec.epoch_ends:
            ahead_s = (start + plan.stretch.cumulative(end)) - now
            tie = abs(ahead_s) <= TIE_REL * now  # (one instant: `engine/events.py`)
            if (ahead_s > 0 and not tie) or (tie and priority < self.end_priority):
                self.spans_epochs = False
                self.process.interrupt(end)
                return
        self.spans_epochs = False  # every epoch it planned has started

    def _end_at(self, delay_s: float) -> tuple[float, float]:
        """(instant, delay) of a stretch end due `delay_s` from now: an equal end pending
        on another instance lends its float (`events.PendingEnds`)."""
        now = self.env.now
        t = now + delay_s
        end = self._ends.claim(t, now)
        return end, (delay_s if end == t else delay_to(now, end))

    def _steps_done(self, plan: Plan, start: float, steps: int) -> int:
        """Iterations of the stretch (at most `steps`) ended by now; one ending at an
        instant equal to now (`events.TIE_REL`) has: step by step, its event comes
        before whatever observes or interrupts the instance now."""
        now = self.env.now
        return plan.stretch.steps_done_by((now - start) + TIE_REL * now, steps)

    def _count(self, plan: Plan, steps: int) -> None:
        """Add `steps` iterations of the plan to the busy time and iteration count."""
        self.stats.busy_s += plan.stretch.cumulative(steps)
        self.stats.iterations += steps

    def settle_kv(self, rank: int | None = None) -> None:
        """Apply the KV allocations of the iterations started so far in the current stretch.

        A fast-forwarded stretch allocates its blocks when it ends; iteration by
        iteration they would be allocated (evicting cached prefixes) as each starts.
        Whoever reads this instance's KV mid-stretch (a policy's view of cached
        prefixes, a KV pull landing) calls this first, so it sees exactly what
        step-by-step simulation shows. A policy's lookup of cached prefixes calls it only
        where the allocations could evict what it reads (`_settle_for_lookup`).

        `rank`: settle only that DP rank (a KV pull lands on one): each rank's cache is
        its own, so the other ranks' allocations wait for a later settle or the stretch's
        end, exactly as every deferred settle does.
        """
        if self._current is None:
            return
        plan, start = self._current
        if plan.blocks_fn is None:
            return
        k = min(self._steps_done(plan, start, plan.steps) + 1, plan.steps)
        if k <= plan.settled_steps:
            return  # its allocations are applied already
        target = plan.blocks_fn(k)
        if rank is not None and self.ranks.dp > 1:
            only = self._kv_pre.copy()  # the other ranks stay as settled so far
            only[rank] = target[rank]
            target = only
        else:
            plan.settled_steps = k
        more = target - self._kv_pre
        if any_of(more > 0):
            self._allocate(np.maximum(more, 0))
            self._kv_pre = np.maximum(target, self._kv_pre)
            self._pending = None

    def _may_evict(self, plan: Plan) -> bool:
        """Whether the rest of the stretch's allocations may evict a cached block on some rank."""
        return any(blocks > kv.uncached_free_blocks for blocks, kv in zip(self._pending_blocks(plan), self.kvs))

    def abort(self) -> None:
        """The RL step ended early (partial rollout): keep the iterations completed so far,
        record every running request's tokens, and free the KV."""
        if self._current is not None:
            plan, start = self._current
            done = self._steps_done(plan, start, plan.steps)
            self._current = None
            self.spans_epochs = False
            self._undo_pre()  # _advance re-allocates the completed iterations' blocks
            if done:
                self._count(plan, done)
                self._advance(plan, done, start)
        table, b = self.table, self.batch
        generated = b.tokens - table.input_tokens[b.rid]
        for i in range(len(b) - 1, -1, -1):
            table.generated[b.rid[i]] = generated[i]
            self._release(i, cache=False)
        b.keep(slice(0, 0))
        self._arrivals.clear()
        for q in self.queues:
            q.clear()
        self._blocked_version = [-1] * len(self.kvs)

    def _undo_pre(self) -> None:
        for r, blocks in enumerate(self._take_pre().tolist()):
            if blocks:
                self.kvs[r].release(blocks)

    def _allocate(self, per_rank: np.ndarray) -> None:
        """Allocate `per_rank[r]` blocks in rank r's KV cache."""
        for kv, blocks in zip(self.kvs, per_rank.tolist()):
            if blocks:
                kv.allocate(blocks)

    def _short_ranks(self, per_rank: np.ndarray) -> np.ndarray:
        """The ranks (ascending) whose KV cannot give them `per_rank[r]` more blocks (only
        ranks taking some are looked at: in a decode step most take none)."""
        kvs = self.kvs
        taking = indices_of(per_rank)
        if not len(taking):
            return _NO_RANK
        return np.array([r for r, n in zip(taking.tolist(), per_rank[taking].tolist()) if n > kvs[r].free_blocks], np.int64)

    def _free_blocks(self) -> np.ndarray:
        """Blocks each rank may still allocate (free + evictable cached)."""
        if self.ranks.dp == 1:
            return np.array((self.kvs[0].free_blocks,), np.int64)
        return np.array([kv.free_blocks for kv in self.kvs], np.int64)

    def _take_pre(self) -> np.ndarray:
        """Blocks per rank of the ending stretch that settle_kv() allocated early (then reset;
        read the result, never write it)."""
        pre = self._kv_pre
        if any_of(pre):
            self._kv_pre = np.zeros(self.ranks.dp, np.int64)
        return pre

    # ------------------------------------------------------------------ scheduling
    def _plan(self) -> Plan | None:
        if self.spec is not None:
            self.spec.begin_iteration(self)
        new, changed, preempted, budget_blocked, decodes = self._schedule()
        if new is None:
            return None
        if changed:
            self._sample()
        if self.spec is not None:
            return self.spec.plan(self, new, changed, preempted)
        b = self.batch
        computed = b.computed
        # Pure decode (every sequence takes one token, no preemption): the batch stays the
        # same until a chunk ends or blocks run out; admission cannot become possible
        # later in the stretch (free blocks only shrink), so it may follow an admission.
        if not preempted and (decodes or all_of(new == 1)):
            stretch = self._decode_stretch(computed)
            steps = self._pure_steps(computed, min_of(b.left), allocated=True) if self.fast_forward else 1
            return Plan(steps, stretch, "decode", new, self._decode_blocks_fn(computed, 0))
        if self.fast_forward and not preempted:
            plan = self._prefill_plan(new)
            if plan is not None:
                return plan
        after = computed + new
        tail_stretch = None
        if decodes and self.ranks.dp == 1:
            # every sequence decodes one token (a preemption iteration): the iteration is
            # the decode stretch's from its context, as `mixed_step_s` prices it (its
            # extra prefill pairs are 0: Σ pairs = Σ context)
            tail_stretch = self._decode_stretch(after)
            head_s = tail_stretch.step_time(0)
        else:
            head_s = self.mixed_step_s(new)
        # After this mixed iteration, if every sequence has finished its prefill (and
        # emits a token), nobody's chunk ends, and admission was not stopped by the token
        # budget (which frees up next iteration), a pure decode tail follows.
        # (When every sequence decodes, all finish their prefill, and only a fresh decoder,
        # computing its prompt's last token, can publish a prompt.)
        tail = 0
        if self.fast_forward and not budget_blocked and (not preempted or self._preempted_ranks_stay_blocked()):
            steps = min_of(b.left) - 1  # before a chunk ends
            if (
                steps > 0
                and (decodes or all_of(new == b.tokens - computed))
                and not ((self._fresh_decoders or not decodes) and self._publishes_prompt(new))
            ):
                tail = self._pure_steps(after, steps, allocated=False)
        if not tail:
            return Plan(1, TabulatedStretch.single(head_s), "mixed", new)
        if tail_stretch is None:
            tail_stretch = self._decode_stretch(after)
        return Plan(1 + tail, HeadStretch(head_s, tail_stretch), "mixed", new, self._decode_blocks_fn(after, 1))

    def _preempted_ranks_stay_blocked(self) -> bool:
        """Whether no rank that preempted in this iteration would admit in the next one.

        Such a rank did not try to admit (vLLM admits nothing in a step that preempted).
        Next iteration it tries with the same batch; if its waiting head is then held
        back by `max_num_seqs`, the token budget its running sequences leave, or KV, it
        stays so through a decode tail (free blocks only shrink), so the preemption
        iteration can head a decode stretch (a KV-saturated instance preempts, decodes
        until its blocks run out, and preempts again)."""
        b, dp = self.batch, self.ranks.dp
        seqs = [len(b)] if dp == 1 else b.rank_counts(dp).tolist()
        for r in self._preempted.tolist():
            budget = self._rank_budget - seqs[r]  # (the tail needs every sequence decoding next)
            queue = self.queues[r]
            if queue and seqs[r] < self._rank_max_seqs and budget > 0 and self._admission_need(self.kvs[r], queue[0][0], budget)[-1]:
                return False
        return True

    def _decode_blocks_fn(self, computed: np.ndarray, head: int, growth: np.ndarray | int = 1):
        """blocks_fn of a stretch whose sequences compute `growth` tokens per iteration
        (1: a decode) after `head` mixed iterations."""
        held = self.batch.blocks + self.batch.shared
        bs, ranks, rank = self.bs, self.ranks, self.batch.rank

        def blocks(k: int) -> np.ndarray:
            if k <= head:
                return np.zeros(ranks.dp, np.int64)
            return ranks.per_rank(rank, np.maximum(_ceil_div(computed + (k - head) * growth, bs) - held, 0))

        return blocks

    def _prefill_plan(self, new: np.ndarray) -> Plan | None:
        """A stretch of identical mixed iterations, or None.

        While prefills (a long prompt, a preempted sequence's recompute) are cut by the
        token budget, every iteration schedules the same `new` tokens per sequence:
        running sequences take the budget in the same order, a waiting head held back
        by the budget or `max_num_seqs` stays so, and one held back by KV stays so
        (free blocks only shrink). That lasts until the first of: a prefill would
        complete (its first token changes the batch), a decode's chunk ends, a prompt
        is published (allowed in the last iteration: it shows at the stretch's end, as
        step by step), or a rank runs out of blocks. Context and attention pairs grow
        linearly, so the time is a closed-form sum (`DPRanks.growing_stretch`).
        """
        b = self.batch
        need = b.tokens - b.computed
        prefilling = (new > 0) & (need > 1)
        if not any_of(prefilling) or self._fresh_decoders:
            return None
        steps = int(((need[prefilling] - 1) // new[prefilling]).min())  # no prefill completes
        if steps <= 1:
            return None
        decoding = (new > 0) & (need == 1)
        if any_of(decoding & (b.tokens == b.prompt)):
            return None  # a first token is due: recorded by the single-iteration path
        if any_of(decoding):
            steps = min(steps, int(b.left[decoding].min()))
        if steps > 1 and self.cfg.prefix_caching:
            p = b.shareable
            crossing = prefilling & (b.shared == 0) & (p > 0) & (b.computed < p)
            if any_of(crossing):
                steps = min(steps, int(_ceil_div(p[crossing] - b.computed[crossing], new[crossing]).min()))
        if steps <= 1:
            return None
        blocks_fn = self._decode_blocks_fn(b.computed, 0, new)
        steps = steps_within(blocks_fn, self.stretch_block_limit(), steps)
        if steps <= 1:
            return None
        stretch = self._prefill_stretch(new, steps)
        if stretch is None:
            return None
        return Plan(steps, stretch, "prefill", new, blocks_fn)

    def _prefill_stretch(self, new: np.ndarray, steps: int) -> LinearStretch | None:
        """Iterations that each compute `new` tokens per sequence (as `mixed_step_s`),
        with each rank's context and prefill pairs growing linearly."""
        R = self.ranks
        rank, k, seqs, growth, context, pairs = self._rank_work(new)
        extra_growth = R.per_rank(rank, k * k) - growth  # pairs grow by k², context by k
        return R.growing_stretch(seqs, growth, pairs - context, extra_growth, context, growth, steps)

    def _rank_work(self, new: np.ndarray) -> tuple[np.ndarray, ...]:
        """An iteration computing `new` tokens per running sequence (dp > 1): the scheduled
        sequences' ranks and tokens, and per rank their count, tokens, context after the
        iteration and attention pairs."""
        b, R = self.batch, self.ranks
        scheduled = new > 0
        if all_of(scheduled):
            c, k, rank, seqs = b.computed, new, b.rank, b.rank_counts(R.dp)
        else:
            c, k, rank = b.computed[scheduled], new[scheduled], b.rank[scheduled]
            seqs = R.per_rank(rank)
        context = R.per_rank(rank, c + k)
        pairs = R.per_rank(rank, k * c + k * (k + 1) // 2)
        return rank, k, seqs, R.per_rank(rank, k), context, pairs

    def _decode_stretch(self, computed: np.ndarray) -> LinearStretch:
        """Iterations of a plain decode batch from `computed` tokens per sequence (each
        rank's context grows by its sequence count per iteration)."""
        R, b = self.ranks, self.batch
        if R.dp == 1:
            return R.decode_stretch(len(b), int(computed.sum()))
        return R.decode_stretch(b.rank_counts(R.dp), R.per_rank(b.rank, computed))

    def mixed_step_s(self, new: np.ndarray) -> float:
        """Time of one iteration computing `new` tokens per running sequence (prefill
        chunks attend to their earlier tokens and to each other causally)."""
        R = self.ranks
        if R.dp == 1:  # (DPRanks.step_s of one rank, without per-rank arrays)
            scheduled = new > 0
            c, k = self.batch.computed[scheduled], new[scheduled]
            context_tokens = int(np.add.reduce(c + k))
            pairs = int(np.add.reduce(k * c + k * (k + 1) // 2))
            return R.cost.step_lines(len(k), int(np.add.reduce(k)), pairs - context_tokens, 1.0).at(float(context_tokens))
        _, _, seqs, tokens, context, pairs = self._rank_work(new)
        return R.step_s(seqs, tokens, pairs - context, np.ones(R.dp), context)

    def _pure_steps(self, computed: np.ndarray, steps: int, allocated: bool) -> int:
        """Pure-decode steps the batch can run unchanged from `computed` tokens each, at
        most `steps` (where the first chunk ends).

        With `allocated`, step 1's blocks are held already (and step 1 always runs).
        """
        bs = self.bs
        n = len(computed)
        # Step j writes token computed+j; it needs a block when (computed + j - 1) % bs == 0,
        # so a sequence demands at most steps // bs + 1 blocks in steps 1..steps: when each
        # rank has that many per sequence, its blocks outlast the chunks
        per_seq = steps // bs + 1
        if self.ranks.dp == 1:
            free = self.kvs[0].free_blocks
            short = n * per_seq > free
        else:
            limit = self.stretch_block_limit()
            counts = self.batch.rank_counts(self.ranks.dp)
            short = not all_of(counts * per_seq <= limit)
        if short:
            first = (-computed) % bs + 1
            if allocated:
                first[first < 2] += bs
            # Demands repeat every bs steps, one per sequence, so a rank's (free+1)-th
            # demand falls in period q at the r-th smallest offset of its sequences.
            if self.ranks.dp == 1:
                q, r = divmod(free, n)
                fail_step = int(np.partition(first, r)[r]) + q * bs
            else:
                busy = indices_of(counts)
                span = 2 * bs + 1  # offsets lie in 1..2·bs: sort by (rank, offset) in one key
                key = self.batch.rank * span + first
                if self.ranks.dp * span <= 1 << 15:
                    key = key.astype(np.int16)  # (numpy's stable sort of int16 is a radix sort, 4-5x faster)
                by_rank = np.sort(key, kind="stable") % span  # offsets sorted within each rank
                q, r = np.divmod(limit[busy], counts[busy])
                fail_step = min_of(by_rank[(np.cumsum(counts) - counts)[busy] + r] + q * bs)
            steps = min(steps, fail_step - 1)
        return max(1, steps) if allocated else max(0, steps)

    def _publishes_prompt(self, new: np.ndarray) -> bool:
        """Whether this iteration's prefill will publish a group prompt: a waiting request
        could then hit it (and become admissible), and the policy's view of cached
        prefixes changes, so the iteration must end at its own boundary."""
        if not self.cfg.prefix_caching:
            return False
        b = self.batch
        p = b.shareable
        return any_of((b.shared == 0) & (p > 0) & (b.computed < p) & (b.computed + new >= p))

    def stretch_block_limit(self) -> np.ndarray:
        """Blocks per rank a stretch may allocate without changing what the scheduler would admit.

        Free blocks only shrink during a stretch, so a waiting head blocked by KV stays
        blocked: each block its rank allocates takes one free block and evicts at most
        one block of the head's cached hit, which lowers what its admission needs
        (hit + chunk) by at most that block (eviction goes block by block, own context
        before its prompt); a head held back by the token budget or `max_num_seqs`
        stays so. Each rank has its own KV, so the argument holds rank by rank.
        """
        return self._free_blocks()

    def _schedule(self) -> tuple[np.ndarray | None, bool, bool, bool, bool]:
        """One iteration's scheduling decision (vLLM v1 semantics, each DP rank on its own).

        Returns (new tokens per running sequence, batch changed, preempted, admission
        stopped by the token budget, every sequence decodes one token); allocates the
        iteration's KV blocks. new is None when nothing can run.
        """
        if self._arrivals:
            self._assign_arrivals()
        bs, b, dp, ranks = self.bs, self.batch, self.ranks.dp, self.ranks
        n = len(b)
        short = _NO_RANK
        decodes = True  # every running sequence decodes one token (its rank's tokens: its sequences)
        if n:
            need = b.tokens - b.computed
            if self.spec is not None:
                need += b.gamma
            if self.spec is None and (self._decodes_fit_budget or n <= self._rank_budget) and max_of(need) == 1:
                # every sequence decodes one token (the common case; each needs at least one):
                # its block holds ceil(computed/bs) blocks, so it needs a new one exactly at a
                # boundary
                new = need
                add = (b.computed % bs == 0).astype(np.int64)
            else:
                decodes = False
                new, rank_tokens = self._budget_cut(need)
                add = np.maximum(_ceil_div(b.computed + new, bs) - b.shared - b.blocks, 0)
            if dp == 1:  # (the same, without per-rank arrays)
                add_blocks = int(add.sum())
                short = _RANK_0 if add_blocks > self.kvs[0].free_blocks else _NO_RANK
            else:
                add_blocks = ranks.per_rank(b.rank, add)
                short = self._short_ranks(add_blocks)
            if len(short):
                keep = self._preempt_from_the_back(short, add)
                b.keep(keep)
                new, add = new[keep], add[keep]
                add_blocks = int(add.sum()) if dp == 1 else ranks.per_rank(b.rank, add)
                if not decodes:
                    rank_tokens = int(new.sum()) if dp == 1 else ranks.per_rank(b.rank, new)
            if dp == 1:
                self.kvs[0].allocate(add_blocks)
            else:
                self._allocate(add_blocks)
            b.blocks += add
        else:
            new = np.zeros(0, np.int64)
        queues = self.queues
        admitted = budget_blocked = False
        if any(queues):
            if dp == 1:  # (Python ints)
                budgets = [self._rank_budget - (len(b) if decodes else rank_tokens)]
                rooms = [self._rank_max_seqs - len(b)]
            else:
                seqs = b.rank_counts(dp)
                budgets = (self._rank_budget - (seqs if decodes else rank_tokens)).tolist()
                rooms = (self._rank_max_seqs - seqs).tolist()
            stopped = short.tolist()  # no admission on a rank that preempted in this iteration
            kvs, blocked_version, blocked_budget = self.kvs, self._blocked_version, self._blocked_budget
            admissible = [
                r
                for r, q in enumerate(queues)
                if q
                and budgets[r] > 0
                and rooms[r] > 0
                and r not in stopped
                # (not while its head is still short of KV: it failed with the cache at this
                # version and a budget no larger; since, the cache has only allocated, which
                # evicts at most one block of the head's hit per block: see stretch_block_limit)
                and not (blocked_version[r] == kvs[r].version and budgets[r] >= blocked_budget[r])
            ]
            if admissible:
                admitted_new = self._admit(admissible, budgets, rooms)
                if admitted_new:
                    new = np.concatenate((new, np.asarray(admitted_new, np.int64)))
                    admitted = True
            # admission stopped by the token budget (which frees up next iteration)
            budget_blocked = any(q and rooms[r] > 0 and budgets[r] <= 0 for r, q in enumerate(queues))
        self._preempted = short
        any_preempted = len(short) > 0
        return (new if len(b) else None), admitted or any_preempted, any_preempted, budget_blocked, decodes and not admitted

    def _budget_cut(self, need: np.ndarray) -> tuple[np.ndarray, np.ndarray | int]:
        """Tokens each running sequence gets: what it needs, cut to what its rank's token
        budget leaves after the sequences before it on that rank; and the tokens each rank
        takes (an int with one rank): min(Σ need, budget), as needs are >= 0."""
        budget = self._rank_budget
        if self.ranks.dp == 1:
            total = int(need.sum())
            if total <= budget:
                return need, total  # every sequence fits the budget
            return np.minimum(need, np.maximum(budget - self._rank_before(need), 0)), budget
        per_rank = self.ranks.per_rank(self.batch.rank, need)
        if all_of(per_rank <= budget):
            return need, per_rank  # every rank's sequences fit its budget
        return np.minimum(need, np.maximum(budget - self._rank_before(need), 0)), np.minimum(per_rank, budget)

    def _rank_before(self, need: np.ndarray) -> np.ndarray:
        """Tokens the sequences before each one on its DP rank need (each rank fills its
        own share of the budget, in admission order)."""
        if self.ranks.dp == 1:
            return np.cumsum(need) - need
        rank = self.batch.rank
        order = self.batch.rank_order(self.ranks.dp)
        ns, rs = need[order], rank[order]
        before_all = np.cumsum(ns) - ns  # non-decreasing: need >= 0
        first = np.concatenate(([True], rs[1:] != rs[:-1]))
        before = np.empty_like(need)
        before[order] = before_all - np.maximum.accumulate(np.where(first, before_all, 0))
        return before

    def _preempt_from_the_back(self, short: np.ndarray, add: np.ndarray) -> np.ndarray | slice:
        """Preempt on each rank of `short` (its blocks do not fit) from the back of that
        rank's sequences until the front ones fit, as each vLLM DP rank's scheduler
        does with its own KV cache. Returns which sequences keep running: a mask, or
        with one rank the slice of the front ones (a view: nothing is copied)."""
        b = self.batch
        if self.ranks.dp == 1:
            m = self._preemption_cut(b.blocks, b.shared, b.group, add, self.kvs[0].free_blocks)
            for i in range(len(b) - 1, m - 1, -1):
                self._preempt(i)
            return slice(0, m)
        keep = np.ones(len(b), bool)
        for r in short.tolist():
            idx = indices_of(b.rank == r)
            m = self._preemption_cut(b.blocks[idx], b.shared[idx], b.group[idx], add[idx], self.kvs[r].free_blocks)
            victims = idx[m:]
            for i in victims[::-1].tolist():
                self._preempt(i)
            keep[victims] = False
        return keep

    @staticmethod
    def _preemption_cut(blocks: np.ndarray, shared: np.ndarray, group: np.ndarray, add: np.ndarray, free_blocks: int) -> int:
        """How many of one rank's sequences (their columns, in admission order) keep running.

        vLLM preempts from the back until the front ones fit; the kept prefix m is the
        largest with free + blocks freed by preempting m.. ≥ blocks needed by ..m-1.
        A group's shared prompt is freed with its lowest-index holder.
        """
        # Scanned from the back: blocks still missing with sequences ..m-1 kept is
        # Σ add[..m-1] − free − (blocks freed by preempting m..), falling as m falls.
        m = len(blocks)
        short = int(add.sum()) - free_blocks
        first_holder: dict[int, int] = {}
        while short > 0:
            m -= 1
            short -= int(add[m]) + int(blocks[m])
            held = int(shared[m])
            if held:
                g = int(group[m])
                if g not in first_holder:
                    first_holder[g] = int(indices_of((group == g) & (shared > 0))[0])
                if first_holder[g] == m:
                    short -= held
        return m

    def _context_blocks(self, rids: np.ndarray | int) -> np.ndarray:
        """KV blocks of requests' contexts (prompt + tokens generated so far); of one
        request's, given its id."""
        t = self.table
        return _ceil_div(t.input_tokens[rids] + t.generated[rids], self.bs)

    def _load(self) -> np.ndarray:
        """Each rank's KV load: blocks its running sequences hold plus the contexts
        queued for it."""
        b = self.batch
        load = self.ranks.per_rank(b.rank, b.blocks + b.shared)
        for r, q in enumerate(self.queues):
            if q:
                load[r] += int(self._context_blocks(np.fromiter((rid for rid, _ in q), np.int64, len(q))).sum())
        return load

    def _pick_rank(self, request_id: int, load: np.ndarray) -> int:
        """The DP rank a request joins: the one caching the longest part of its own
        earlier context (a resumed or chunked request: reusable only on that rank),
        else and among equal hits the least loaded (`_load`), lowest index first.

        The iteration waits for the slowest rank and a rank short of KV preempts, so
        ranks are balanced by KV, not by request count as vLLM's DP load balancer does
        (waiting × 4 + running, vllm/v1/engine/core_client.py): with long-tailed lengths
        that leaves ranks' KV unbalanced — on kimi-k2 it made divided rollout 0.84×
        baseline, against the paper's ordering. Sending a request's next chunk away from
        its cached context would recompute all of it, which no rollout system built on
        prefix reuse does. A group's shared prompt does not steer the choice (as in
        vLLM): it would pile a group's siblings onto one rank."""
        if self.cfg.prefix_caching:
            group, p_blocks = int(self.table.group_id[request_id]), int(self.prompt_blocks[request_id])
            own = np.zeros(self.ranks.dp, np.int64)
            for r in self.kvs[0].directory.get(request_id, ()) if self.ranks.dp > 1 else (0,):
                own[r] = self.kvs[r].prefix_blocks(request_id, group, p_blocks)[1]
            best = int(own.max())
            if best:
                load = np.where(own == best, load, np.iinfo(np.int64).max)
        return int(np.argmin(load))

    def _assign_arrivals(self) -> None:
        """Chunks dispatched since the last boundary join their DP ranks' queues (the
        ranks' loads are needed, and counted, only once a chunk comes without a rank)."""
        load = None
        while self._arrivals:
            rid, left, r = self._arrivals.popleft()
            if r is None:
                if load is None:
                    load = self._load()  # (counts the chunks queued so far in this loop)
                r = self._pick_rank(rid, load)
            self.queues[r].append((rid, left))
            if load is not None:
                load[r] += int(self._context_blocks(rid))

    def _admit(self, ranks: list[int], budgets: list[int], rooms: list[int]) -> list[int]:
        """Admit each rank's waiting requests in order while its token budget, sequence
        slots and KV blocks (after prefix-cache hits on that rank) allow (the caller
        leaves out the ranks whose head is still short of KV).

        `budgets`, `rooms` (per rank) are updated in place."""
        table = self.table
        rows: list[tuple[int, ...]] = []
        news: list[int] = []
        spec_cols = self.spec.admit() if self.spec is not None else (0, 0, 0, 0)
        for rank in ranks:
            kv, queue = self.kvs[rank], self.queues[rank]
            budget, room = budgets[rank], rooms[rank]
            while queue and budget > 0 and room > 0:
                rid, left = queue[0]
                group, p_blocks, tokens, p_hit, own_hit, hit, new, need_blocks, fits = self._admission_need(kv, rid, budget)
                if not fits:
                    self._blocked_version[rank], self._blocked_budget[rank] = kv.version, budget
                    break
                queue.popleft()
                self._blocked_version[rank] = -1  # (a new head)
                shared = private = 0
                if p_hit == p_blocks and p_hit:
                    kv.acquire_prompt(group)
                    shared = p_hit
                elif p_hit:  # a partly evicted prompt: its blocks become this sequence's own copy
                    private = kv.take_cached(prompt_key(group))
                if own_hit:
                    kv.take_cached(rid)
                kv.allocate(need_blocks)
                prompt = int(table.input_tokens[rid])
                rows.append(
                    (rid, hit, tokens, left, shared, private + own_hit + need_blocks, group, *spec_cols, rank, prompt, p_blocks * self.bs)
                )
                if new == 1 and tokens == prompt:
                    self._fresh_decoders = True
                news.append(new)
                budget -= new
                room -= 1
            budgets[rank], rooms[rank] = budget, room
        if rows:
            self.batch.extend(rows)
        return news

    def _admission_need(self, kv: KVCache, rid: int, budget: int) -> tuple[int, int, int, int, int, int, int, int, bool]:
        """(group, prompt blocks, context tokens, prompt hit, own hit, hit tokens, tokens
        to compute now, new blocks, whether it fits the KV) of admitting a waiting
        request on a rank with this cache and token budget."""
        table, bs = self.table, self.bs
        group = int(table.group_id[rid])
        tokens = int(table.input_tokens[rid] + table.generated[rid])
        p_blocks = int(self.prompt_blocks[rid])
        p_hit, own_hit = kv.prefix_blocks(rid, group, p_blocks) if self.cfg.prefix_caching else (0, 0)
        hit = min((p_hit + own_hit) * bs, tokens - 1)
        new = min(tokens - hit, budget)
        need_blocks = max(0, -(-(hit + new) // bs) - p_hit - own_hit)
        cached_hit = own_hit + (p_hit if p_hit and kv.prompt_refs(group) == 0 else 0)
        return group, p_blocks, tokens, p_hit, own_hit, hit, new, need_blocks, need_blocks + cached_hit <= kv.free_blocks

    # ------------------------------------------------------------------ state changes
    def _release(self, i: int, cache: bool) -> None:
        """Free sequence i's KV; with `cache`, keep its full blocks hashed for a later prefix hit."""
        bs = self.bs
        rid, computed, _, _, shared, blocks, group, *_, rank, _, _ = self.batch.row(i)
        kv = self.kvs[rank]
        p_blocks = int(self.prompt_blocks[rid])
        if shared:
            kv.release_prompt(group)
        cache = cache and self.cfg.prefix_caching
        full = computed // bs
        key = prompt_key(group)
        mine = min(full, p_blocks) if not shared else 0  # full blocks of a private prompt copy
        if cache and mine and kv.prompt_refs(group) == 0 and mine >= kv.cached(key):
            # the freshest copy of the prompt (or of its head) becomes the cached one
            kv.release_to_cache(key, mine)
            blocks -= mine
        own_full = full - p_blocks if full >= p_blocks else 0
        if cache and own_full > 0 and (shared or full >= p_blocks):
            kv.release_to_cache(rid, own_full, key if p_blocks else None)
            blocks -= own_full
        kv.release(blocks)

    def _preempt(self, i: int) -> None:
        b = self.batch
        rid = int(b.rid[i])
        self._release(i, cache=True)
        self.table.generated[rid] = int(b.tokens[i] - self.table.input_tokens[rid])
        self.table.preemptions[rid] += 1
        self.stats.preemptions += 1
        rank = int(b.rank[i])
        self.queues[rank].appendleft((rid, int(b.left[i])))  # back to the front of its rank's queue
        self._blocked_version[rank] = -1  # (a new head)

    def _advance(self, plan: Plan, steps: int, start: float) -> bool:
        """Apply `steps` iterations of the plan; retire sequences whose chunk is done.

        Returns whether any chunk ended.
        """
        first_end = start + plan.stretch.cumulative(1)
        if plan.kind == "decode":
            self._advance_decode(steps, first_end)
        elif plan.kind == "prefill":
            self._advance_prefill(plan.new, steps)
        elif plan.kind == "spec_decode":
            self._advance_spec_decode(steps, first_end)
        else:
            before = self._advance_mixed(plan.new, first_end)
            if not isinstance(plan.stretch, HeadStretch):  # a tail is only planned when none publishes
                self._share_new_prompts(before)
            if steps > 1:
                self._advance_decode(steps - 1, first_end + plan.stretch.tail.cumulative(1))
        done = self.batch.left <= 0
        if any_of(done):
            self._retire(done)
            return True
        return False

    def _record_first_tokens(self, mask: np.ndarray, at_s: float) -> None:
        if any_of(mask):
            self.table.first_token_s[self.batch.rid[mask]] = at_s

    def _advance_mixed(self, new: np.ndarray, end_s: float) -> np.ndarray:
        """Apply one mixed iteration: prefills advance by `new` tokens and emit the first
        token when they complete; decodes emit one token, or with speculation what their
        accumulator yields (their `new` counts the verified drafts). Returns the
        computed tokens before it."""
        b, st = self.batch, self.stats
        before = b.computed.copy()
        need = b.tokens - before
        scheduled = new > 0
        emit = (new == need) & scheduled  # decodes, and prefills that complete
        verified = int(np.add.reduce(new))
        if self.spec is None:
            advance = new
            emitted = int(np.count_nonzero(emit))
            prefill = verified - emitted  # (a decode computes exactly the token it emits)
        else:
            speculating = (need == 1) & scheduled
            spec_emit = self.spec.mixed_emission(b, speculating, new)  # drafts cut by the budget accept less
            emit = np.where(speculating, spec_emit, emit)
            advance = np.where(speculating, spec_emit, new)
            emitted = int(np.add.reduce(emit))
            decode_emitted = int(np.add.reduce(spec_emit, where=speculating))
            # decodes (unscheduled ones compute and emit nothing) verify what they compute;
            # prefills compute their new tokens, less the first token a completing one emits
            prefill = verified - int(np.add.reduce(new, where=speculating)) - (emitted - decode_emitted)
            st.decode_seq_steps += int(np.count_nonzero(speculating))
            st.decode_emitted_tokens += decode_emitted
        self._record_first_tokens((emit > 0) & (b.tokens == b.prompt), end_s)
        b.computed += advance
        b.tokens += emit
        b.left -= emit
        self._note_fresh_decoders()
        st.prefill_tokens += prefill
        st.emitted_tokens += emitted
        st.verified_tokens += verified
        return before

    def _advance_prefill(self, new: np.ndarray, steps: int) -> None:
        """Apply `steps` identical mixed iterations of a prefill plan: prefills advance by
        `new` tokens each (none completes), scheduled decodes emit one token each."""
        b = self.batch
        decoding = ((b.tokens - b.computed) == 1) & (new > 0)
        dec = decoding.astype(np.int64)
        b.computed += steps * new
        b.tokens += steps * dec
        b.left -= steps * dec
        self._grow_blocks(b.computed)
        self._note_fresh_decoders()
        emitted = int(dec.sum())
        st = self.stats
        st.prefill_tokens += steps * int(new[~decoding].sum())
        st.emitted_tokens += steps * emitted
        st.verified_tokens += steps * int(new.sum())
        self._share_new_prompts(b.computed - new)  # a prompt crossed in the last iteration

    def _note_fresh_decoders(self) -> None:
        """A prefill left with exactly one prompt token computes it as a decode step,
        which emits the first token (recorded by the decode path: `_fresh_first_tokens`)."""
        if not self._fresh_decoders:
            b = self.batch
            self._fresh_decoders = any_of((b.tokens - b.computed == 1) & (b.tokens == b.prompt))

    def _fresh_first_tokens(self, first_step_end_s: float) -> None:
        """Sequences whose prompt is computed but for one token (fully cached at
        admission, or a prefill's last piece) emit their first token in the decode
        stretch's first iteration."""
        if self._fresh_decoders:
            self._fresh_decoders = False
            b = self.batch
            self._record_first_tokens(b.tokens == b.prompt, first_step_end_s)

    def _grow_blocks(self, slots: np.ndarray) -> None:
        """Hold blocks for `slots` tokens per sequence (the stretch's early allocations included)."""
        b = self.batch
        grow = np.maximum(_ceil_div(slots, self.bs) - b.shared - b.blocks, 0)
        if self.ranks.dp == 1:
            self.kvs[0].allocate(int(grow.sum()) - int(self._take_pre()[0]))
        else:
            self._allocate(self.ranks.per_rank(b.rank, grow) - self._take_pre())
        b.blocks += grow

    def _advance_decode(self, steps: int, first_step_end_s: float) -> None:
        """Apply `steps` pure-decode iterations: one token each, blocks as they fill."""
        b = self.batch
        self._fresh_first_tokens(first_step_end_s)
        b.computed += steps
        b.tokens += steps
        b.left -= steps
        self._grow_blocks(b.computed)
        emitted = steps * len(b)
        st = self.stats
        st.emitted_tokens += emitted
        st.verified_tokens += emitted
        st.decode_seq_steps += emitted
        st.decode_emitted_tokens += emitted

    def _advance_spec_decode(self, steps: int, first_step_end_s: float) -> None:
        """Apply `steps` speculative-decode iterations: the strategy says what each emits."""
        b, spec = self.batch, self.spec
        self._fresh_first_tokens(first_step_end_s)
        # blocks for the last iteration's slots (the most any iteration needed)
        self._grow_blocks(spec.slots_at(b, steps))
        emitted = spec.emitted(b, steps)
        verified = spec.verified_tokens(b, steps)
        spec.advance(b, steps)
        b.computed += emitted
        b.tokens += emitted
        b.left -= emitted
        total = int(np.add.reduce(emitted))
        st = self.stats
        st.emitted_tokens += total
        st.verified_tokens += verified
        st.decode_seq_steps += steps * len(b)
        st.decode_emitted_tokens += total

    def _share_new_prompts(self, before: np.ndarray) -> None:
        """Sequences whose prefill just covered the prompt publish it for their siblings."""
        if not self.cfg.prefix_caching:
            return
        b = self.batch
        p = b.shareable
        crossed = (b.shared == 0) & (p > 0) & (b.computed >= p) & (before < p)
        for i in indices_of(crossed):
            group, kv = int(b.group[i]), self.kvs[int(b.rank[i])]
            if not kv.prompt_refs(group):
                blocks = int(p[i]) // self.bs
                kv.share_prompt(group, blocks)
                b.shared[i] = blocks
                b.blocks[i] -= blocks

    def _retire(self, done: np.ndarray) -> None:
        table, b = self.table, self.batch
        idx = indices_of(done)
        rids = b.rid[idx]
        generated = b.tokens[idx] - table.input_tokens[rids]
        table.generated[rids] = generated
        finished = generated >= table.output_tokens[rids]
        finished_rows = list(zip(rids.tolist(), finished.tolist()))
        for i, (_, fin) in zip(idx.tolist(), finished_rows):
            self._release(i, cache=not fin)
        b.keep(~done)
        self._sample()
        for rid, fin in finished_rows:
            self.on_chunk_done(self.id, rid, fin)

    # ------------------------------------------------------------------ records
    def _sample(self) -> None:
        self.samples.append((self.env.now, len(self.batch), self.num_waiting, *self._kv_blocks()))

    def insert_pulled_kv(
        self, request_id: int, group_id: int, prompt_blocks: int, own_blocks: int, rank: int | None = None
    ) -> None:
        """KV that arrived through the pool lands as cached blocks (a prefix hit at admission).

        It lands on the rank the request will join: `rank` it was sent to, else the one
        `_pick_rank` picks (and then finds it there). Without room for it the transfer
        is wasted and the request recomputes.
        """
        if self.ranks.dp == 1:
            rank = 0
        elif rank is None:
            rank = self._pick_rank(request_id, self._load())
        self.kvs[rank].insert_prefix(request_id, group_id, prompt_blocks, own_blocks)
        if self._current is not None and self._current[0].may_evict is False:
            # fewer uncached free blocks now: its allocations may evict (an insert never
            # adds uncached free blocks, so a stretch that may evict still may)
            self._current[0].may_evict = None
