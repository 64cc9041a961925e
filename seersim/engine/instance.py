"""One inference instance: a vLLM-like engine with paged KV, continuous batching,
chunked prefill, prefix caching, preemption by recompute — and fast-forward.

Reading guide
-------------
- `_schedule()` is one engine iteration's scheduler, as vLLM v1's: running sequences
  first (in admission order) each take min(needed, remaining token budget) tokens and
  the KV blocks for them; when blocks run out the most recently admitted sequence is
  preempted (freed, back to the front of the waiting queue, recomputed later); then,
  unless a preemption happened, waiting requests are admitted in order while the
  token budget, `max_num_seqs` and KV blocks (after prefix-cache hits) allow.
- When that iteration is *pure decode* (no admission, no preemption, every sequence
  takes one token), the batch stays the same until the first of: a sequence finishes
  its chunk, the blocks run out, or a dispatch arrives. `_plan()` computes that step
  count in closed form and the engine takes one simpy timeout for all of them.
- A dispatch arriving mid-stretch interrupts it; the steps already done are settled
  and the step in progress completes (vLLM schedules between steps), then re-plan.

The running batch is a struct of numpy arrays in admission order, so bookkeeping
per event is vectorised; Python loops touch only the sequences that change.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import simpy

from seersim.config import EngineConfig
from seersim.cost import CostModel, HeadStretch, LinearStretch, TabulatedStretch
from seersim.engine.kvcache import KVCache, prompt_key
from seersim.engine.requests import RequestTable
from seersim.engine.specdec import Q as Q_ACC
from seersim.errors import SimulationError

if TYPE_CHECKING:
    from seersim.engine.specdec import SpecDecoder


class EngineListener(Protocol):
    """What an instance reports to its cluster."""

    def on_chunk_done(self, instance: "Instance", request_id: int, finished: bool) -> None: ...


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


# Rows of the running-batch matrix `Instance.R` (one column per running sequence,
# in admission order): one int64 matrix, so that masking a batch is one numpy op.
RID, COMPUTED, TOKENS, LEFT, SHARED, BLOCKS, GROUP, ACC, GAMMA, TAU_Q = range(10)
NCOLS = 10


def _ceil_div(a: np.ndarray | int, b: int):
    return -(-a // b)


class _Plan:
    """One scheduled stretch of `steps` iterations.

    pure: every iteration is the same decode batch. Otherwise the first iteration is a
    mixed one (`new` tokens per sequence), followed — when `steps` > 1 — by a pure
    decode tail (every sequence finished its prefill in the first iteration).
    """

    __slots__ = ("steps", "stretch", "new", "pure", "emit_fn", "blocks_fn", "total_blocks")

    def __init__(self, steps, stretch, new, pure, emit_fn=None, blocks_fn=None):
        self.steps, self.stretch, self.new, self.pure, self.emit_fn = steps, stretch, new, pure, emit_fn
        # blocks_fn(k): blocks iterations 1..k allocate beyond what scheduling allocated
        self.blocks_fn = blocks_fn
        self.total_blocks: int | None = None  # blocks_fn(steps), computed on first need


class Instance:
    def __init__(
        self,
        instance_id: int,
        env: simpy.Environment,
        kv: KVCache,
        cost: CostModel,
        cfg: EngineConfig,
        table: RequestTable,
        listener: EngineListener,
        spec: "SpecDecoder | None" = None,
    ) -> None:
        self.id = instance_id
        self.env = env
        self.kv = kv
        self.cost = cost
        self.cfg = cfg
        self.table = table
        self.listener = listener
        self.spec = spec
        self.bs = kv.block_size
        self.fast_forward = cfg.mode == "fast_forward"
        self.stats = InstanceStats()
        self.samples: list[tuple] = []  # timeline rows, see Cluster.instance_frame
        self.waiting: deque[tuple[int, int]] = deque()  # (request id, tokens left in chunk)
        self.R = np.zeros((NCOLS, 0), np.int64)
        self._wake: simpy.Event | None = None
        self._interruptible = False
        self._current: tuple[_Plan, float] | None = None  # the stretch in progress and its start
        self._kv_pre = 0  # blocks of that stretch allocated early by settle_kv()
        self._fresh_decoders = False  # a sequence decodes its first token (prompt fully cached)
        self.process = env.process(self._run())

    # ------------------------------------------------------------------ observable state
    @property
    def num_running(self) -> int:
        return self.R.shape[1]

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    # ------------------------------------------------------------------ input
    def enqueue(self, request_id: int, left_tokens: int) -> None:
        """A dispatched chunk arrives; it joins at the next iteration boundary."""
        self.waiting.append((request_id, left_tokens))
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()
        elif self._interruptible:
            self._interruptible = False
            self.process.interrupt()

    # ------------------------------------------------------------------ main loop
    def _run(self):
        env = self.env
        while True:
            if not self.R.shape[1] and not self.waiting:
                self._wake = env.event()
                yield self._wake
                self._wake = None
                continue
            plan = self._plan()
            if plan is None:
                rid, _ = self.waiting[0]
                need = int(self.table.input_tokens[rid] + self.table.generated[rid])
                raise SimulationError(
                    f"instance {self.id}: request {rid} needs {need} tokens of KV but the instance holds only "
                    f"{self.kv.total_blocks * self.bs}; raise KV memory (engine.kv_capacity_tokens, GPUs per "
                    "instance) or lower workload.max_tokens"
                )
            start = env.now
            steps = plan.steps
            self._interruptible = steps > 1
            self._current = (plan, start)
            try:
                yield env.timeout(plan.stretch.cumulative(steps))
            except simpy.Interrupt:
                # Settle the steps already done; the one in progress completes.
                steps = min(plan.stretch.steps_done_by(env.now - start, steps) + 1, steps)
                while True:
                    try:
                        yield env.timeout(max(0.0, start + plan.stretch.cumulative(steps) - env.now))
                        break
                    except simpy.Interrupt:
                        continue
            self._interruptible = False
            self._current = None
            self.stats.busy_s += plan.stretch.cumulative(steps)
            self.stats.iterations += steps
            if self._advance(plan, steps, start):
                # Chunks ended: let the global scheduler's pass at this instant (already
                # queued) dispatch before this engine schedules its next iteration.
                yield env.timeout(0)

    def settle_kv(self, cache_only: bool = True) -> None:
        """Apply the KV allocations of the iterations started so far in the current stretch.

        A fast-forwarded stretch allocates its blocks when it ends; iteration by
        iteration they would be allocated (evicting cached prefixes) as each starts.
        Whoever reads this instance's KV mid-stretch (a policy's view of cached
        prefixes, a KV pull landing) calls this first, so it sees exactly what
        step-by-step simulation shows. `cache_only`: the caller reads only cached
        prefixes, which cannot change while the stretch's allocations fit uncached blocks.
        """
        if self._current is None:
            return
        plan, start = self._current
        if plan.blocks_fn is None:
            return
        kv = self.kv
        if cache_only:
            uncached_free = kv.total_blocks - kv.used_blocks - kv.cached_blocks
            # cheap bound first: each sequence needs at most one block per bs iterations (+1)
            if self.R.shape[1] * (plan.steps // self.bs + 2) * (1 + self._max_gamma()) <= uncached_free:
                return
            if plan.total_blocks is None:
                plan.total_blocks = plan.blocks_fn(plan.steps)
            if plan.total_blocks - self._kv_pre <= uncached_free:
                return
        k = min(plan.stretch.steps_done_by(self.env.now - start, plan.steps) + 1, plan.steps)
        target = plan.blocks_fn(k)
        if target > self._kv_pre:
            kv.allocate(target - self._kv_pre)
            self._kv_pre = target

    def abort(self) -> None:
        """The RL step ended early (partial rollout): keep the iterations completed so far,
        record every running request's tokens, and free the KV."""
        if self._current is not None:
            plan, start = self._current
            done = plan.stretch.steps_done_by(self.env.now - start, plan.steps)
            self._current = None
            self._undo_pre()  # _advance re-allocates the completed iterations' blocks
            if done:
                self._advance(plan, done, start)
        table = self.table
        for i in range(self.R.shape[1] - 1, -1, -1):
            rid = int(self.R[RID, i])
            table.generated[rid] = int(self.R[TOKENS, i] - table.input_tokens[rid])
            self._release(i, cache=False)
        self.R = self.R[:, :0]
        self.waiting.clear()

    def _undo_pre(self) -> None:
        pre = self._take_pre()
        if pre:
            self.kv.release(pre)

    def _max_gamma(self) -> int:
        """Largest per-iteration draft width in the batch (0 without speculation)."""
        return int(self.R[GAMMA].max()) if self.spec is not None and self.R.shape[1] else 0

    def _take_pre(self) -> int:
        """Blocks of the ending stretch that settle_kv() allocated early (then reset)."""
        pre, self._kv_pre = self._kv_pre, 0
        return pre

    # ------------------------------------------------------------------ scheduling
    def _plan(self) -> _Plan | None:
        if self.spec is not None:
            self.spec.begin_iteration(self)
        new, changed, preempted, budget_blocked = self._schedule()
        if new is None:
            return None
        if changed:
            self._sample()
        if self.spec is not None:
            return self.spec.plan(self, new, changed, preempted)
        R = self.R
        n = R.shape[1]
        computed = R[COMPUTED]
        # Pure decode (every sequence takes one token, no preemption): the batch stays the
        # same until a chunk ends or blocks run out; admission cannot become possible
        # later in the stretch (free blocks only shrink), so it may follow an admission.
        if not preempted and bool((new == 1).all()):
            stretch = LinearStretch(self.cost.step_lines(n, n, 0), int(computed.sum()), n)
            steps = self._pure_steps(computed, R[LEFT], allocated=True) if self.fast_forward else 1
            return _Plan(steps, stretch, new, True, blocks_fn=self._decode_blocks_fn(computed, 0))
        head_s = self.mixed_step_s(new)
        # After this mixed iteration, if every sequence has finished its prefill (and
        # emits a token), nobody's chunk ends, and admission was not stopped by the token
        # budget (which frees up next iteration), a pure decode tail follows.
        tail = 0
        if self.fast_forward and not preempted and not budget_blocked:
            need = R[TOKENS] - computed
            after_left = R[LEFT] - 1
            if bool((new == need).all()) and int(after_left.min()) > 0 and not self._publishes_prompt(new):
                tail = self._pure_steps(computed + new, after_left, allocated=False)
        if tail:
            stretch = HeadStretch(head_s, LinearStretch(self.cost.step_lines(n, n, 0), int((computed + new).sum()), n))
            return _Plan(1 + tail, stretch, new, False, blocks_fn=self._decode_blocks_fn(computed + new, 1))
        return _Plan(1, TabulatedStretch.single(head_s), new, False)

    def _decode_blocks_fn(self, computed: np.ndarray, head: int):
        """blocks_fn of a decode stretch after `head` mixed iterations."""
        held = self.R[BLOCKS] + self.R[SHARED]
        bs = self.bs

        def blocks(k: int) -> int:
            if k <= head:
                return 0
            return int(np.maximum(-(-(computed + (k - head)) // bs) - held, 0).sum())

        return blocks

    def mixed_step_s(self, new: np.ndarray) -> float:
        """Time of one iteration computing `new` tokens per running sequence (prefill
        chunks attend to their earlier tokens and to each other causally)."""
        scheduled = new > 0
        c, k = self.R[COMPUTED][scheduled], new[scheduled]
        context = int((c + k).sum())
        pairs = int((k * c + k * (k + 1) // 2).sum())
        return self.cost.step_lines(int(scheduled.sum()), int(k.sum()), pairs - context).at(context)

    def _pure_steps(self, computed: np.ndarray, left: np.ndarray, allocated: bool) -> int:
        """Pure-decode steps the batch can run unchanged from `computed` tokens each.

        With `allocated`, step 1's blocks are held already (and step 1 always runs).
        """
        bs = self.bs
        n = len(computed)
        # Step j writes token computed+j; it needs a block when (computed + j - 1) % bs == 0.
        first = (-computed) % bs + 1
        if allocated:
            first[first < 2] += bs
        # Demands repeat every bs steps, one per sequence, so the (free+1)-th demand
        # falls in period q at the r-th smallest offset.
        q, r = divmod(self._stretch_block_limit(), n)
        fail_step = int(np.partition(first, r)[r]) + q * bs
        steps = min(int(left.min()), fail_step - 1)
        return max(1, steps) if allocated else max(0, steps)

    def _publishes_prompt(self, new: np.ndarray) -> bool:
        """Whether this iteration's prefill will publish a group prompt: a waiting request
        could then hit it (and become admissible), and the policy's view of cached
        prefixes changes, so the iteration must end at its own boundary."""
        if not self.cfg.prefix_caching:
            return False
        R = self.R
        p = self.table.prompt_blocks[R[RID]] * self.bs
        return bool(((R[SHARED] == 0) & (p > 0) & (R[COMPUTED] < p) & (R[COMPUTED] + new >= p)).any())

    def _stretch_block_limit(self) -> int:
        """Blocks a stretch may allocate without changing what the scheduler would admit.

        Free blocks only shrink during a stretch, so a waiting head blocked by KV stays
        blocked — unless evicting its own cached prefix shrinks its hit so that a chunked
        prefill of it fits (vLLM admits such partial prefills). So a stretch stops
        before the head's cached prefix would be evicted.
        """
        if not self.waiting or not self.cfg.prefix_caching:
            return self.kv.free_blocks
        rid, _ = self.waiting[0]
        group = int(self.table.group_id[rid])
        return self.kv.blocks_before_eviction_of((rid, prompt_key(group)))

    def _schedule(self) -> tuple[np.ndarray | None, bool, bool, bool]:
        """One iteration's scheduling decision (vLLM v1 semantics).

        Returns (new tokens per running column, batch changed, preempted, admission
        stopped by the token budget); allocates the iteration's KV blocks. new is None
        when nothing can run.
        """
        bs, kv, R = self.bs, self.kv, self.R
        budget = self.cfg.max_num_batched_tokens
        preempted = admitted = False
        if R.shape[1]:
            need = R[TOKENS] - R[COMPUTED]
            if self.spec is not None:
                need += R[GAMMA]
            n = R.shape[1]
            if self.spec is None and n <= budget and int(need.sum()) == n:
                # every sequence decodes one token (the common case): its block holds
                # ceil(computed/bs) blocks, so it needs a new one exactly at a boundary
                new = need
                add = (R[COMPUTED] % bs == 0).astype(np.int64)
            else:
                before = np.cumsum(need) - need
                new = np.minimum(need, np.maximum(budget - before, 0))
                add = np.maximum(_ceil_div(R[COMPUTED] + new, bs) - R[SHARED] - R[BLOCKS], 0)
            total_add = int(add.sum())
            if total_add > kv.free_blocks:
                keep = self._preemption_cut(add)
                for i in range(R.shape[1] - 1, keep - 1, -1):
                    self._preempt(i)
                self.R = R = R[:, :keep]
                new, add = new[:keep], add[:keep]
                total_add = int(add.sum())
                preempted = True
            kv.allocate(total_add)
            R[BLOCKS] += add
            budget -= int(new.sum())
        else:
            new = np.zeros(0, np.int64)
        if not preempted and self.waiting and budget > 0 and R.shape[1] < self.cfg.max_num_seqs:
            admitted_new = self._admit(budget)
            if admitted_new:
                new = np.concatenate((new, np.asarray(admitted_new, np.int64)))
                admitted = True
                budget -= sum(admitted_new)
        budget_blocked = bool(self.waiting) and budget <= 0 and self.R.shape[1] < self.cfg.max_num_seqs
        if not self.R.shape[1]:
            return None, admitted or preempted, preempted, budget_blocked
        return new, admitted or preempted, preempted, budget_blocked

    def _preemption_cut(self, add: np.ndarray) -> int:
        """How many running sequences (a prefix in admission order) keep running.

        vLLM preempts from the back until the front ones fit; the kept prefix m is the
        largest with free + blocks freed by preempting m..n-1 ≥ blocks needed by 0..m-1.
        A group's shared prompt is freed with its lowest-index holder.
        """
        R = self.R
        freed = R[BLOCKS].copy()
        holders = np.flatnonzero(R[SHARED] > 0)
        if len(holders):
            _, first = np.unique(R[GROUP, holders], return_index=True)
            idx = holders[first]
            freed[idx] += R[SHARED, idx]
        suffix_freed = np.concatenate((np.cumsum(freed[::-1])[::-1], [0]))  # freed by preempting m..n-1
        prefix_add = np.concatenate(([0], np.cumsum(add)))  # needed by 0..m-1
        ok = self.kv.free_blocks + suffix_freed - prefix_add >= 0
        return int(np.flatnonzero(ok)[-1]) if ok.any() else 0

    def _admit(self, budget: int) -> list[int]:
        """Admit waiting requests in order while budget, max_num_seqs and KV allow."""
        kv, bs, table = self.kv, self.bs, self.table
        cols: list[tuple[int, ...]] = []
        news: list[int] = []
        room = self.cfg.max_num_seqs - self.R.shape[1]
        caching = self.cfg.prefix_caching
        while self.waiting and budget > 0 and room > 0:
            rid, left = self.waiting[0]
            group = int(table.group_id[rid])
            tokens = int(table.input_tokens[rid] + table.generated[rid])
            p_blocks = int(table.prompt_blocks[rid])
            p_hit, own_hit = kv.prefix_blocks(rid, group, p_blocks) if caching else (0, 0)
            hit = min((p_hit + own_hit) * bs, tokens - 1)
            new = min(tokens - hit, budget)
            need_blocks = max(0, -(-(hit + new) // bs) - p_hit - own_hit)
            cached_hit = own_hit + (p_hit if p_hit and kv.prompt_refs(group) == 0 else 0)
            if need_blocks + cached_hit > kv.free_blocks:
                break
            self.waiting.popleft()
            shared = private = 0
            if p_hit == p_blocks and p_hit:
                kv.acquire_prompt(group)
                shared = p_hit
            elif p_hit:  # a partly evicted prompt: its blocks become this sequence's own copy
                private = kv.take_cached(prompt_key(group))
            if own_hit:
                kv.take_cached(rid)
            kv.allocate(need_blocks)
            acc, gamma, tau_q = self.spec.admit(rid) if self.spec is not None else (0, 0, 0)
            cols.append((rid, hit, tokens, left, shared, private + own_hit + need_blocks, group, acc, gamma, tau_q))
            if new == 1 and tokens == table.input_tokens[rid]:
                self._fresh_decoders = True
            news.append(new)
            budget -= new
            room -= 1
        if cols:
            self.R = np.concatenate((self.R, np.array(cols, dtype=np.int64).T), axis=1)
        return news

    # ------------------------------------------------------------------ state changes
    def _release(self, i: int, cache: bool) -> None:
        """Free column i's KV; with `cache`, keep its full blocks hashed for a later prefix hit."""
        kv, bs = self.kv, self.bs
        col = self.R[:, i].tolist()
        rid, computed, shared, blocks, group = col[RID], col[COMPUTED], col[SHARED], col[BLOCKS], col[GROUP]
        p_blocks = int(self.table.prompt_blocks[rid])
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
        rid = int(self.R[RID, i])
        self._release(i, cache=True)
        self.table.generated[rid] = int(self.R[TOKENS, i] - self.table.input_tokens[rid])
        self.table.preemptions[rid] += 1
        self.stats.preemptions += 1
        self.waiting.appendleft((rid, int(self.R[LEFT, i])))

    def _advance(self, plan: _Plan, steps: int, start: float) -> bool:
        """Apply `steps` iterations of the plan; retire sequences whose chunk is done.

        Returns whether any chunk ended.
        """
        if plan.pure:
            self._advance_decode(steps, start + plan.stretch.cumulative(1))
        elif plan.emit_fn is not None:
            plan.emit_fn(steps, start)
        else:
            before = self._advance_mixed(plan.new, start + plan.stretch.cumulative(1))
            if not isinstance(plan.stretch, HeadStretch):  # a tail is only planned when none publishes
                self._share_new_prompts(before)
            if steps > 1:
                head_end = start + plan.stretch.cumulative(1)
                self._advance_decode(steps - 1, head_end + plan.stretch.tail.cumulative(1))
        done = self.R[LEFT] <= 0
        if done.any():
            self._retire(done)
            return True
        return False

    def _advance_mixed(self, new: np.ndarray, end_s: float) -> np.ndarray:
        """Apply one mixed iteration: prefills advance by `new` tokens and emit the first
        token when they complete; decodes emit one token, or with speculation what their
        accumulator yields (their `new` counts the verified drafts). Returns the
        computed tokens before it."""
        R, table = self.R, self.table
        before = R[COMPUTED].copy()
        decoding = R[TOKENS] - before == 1
        emit = ((before + new == R[TOKENS]) & (new > 0)).astype(np.int64)
        advance = new
        spec = None
        if self.spec is not None:
            spec = decoding & (new > 0)
            tau_q = self.spec.scheduled_tau_q(self, new)  # drafts cut by the token budget accept less
            spec_emit = np.minimum((R[ACC] + tau_q) // Q_ACC, R[LEFT])
            emit = np.where(spec, spec_emit, emit)
            advance = np.where(spec, spec_emit, new)
            R[ACC] = np.where(spec, (R[ACC] + tau_q) % Q_ACC, R[ACC])
        first = (emit > 0) & (R[TOKENS] == table.input_tokens[R[RID]])
        if first.any():
            table.first_token_s[R[RID, first]] = end_s
        R[COMPUTED] += advance
        R[TOKENS] += emit
        R[LEFT] -= emit
        emitted = int(emit.sum())
        self.stats.prefill_tokens += int(np.where(decoding, 0, new - emit).sum())
        if spec is None:
            self.stats.emitted_tokens += emitted
            self.stats.verified_tokens += int(new.sum())
        else:
            self.spec._account(self, 1, emitted, int(new.sum()), int(spec.sum()), int(emit[spec].sum()))
        return before

    def _advance_decode(self, steps: int, first_step_end_s: float) -> None:
        """Apply `steps` pure-decode iterations: one token each, blocks as they fill."""
        R, table = self.R, self.table
        if self._fresh_decoders:  # admitted with the whole prompt cached: first token now
            self._fresh_decoders = False
            first_token = R[TOKENS] == table.input_tokens[R[RID]]
            table.first_token_s[R[RID, first_token]] = first_step_end_s
        R[COMPUTED] += steps
        R[TOKENS] += steps
        R[LEFT] -= steps
        grow = _ceil_div(R[COMPUTED], self.bs) - R[SHARED] - R[BLOCKS]
        add = int(grow.sum())
        self.kv.allocate(add - self._take_pre())
        if add:
            R[BLOCKS] += grow
        emitted = steps * R.shape[1]
        st = self.stats
        st.emitted_tokens += emitted
        st.verified_tokens += emitted
        st.decode_seq_steps += emitted
        st.decode_emitted_tokens += emitted

    def _share_new_prompts(self, before: np.ndarray) -> None:
        """Sequences whose prefill just covered the prompt publish it for their siblings."""
        if not self.cfg.prefix_caching:
            return
        R = self.R
        p = self.table.prompt_blocks[R[RID]] * self.bs
        crossed = (R[SHARED] == 0) & (p > 0) & (R[COMPUTED] >= p) & (before < p)
        for i in np.flatnonzero(crossed):
            group = int(R[GROUP, i])
            if not self.kv.prompt_refs(group):
                blocks = int(p[i]) // self.bs
                self.kv.share_prompt(group, blocks)
                R[SHARED, i] = blocks
                R[BLOCKS, i] -= blocks

    def _retire(self, done: np.ndarray) -> None:
        table = self.table
        now = self.env.now
        finished_rows = []
        idx = np.flatnonzero(done)
        rids = self.R[RID, idx]
        generated = self.R[TOKENS, idx] - table.input_tokens[rids]
        table.generated[rids] = generated
        finished = generated >= table.output_tokens[rids]
        table.finish_s[rids[finished]] = now
        for i, rid, fin in zip(idx.tolist(), rids.tolist(), finished.tolist()):
            self._release(i, cache=not fin)
            finished_rows.append((rid, fin))
        self.R = self.R[:, ~done]
        self._sample()
        for rid, finished in finished_rows:
            self.listener.on_chunk_done(self, rid, finished)

    # ------------------------------------------------------------------ speculative hooks
    # ------------------------------------------------------------------ records
    def _sample(self) -> None:
        self.samples.append(
            (self.env.now, self.R.shape[1], len(self.waiting), self.kv.used_blocks, self.kv.cached_blocks)
        )

    def insert_pulled_kv(self, request_id: int, group_id: int, prompt_blocks: int, own_blocks: int) -> None:
        """KV that arrived through the pool lands as cached blocks (a prefix hit at admission).

        Without room for it the transfer is wasted and the request recomputes.
        """
        self.kv.insert_prefix(request_id, group_id, prompt_blocks, own_blocks)
