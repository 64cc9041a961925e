"""The simulated backend: vLLM-like instances on one simpy clock, plus the global KV pool.

It implements `backends.base.Backend` for the driver (`seersim/driver.py`), which
owns all rollout bookkeeping; this module only wires the engines together: it builds
the instances of a step, delivers chunks to them (after a KV pull through the pool
when asked), stores a paused request's KV in the pool, and answers the observation
queries (KV use, cached prefixes) exactly as step-by-step simulation would.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np
import simpy
from simpy.core import EmptySchedule, StopSimulation

from seersim.backends.base import BackendListener, BackendRecords, BackendStalled
from seersim.config import Scenario
from seersim.cost import CostModel, build_cost_model
from seersim.engine.events import AFTER_STRETCHES, At, PendingEnds, stretch_end_priority
from seersim.engine.instance import Instance
from seersim.engine.kvcache import KVCache
from seersim.engine.kvpool import KVPool
from seersim.engine.memory import check_requests_fit, kv_capacity_blocks, speculative_lookahead_tokens
from seersim.engine.specdec import SpecDecoder, new_lines_memo
from seersim.errors import SpecError
from seersim.requests import GroupProgress, RequestTable


class SimBackend:
    """`scenario.cluster.instances` simulated instances and the KV pool (a `Backend`)."""

    def __init__(self, scenario: Scenario, cost: CostModel | None = None) -> None:
        self.scenario = scenario
        eng = scenario.engine
        self._bs = eng.block_size_tokens
        self.cost = cost or build_cost_model(scenario)
        self._blocks = kv_capacity_blocks(scenario)
        dp = scenario.cluster.parallelism.dp
        self._rank_blocks = self._blocks // dp  # each DP rank holds its own KV cache
        kv_total = np.full(scenario.cluster.instances, self._rank_blocks * dp, np.int64)
        kv_total.flags.writeable = False
        self._kv_total = kv_total
        par = scenario.cluster.parallelism
        self._nodes = max(1, math.ceil(scenario.gpus_total / scenario.gpu.gpus_per_node))
        self._link_bytes_per_s = par.gpus * scenario.gpu.scaleout_bandwidth_bytes_per_s
        self.env = simpy.Environment()
        self.instances: list[Instance] = []
        self._stop: At | None = None
        # the speculative decoders' memos of this one cost model's lines, shared by every
        # instance and step (the draft configuration is the scenario's)
        self._spec_lines = new_lines_memo()

    # ------------------------------------------------------------------ capacity, clock
    @property
    def num_instances(self) -> int:
        return len(self._kv_total)

    @property
    def block_size(self) -> int:
        return self._bs

    @property
    def max_num_seqs(self) -> int:
        return self.scenario.engine.max_num_seqs

    @property
    def kv_total_blocks(self) -> np.ndarray:
        return self._kv_total

    @property
    def dp_ranks(self) -> int:
        return self.scenario.cluster.parallelism.dp

    @property
    def now_s(self) -> float:
        return float(self.env.now)

    # ------------------------------------------------------------------ step life
    def begin_step(self, table: RequestTable, groups: GroupProgress, listener: BackendListener) -> None:
        sc, eng = self.scenario, self.scenario.engine
        spec = eng.speculation
        lookahead = 0
        if spec.mode != "none":
            lookahead = speculative_lookahead_tokens(SpecDecoder.max_draft_tokens(spec), table.max_tokens, spec.paths)
        max_ctx = int((table.input_tokens + table.max_tokens).max()) if table.n else 0
        dp = sc.cluster.parallelism.dp
        if eng.max_num_seqs < dp:
            raise SpecError(
                f"engine.max_num_seqs={eng.max_num_seqs} is per instance and is shared by its dp={dp} attention "
                f"ranks: raise it to at least {dp} (e.g. {dp} x 128)"
            )
        check_requests_fit(sc, self._rank_blocks, max_ctx, lookahead)  # a sequence lives on one DP rank
        self.table = table
        self.listener = listener
        self.env = env = simpy.Environment()
        self._stop: At | None = None
        # full prompt blocks that prefix caching can share between siblings
        self.prompt_blocks = table.input_tokens // self._bs if eng.prefix_caching else np.zeros(table.n, np.int64)
        self.pool = KVPool(sc.kv_pool, self._nodes, sc.model.kv_bytes_per_token)
        ends = PendingEnds()  # equal stretch ends share one float (engine/events.py)
        self.instances = [
            Instance(
                i,
                env,
                self._rank_caches(dp),
                self.cost,
                eng,
                table,
                self.prompt_blocks,
                self._on_chunk_done,
                SpecDecoder(spec, groups, self.cost, eng.max_num_batched_tokens, self._spec_lines) if spec.mode != "none" else None,
                stretch_end_priority(i, self.num_instances),
                ends,
            )
            for i in range(self.num_instances)
        ]

    def _rank_caches(self, dp: int) -> list[KVCache]:
        """One instance's KV caches, one per DP rank (sharing a directory of their keys)."""
        if dp == 1:
            return [KVCache(self._rank_blocks, self._bs)]
        directory: dict[int, set[int]] = {}
        return [KVCache(self._rank_blocks, self._bs, directory, r) for r in range(dp)]

    def call_soon(self, callback: Callable[[], None]) -> None:
        ev = At(self.env, 0.0, AFTER_STRETCHES)  # after every stretch ending at this instant
        ev.callbacks.append(lambda _event: callback())

    def run(self) -> None:
        env = self.env
        try:
            while True:
                env.step()
        except StopSimulation:
            return
        except EmptySchedule:
            raise BackendStalled("no chunk is running or due") from None

    def stop(self) -> None:
        if self._stop is None:
            self._stop = At(self.env, 0.0, AFTER_STRETCHES)
            self._stop.callbacks.append(StopSimulation.callback)

    def end_step(self, abort: bool) -> BackendRecords:
        for inst in self.instances:
            if abort:
                inst.abort()
            inst.check_kv(idle=True)
        return self._records()

    # ------------------------------------------------------------------ work
    def submit(self, instance_id: int, request_id: int, tokens: int, pull_kv: bool, rank: int | None = None) -> None:
        inst = self.instances[instance_id]
        if pull_kv and self.pool.enabled:
            local = inst.cached_prefix_blocks(request_id) * self._bs
            pooled = self.pool.tokens(request_id)
            if pooled > local:
                delay = self.pool.pull_time_s(request_id, pooled - local, self._link_bytes_per_s)
                self.table.pulled_bytes[request_id] += (pooled - local) * self.scenario.model.kv_bytes_per_token
                if delay > 0:
                    # a bare timeout, not a process: the same place among the events of the
                    # landing instant (simpy's NORMAL priority, in submit order), two events fewer
                    landing = self.env.timeout(delay)
                    landing.callbacks.append(lambda _event: self._land(inst, request_id, tokens, pooled, rank))
                    return
        inst.enqueue(request_id, tokens, rank)

    def _land(self, inst: Instance, rid: int, tokens: int, pooled_tokens: int, rank: int | None) -> None:
        """The pulled KV arrives: it lands as cached blocks, and the chunk joins the instance."""
        p_blocks = int(self.prompt_blocks[rid])
        own = max(0, pooled_tokens // self._bs - p_blocks)
        inst.settle_kv(rank)
        inst.insert_pulled_kv(rid, int(self.table.group_id[rid]), p_blocks, own, rank)
        inst.enqueue(rid, tokens, rank)

    def _on_chunk_done(self, instance_id: int, request_id: int, finished: bool) -> None:
        t = self.table
        if finished:
            self.pool.free(request_id)
        else:
            self.pool.store(request_id, int(t.input_tokens[request_id] + t.generated[request_id]))
        self.listener.chunk_done(instance_id, request_id, int(t.generated[request_id]), finished)
        if finished and self.scenario.engine.speculation.mode == "grouped_adaptive":
            # its siblings' acceptance rises: stretches across speculative epochs end early
            group, priority = int(t.group_id[request_id]), self.instances[instance_id].end_priority
            for inst in self.instances:
                if inst.spans_epochs and inst.id != instance_id:
                    inst.sibling_finished(group, priority)

    # ------------------------------------------------------------------ observation
    def kv_used_blocks(self) -> np.ndarray:
        for inst in self.instances:
            inst.settle_kv()
        return np.array([inst.kv_used_blocks for inst in self.instances], np.int64)

    def cached_tokens(self, request_id: int, instance_ids: Iterable[int]) -> dict[int, int]:
        out = {}
        for i in instance_ids:
            inst = self.instances[i]
            blocks = inst.cached_prefix_blocks(request_id)  # (settles the stretch's KV where it matters)
            if blocks:
                out[i] = blocks * self._bs
        return out

    def pool_tokens(self, request_id: int) -> int:
        return self.pool.tokens(request_id)

    # ------------------------------------------------------------------ records
    def _records(self) -> BackendRecords:
        gpus = self.scenario.cluster.parallelism.gpus
        rows = []
        timeline: list[tuple] = []
        for inst in self.instances:
            s = inst.stats
            rows.append(
                {
                    "instance": inst.id,
                    "gpus": gpus,
                    "busy_s": s.busy_s,
                    "iterations": s.iterations,
                    "preemptions": s.preemptions,
                    "prefill_tokens": s.prefill_tokens,
                    "emitted_tokens": s.emitted_tokens,
                    "verified_tokens": s.verified_tokens,
                    "decode_seq_steps": s.decode_seq_steps,
                    "decode_emitted_tokens": s.decode_emitted_tokens,
                    "kv_blocks": inst.kv_total_blocks,
                }
            )
            timeline.extend((inst.id, *row) for row in inst.samples)
        return BackendRecords(rows, timeline, self.pool.summary() if self.pool.enabled else {})
