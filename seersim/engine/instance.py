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
from seersim.cost import CostModel, LinearStretch, TabulatedStretch
from seersim.engine.kvcache import KVCache, prompt_key
from seersim.engine.requests import RequestTable
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


_COLS = ("rid", "computed", "tokens", "left", "shared", "blocks", "group", "acc", "gamma", "tau_q")


def _ceil_div(a: np.ndarray | int, b: int):
    return -(-a // b)


class _Plan:
    """One scheduled stretch: `steps` iterations with the same batch (or one mixed step)."""

    __slots__ = ("steps", "stretch", "new", "pure", "emit_fn")

    def __init__(self, steps, stretch, new, pure, emit_fn=None):
        self.steps, self.stretch, self.new, self.pure, self.emit_fn = steps, stretch, new, pure, emit_fn


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
        empty = np.zeros(0, np.int64)
        for col in _COLS:
            setattr(self, "r_" + col, empty)
        self._wake: simpy.Event | None = None
        self._interruptible = False
        self.process = env.process(self._run())

    # ------------------------------------------------------------------ observable state
    @property
    def num_running(self) -> int:
        return len(self.r_rid)

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
            if not len(self.r_rid) and not self.waiting:
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
            self.stats.busy_s += plan.stretch.cumulative(steps)
            self.stats.iterations += steps
            self._advance(plan, steps, start)

    # ------------------------------------------------------------------ scheduling
    def _plan(self) -> _Plan | None:
        new, changed = self._schedule()
        if new is None:
            return None
        if changed:
            self._sample()
        n = len(self.r_rid)
        scheduled = new > 0
        computed = self.r_computed
        if self.spec is not None and self.spec.active:
            return self._plan_speculative(new, changed)
        pure = not changed and n > 0 and bool(np.all(new == 1))
        if pure:
            c0 = int(computed.sum())
            lines = self.cost.step_lines(n, n, 0)
            stretch = LinearStretch(lines, c0, n)
            steps = self._pure_steps() if self.fast_forward else 1
            return _Plan(steps, stretch, new, True)
        ctx = computed[scheduled] + new[scheduled]
        pairs = int((new[scheduled] * computed[scheduled] + new[scheduled] * (new[scheduled] + 1) // 2).sum())
        context = int(ctx.sum())
        lines = self.cost.step_lines(int(scheduled.sum()), int(new.sum()), pairs - context)
        return _Plan(1, TabulatedStretch(lines, np.array([context])), new, False)

    def _pure_steps(self) -> int:
        """Steps the current pure-decode batch can run unchanged (step 1 included)."""
        left_min = int(self.r_left.min())
        n = len(self.r_rid)
        bs = self.bs
        # Step j >= 2 writes token computed+j; it needs a block when (computed + j - 1) % bs == 0.
        first = (-self.r_computed) % bs + 1
        first = np.where(first >= 2, first, first + bs)
        # Step 1's blocks are allocated already; demands repeat every bs steps, one per
        # sequence, so the (free+1)-th demand falls in period q at the r-th smallest offset.
        q, r = divmod(self.kv.free_blocks, n)
        fail_step = int(np.partition(first, r)[r]) + q * bs
        return max(1, min(left_min, fail_step - 1))

    def _schedule(self) -> tuple[np.ndarray | None, bool]:
        """One iteration's scheduling decision (vLLM v1 semantics).

        Returns (new tokens per running row, whether the batch changed); allocates the
        iteration's KV blocks. (None, _) when nothing can run.
        """
        bs = self.bs
        kv = self.kv
        budget = self.cfg.max_num_batched_tokens
        changed = False
        preempted = False
        if len(self.r_rid):
            need = self.r_tokens - self.r_computed
            if self.spec is not None:
                need = need + self.r_gamma
            before = np.cumsum(need) - need
            new = np.minimum(need, np.maximum(budget - before, 0))
            add = np.maximum(_ceil_div(self.r_computed + new, bs) - self.r_shared - self.r_blocks, 0)
            total_add = int(add.sum())
            if total_add > kv.free_blocks:
                keep = self._preemption_cut(add)
                for i in range(len(self.r_rid) - 1, keep - 1, -1):
                    self._preempt(i)
                self._truncate(keep)
                new, add = new[:keep], add[:keep]
                total_add = int(add.sum())
                preempted = changed = True
            kv.allocate(total_add)
            self.r_blocks = self.r_blocks + add
            budget -= int(new.sum())
        else:
            new = np.zeros(0, np.int64)
        if not preempted and self.waiting and budget > 0 and len(self.r_rid) < self.cfg.max_num_seqs:
            admitted_new = self._admit(budget)
            if admitted_new:
                new = np.concatenate((new, np.asarray(admitted_new, np.int64)))
                changed = True
        if not len(self.r_rid):
            return None, changed
        return new, changed

    def _preemption_cut(self, add: np.ndarray) -> int:
        """How many running sequences (a prefix in admission order) keep running.

        vLLM preempts from the back until the front ones fit; the kept prefix m is the
        largest with free + blocks freed by preempting m..n-1 ≥ blocks needed by 0..m-1.
        A group's shared prompt is freed with its lowest-index holder.
        """
        freed = self.r_blocks.copy()
        holders = np.flatnonzero(self.r_shared > 0)
        if len(holders):
            _, first = np.unique(self.r_group[holders], return_index=True)
            idx = holders[first]
            freed[idx] += self.r_shared[idx]
        n = len(add)
        suffix_freed = np.concatenate((np.cumsum(freed[::-1])[::-1], [0]))  # freed by preempting m..n-1
        prefix_add = np.concatenate(([0], np.cumsum(add)))  # needed by 0..m-1
        ok = self.kv.free_blocks + suffix_freed - prefix_add >= 0
        return int(np.flatnonzero(ok)[-1]) if ok.any() else 0

    def _admit(self, budget: int) -> list[int]:
        """Admit waiting requests in order while budget, max_num_seqs and KV allow."""
        kv, bs, table = self.kv, self.bs, self.table
        rows: list[tuple[int, ...]] = []
        news: list[int] = []
        room = self.cfg.max_num_seqs - len(self.r_rid)
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
            if p_hit:
                kv.acquire_prompt(group)
            if own_hit:
                kv.take_cached(rid)
            kv.allocate(need_blocks)
            acc, gamma, tau_q = self.spec.admit(rid) if self.spec is not None else (0, 0, 0)
            rows.append((rid, hit, tokens, left, p_hit, own_hit + need_blocks, group, acc, gamma, tau_q))
            news.append(new)
            budget -= new
            room -= 1
        if rows:
            cols = np.array(rows, dtype=np.int64).T
            for col, values in zip(_COLS, cols):
                setattr(self, "r_" + col, np.concatenate((getattr(self, "r_" + col), values)))
        return news

    # ------------------------------------------------------------------ state changes
    def _truncate(self, keep: int) -> None:
        for col in _COLS:
            setattr(self, "r_" + col, getattr(self, "r_" + col)[:keep])

    def _release(self, i: int, cache: bool) -> None:
        """Free row i's KV; with `cache`, keep its full blocks hashed for a later prefix hit."""
        kv, bs = self.kv, self.bs
        rid, group = int(self.r_rid[i]), int(self.r_group[i])
        blocks, shared, computed = int(self.r_blocks[i]), int(self.r_shared[i]), int(self.r_computed[i])
        p_blocks = int(self.table.prompt_blocks[rid])
        if shared:
            kv.release_prompt(group)
        cache = cache and self.cfg.prefix_caching
        full = computed // bs
        if cache and not shared and p_blocks and full >= p_blocks:
            # its private copy of the prompt becomes the group's cached prompt, if none is
            if not kv.prompt_present(group):
                kv.release_to_cache(prompt_key(group), p_blocks)
            else:
                kv.release(p_blocks)
            blocks -= p_blocks
        own_full = full - p_blocks if full >= p_blocks else 0
        if cache and own_full > 0 and (shared or full >= p_blocks):
            kv.release_to_cache(rid, own_full)
            blocks -= own_full
        kv.release(blocks)

    def _preempt(self, i: int) -> None:
        rid = int(self.r_rid[i])
        self._release(i, cache=True)
        self.table.generated[rid] = int(self.r_tokens[i] - self.table.input_tokens[rid])
        self.table.preemptions[rid] += 1
        self.stats.preemptions += 1
        self.waiting.appendleft((rid, int(self.r_left[i])))

    def _advance(self, plan: _Plan, steps: int, start: float) -> None:
        """Apply `steps` iterations of the plan; retire sequences whose chunk is done."""
        table = self.table
        end = self.env.now
        if plan.pure:
            first_token = self.r_tokens == table.input_tokens[self.r_rid]
            if first_token.any():
                table.first_token_s[self.r_rid[first_token]] = start + plan.stretch.cumulative(1)
            old_blocks = _ceil_div(self.r_computed + 1, self.bs)  # allocated for step 1
            self.r_computed = self.r_computed + steps
            self.r_tokens = self.r_tokens + steps
            self.r_left = self.r_left - steps
            add = int((_ceil_div(self.r_computed, self.bs) - old_blocks).sum())
            if add:
                self.kv.allocate(add)
                self.r_blocks = self.r_blocks + (_ceil_div(self.r_computed, self.bs) - old_blocks)
            emitted = steps * len(self.r_rid)
            self.stats.emitted_tokens += emitted
            self.stats.verified_tokens += emitted
        elif plan.emit_fn is not None:
            emitted = plan.emit_fn(steps, start)
        else:
            new = plan.new
            before = self.r_computed
            self.r_computed = before + new
            emit = (self.r_computed == self.r_tokens) & (new > 0)
            first = emit & (self.r_tokens == table.input_tokens[self.r_rid])
            if first.any():
                table.first_token_s[self.r_rid[first]] = end
            self.r_tokens = self.r_tokens + emit
            self.r_left = self.r_left - emit
            prefill = new - emit
            self.stats.prefill_tokens += int(prefill[prefill > 0].sum())
            self.stats.emitted_tokens += int(emit.sum())
            self.stats.verified_tokens += int(new.sum())
            self._share_new_prompts(before)
        done = self.r_left <= 0
        if done.any():
            self._retire(done)

    def _share_new_prompts(self, before: np.ndarray) -> None:
        """Sequences whose prefill just covered the prompt publish it for their siblings."""
        if not self.cfg.prefix_caching:
            return
        p = self.table.prompt_blocks[self.r_rid]
        crossed = (self.r_shared == 0) & (p > 0) & (self.r_computed >= p * self.bs) & (before < p * self.bs)
        for i in np.flatnonzero(crossed):
            group = int(self.r_group[i])
            if not self.kv.prompt_present(group):
                self.kv.share_prompt(group, int(p[i]))
                self.r_shared[i] = p[i]
                self.r_blocks[i] -= p[i]

    def _retire(self, done: np.ndarray) -> None:
        table = self.table
        now = self.env.now
        finished_rows = []
        for i in np.flatnonzero(done):
            rid = int(self.r_rid[i])
            generated = int(self.r_tokens[i] - table.input_tokens[rid])
            table.generated[rid] = generated
            finished = generated >= table.output_tokens[rid]
            if finished:
                table.finish_s[rid] = now
            self._release(i, cache=not finished)
            finished_rows.append((rid, finished))
        keep = ~done
        for col in _COLS:
            setattr(self, "r_" + col, getattr(self, "r_" + col)[keep])
        self._sample()
        for rid, finished in finished_rows:
            self.listener.on_chunk_done(self, rid, finished)

    # ------------------------------------------------------------------ speculative hooks
    def _plan_speculative(self, new: np.ndarray, changed: bool) -> _Plan:
        assert self.spec is not None
        return self.spec.plan(self, new, changed)

    # ------------------------------------------------------------------ records
    def _sample(self) -> None:
        self.samples.append(
            (self.env.now, len(self.r_rid), len(self.waiting), self.kv.used_blocks, self.kv.cached_blocks)
        )

    def insert_pulled_kv(self, request_id: int, group_id: int, prompt_blocks: int, own_blocks: int) -> None:
        """KV that arrived through the pool lands as cached blocks (a prefix hit at admission).

        Without room for it the transfer is wasted and the request recomputes.
        """
        kv = self.kv
        if prompt_blocks and not kv.prompt_present(group_id):
            if prompt_blocks > kv.free_blocks:
                return
            kv.allocate(prompt_blocks)
            kv.release_to_cache(prompt_key(group_id), prompt_blocks)
        if own_blocks > kv.cached(request_id):
            kv.drop_cached(request_id)
            if own_blocks > kv.free_blocks:
                return
            kv.allocate(own_blocks)
            kv.release_to_cache(request_id, own_blocks)
