"""The simulated cluster: instances + global KV pool + request table, driven by a policy.

It implements both sides of the policy contract: it is the `ClusterView` a policy
reads, and it applies the `Dispatch` decisions a policy returns. Scheduling passes
are coalesced: every event at one instant (chunk ends, the step start) asks for one
pass, which runs after all of them, at the same simulated time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import simpy

from seersim.config import Scenario
from seersim.cost import CostModel, build_cost_model
from seersim.engine.instance import Instance
from seersim.engine.kvcache import KVCache
from seersim.engine.kvpool import KVPool
from seersim.engine.requests import DONE, IN_FLIGHT, PENDING, RequestTable
from seersim.errors import PolicyError, SimulationError, SpecError
from seersim.policies import Dispatch, Policy
from seersim.policies.base import chunk_blocks
from seersim.workload import Workload


def kv_capacity_blocks(scenario: Scenario) -> int:
    """KV blocks of one instance: GPU memory × utilisation − weights − activation reserve."""
    eng, m, g = scenario.engine, scenario.model, scenario.gpu
    par = scenario.cluster.parallelism
    bs = eng.block_size_tokens
    weights = m.dense_params * m.weight_bytes_per_param * par.dp + m.routed_expert_params * m.weight_bytes_per_param
    budget = par.gpus * (g.memory_bytes * eng.gpu_memory_utilization - eng.activation_reserve_bytes_per_gpu)
    kv_bytes = budget - weights
    blocks = int(kv_bytes // (m.kv_bytes_per_token * bs)) if kv_bytes > 0 else 0
    if blocks <= 0 < kv_bytes:
        raise SpecError(
            f"engine.block_size_tokens={bs}: one KV block ({m.kv_bytes_per_token * bs / 1e9:.1f} GB) is larger than "
            f"the {kv_bytes / 1e9:.1f} GB of KV memory left after '{m.name}''s weights; use a block size of 16-256 "
            "tokens as vLLM does"
        )
    if blocks <= 0:
        raise SpecError(
            f"model '{m.name}' ({weights / 1e9:.0f} GB of weights per instance) does not fit {par.gpus} x "
            f"{g.name} ({budget / 1e9:.0f} GB usable): raise cluster.parallelism (tp/dp) or use a larger GPU"
        )
    if eng.kv_capacity_tokens is not None:
        # a what-if override may shrink the KV cache, never conjure memory the GPUs lack
        if eng.kv_capacity_tokens // bs > blocks:
            raise SpecError(
                f"engine.kv_capacity_tokens={eng.kv_capacity_tokens} exceeds the {blocks * bs} tokens of KV that "
                f"{par.gpus} x {g.name} hold after the weights; lower it or add memory"
            )
        return eng.kv_capacity_tokens // bs
    return blocks


@dataclass
class SimOutput:
    """Raw records of one simulated rollout step (metrics.py turns them into a summary)."""

    requests: pd.DataFrame
    instances: pd.DataFrame
    timeline: pd.DataFrame
    pool: dict
    kv_blocks_per_instance: int
    block_size: int


class Cluster:
    def __init__(
        self,
        scenario: Scenario,
        workload: Workload,
        policy: Policy,
        cost: CostModel | None = None,
        progress: Callable[[int, int], None] | None = None,
        stop_after_groups: int | None = None,
    ) -> None:
        self.scenario = scenario
        self.progress = progress
        # partial rollout: the step ends once this many groups have fully finished
        self.stop_after_groups = stop_after_groups
        self.policy = policy
        self.env = simpy.Environment()
        eng = scenario.engine
        self.bs = eng.block_size_tokens
        self.table = RequestTable(workload, self.bs, eng.prefix_caching)
        self.cost = cost or build_cost_model(scenario)
        blocks = kv_capacity_blocks(scenario)
        max_ctx = int((self.table.input_tokens + workload.max_tokens).max()) if self.table.n else 0
        if -(-max_ctx // self.bs) > blocks:
            raise SpecError(
                f"one request can reach {max_ctx} tokens but an instance holds only {blocks * self.bs} tokens of KV: "
                "give instances more GPUs (cluster.parallelism) or memory, or lower workload.max_tokens"
            )
        n = scenario.cluster.instances
        par = scenario.cluster.parallelism
        nodes = max(1, math.ceil(scenario.gpus_total / scenario.gpu.gpus_per_node))
        self.pool = KVPool(scenario.kv_pool, nodes, scenario.model.kv_bytes_per_token)
        self._link_bytes_per_s = par.gpus * scenario.gpu.scaleout_bandwidth_bytes_per_s
        self.instances = [
            Instance(i, self.env, KVCache(blocks, self.bs), self.cost, eng, self.table, self, self._make_spec())
            for i in range(n)
        ]
        self._kv_total = np.full(n, blocks, np.int64)
        self._in_flight = np.zeros(n, np.int64)
        self._reserved = np.zeros(n, np.int64)
        self._reservation = np.zeros(self.table.n, np.int64)
        self._ran_on: list[set[int]] = [set() for _ in range(self.table.n)]
        self._finished_by_group: dict[int, list[int]] = {}
        n_groups = int(self.table.group_id.max()) + 1 if self.table.n else 0
        self.finished_counts = np.zeros(n_groups, np.int64)
        self.group_sizes = np.bincount(self.table.group_id, minlength=n_groups) if self.table.n else self.finished_counts
        self._groups_done = 0
        # each group's first request is its probe (context-aware scheduling, speculation priority)
        self.is_probe = np.zeros(self.table.n, bool)
        if self.table.n:
            _, first = np.unique(self.table.group_id, return_index=True)
            self.is_probe[first] = True
        self._remaining = self.table.n
        # read-only views handed to policies (the arrays are never reallocated)
        self._ro_views = {
            "kv_total": _ro(self._kv_total),
            "in_flight": _ro(self._in_flight),
            "reserved": _ro(self._reserved),
            "group_id": _ro(self.table.group_id),
            "input_tokens": _ro(self.table.input_tokens),
            "generated": _ro(self.table.generated),
        }
        self._pass_pending = False
        self._all_done = self.env.event()

    def _make_spec(self):
        spec_cfg = self.scenario.engine.speculation
        if spec_cfg.mode == "none":
            return None
        from seersim.engine.specdec import SpecDecoder

        return SpecDecoder(self, spec_cfg)

    # ------------------------------------------------------------------ ClusterView
    @property
    def now_s(self) -> float:
        return float(self.env.now)

    @property
    def num_instances(self) -> int:
        return len(self.instances)

    @property
    def block_size(self) -> int:
        return self.bs

    @property
    def max_num_seqs(self) -> int:
        return self.scenario.engine.max_num_seqs

    @property
    def kv_total_blocks(self) -> np.ndarray:
        return self._ro_views["kv_total"]

    @property
    def in_flight(self) -> np.ndarray:
        return self._ro_views["in_flight"]

    @property
    def reserved_blocks(self) -> np.ndarray:
        return self._ro_views["reserved"]

    @property
    def kv_used_blocks(self) -> np.ndarray:
        for inst in self.instances:
            inst.settle_kv(cache_only=False)
        return np.array([inst.kv.used_blocks for inst in self.instances])

    @property
    def group_id(self) -> np.ndarray:
        return self._ro_views["group_id"]

    @property
    def input_tokens(self) -> np.ndarray:
        return self._ro_views["input_tokens"]

    @property
    def generated_tokens(self) -> np.ndarray:
        return self._ro_views["generated"]

    @property
    def max_tokens(self) -> int:
        return self.table.max_tokens

    @property
    def num_requests(self) -> int:
        return self.table.n

    def finished_lengths(self, group_id: int) -> list[int]:
        return self._finished_by_group.get(group_id, [])

    def cached_tokens(self, request_id: int) -> dict[int, int]:
        out = {}
        group = int(self.table.group_id[request_id])
        p_blocks = int(self.table.prompt_blocks[request_id])
        for i in self._ran_on[request_id]:
            self.instances[i].settle_kv()
            p_hit, own = self.instances[i].kv.prefix_blocks(request_id, group, p_blocks)
            if p_hit + own:
                out[i] = (p_hit + own) * self.bs
        return out

    def pool_tokens(self, request_id: int) -> int:
        return self.pool.tokens(request_id)

    # ------------------------------------------------------------------ running
    def run(self) -> SimOutput:
        rids = np.arange(self.table.n, dtype=np.int64)
        if self.policy.uses_true_lengths:
            self.policy.reveal_true_lengths(self.table.output_tokens.copy())
        self.policy.on_step_start(self, rids)
        if self.table.n:
            self._request_pass()
            try:
                self.env.run(until=self._all_done)
            except RuntimeError:  # simpy: no events left before every request finished
                if self._all_done.triggered:
                    raise
                raise SimulationError(
                    f"policy {self.policy.name} stopped dispatching with {self._remaining} request(s) unfinished "
                    "and nothing running: a policy must eventually dispatch every waiting request"
                ) from None
        for inst in self.instances:
            if self.stop_after_groups is not None:
                inst.abort()
            inst.kv.check(idle=True)
        return self._records()

    def _request_pass(self) -> None:
        if not self._pass_pending:
            self._pass_pending = True
            ev = self.env.event()
            ev.callbacks.append(self._scheduling_pass)
            ev.succeed()  # runs after every event already queued for this instant

    def _scheduling_pass(self, _event) -> None:
        self._pass_pending = False
        for d in self.policy.decide(self):
            self._apply(d)

    def _apply(self, d: Dispatch) -> None:
        t = self.table
        rid, iid = d.request_id, d.instance_id
        if not (0 <= rid < t.n) or t.state[rid] != PENDING:
            raise PolicyError(f"policy {self.policy.name} dispatched request {rid}, which is not waiting for dispatch")
        if not (0 <= iid < len(self.instances)):
            raise PolicyError(f"policy {self.policy.name} dispatched to instance {iid}, which does not exist")
        room = t.max_tokens - int(t.generated[rid])
        if not (1 <= d.max_new_tokens <= room):
            raise PolicyError(
                f"policy {self.policy.name}: max_new_tokens={d.max_new_tokens} for request {rid} must be in 1..{room}"
            )
        prev = int(t.instance[rid])
        if prev >= 0 and prev != iid:
            t.migrations[rid] += 1
        if t.chunks[rid] == 0:
            t.first_dispatch_s[rid] = self.env.now
        t.state[rid] = IN_FLIGHT
        t.instance[rid] = iid
        t.chunks[rid] += 1
        blocks = chunk_blocks(self, rid, d.max_new_tokens)
        self._reservation[rid] = blocks
        self._reserved[iid] += blocks
        self._in_flight[iid] += 1
        self._ran_on[rid].add(iid)
        # the engine knows EOS: the chunk ends at its limit or at the true end
        left = min(d.max_new_tokens, int(t.output_tokens[rid] - t.generated[rid]))
        inst = self.instances[iid]
        delay = 0.0
        if d.pull_kv and self.pool.enabled:
            local = self.cached_tokens(rid).get(iid, 0)
            pooled = self.pool.tokens(rid)
            if pooled > local:
                delay = self.pool.pull_time_s(rid, pooled - local, self._link_bytes_per_s)
                t.pulled_bytes[rid] += (pooled - local) * self.scenario.model.kv_bytes_per_token
        if delay > 0:
            self.env.process(self._deliver_after(delay, inst, rid, left, pooled))
        else:
            inst.enqueue(rid, left)

    def _deliver_after(self, delay: float, inst: Instance, rid: int, left: int, pooled_tokens: int):
        yield self.env.timeout(delay)
        p_blocks = int(self.table.prompt_blocks[rid])
        own = max(0, pooled_tokens // self.bs - p_blocks)
        inst.settle_kv(cache_only=False)
        inst.insert_pulled_kv(rid, int(self.table.group_id[rid]), p_blocks, own)
        inst.enqueue(rid, left)

    # ------------------------------------------------------------------ EngineListener
    def on_chunk_done(self, instance: Instance, request_id: int, finished: bool) -> None:
        t = self.table
        iid = instance.id
        self._in_flight[iid] -= 1
        self._reserved[iid] -= self._reservation[request_id]
        self._reservation[request_id] = 0
        if finished:
            t.state[request_id] = DONE
            self.pool.free(request_id)
            self._finished_by_group.setdefault(int(t.group_id[request_id]), []).append(int(t.generated[request_id]))
            g = t.group_id[request_id]
            self.finished_counts[g] += 1
            self._remaining -= 1
            if self.finished_counts[g] == self.group_sizes[g]:
                self._groups_done += 1
                if self.stop_after_groups is not None and self._groups_done >= self.stop_after_groups:
                    self._remaining = 0  # the step ends now; the rest carries over
            if self.progress is not None:
                self.progress(t.n - self._remaining, t.n)
        else:
            t.state[request_id] = PENDING
            self.pool.store(request_id, int(t.input_tokens[request_id] + t.generated[request_id]))
        self.policy.on_chunk_done(self, request_id, finished)
        if self._remaining <= 0:
            if not self._all_done.triggered:
                self._all_done.succeed()
        else:
            self._request_pass()

    # ------------------------------------------------------------------ records
    def _records(self) -> SimOutput:
        par = self.scenario.cluster.parallelism
        inst_rows = []
        tl_rows = []
        for inst in self.instances:
            s = inst.stats
            inst_rows.append(
                {
                    "instance": inst.id,
                    "gpus": par.gpus,
                    "busy_s": s.busy_s,
                    "iterations": s.iterations,
                    "preemptions": s.preemptions,
                    "prefill_tokens": s.prefill_tokens,
                    "emitted_tokens": s.emitted_tokens,
                    "verified_tokens": s.verified_tokens,
                    "decode_seq_steps": s.decode_seq_steps,
                    "decode_emitted_tokens": s.decode_emitted_tokens,
                    "kv_blocks": inst.kv.total_blocks,
                }
            )
            tl_rows.extend((inst.id, *row) for row in inst.samples)
        timeline = pd.DataFrame(tl_rows, columns=["instance", "time_s", "running", "waiting", "kv_used_blocks", "kv_cached_blocks"])
        return SimOutput(
            requests=self.table.to_frame(),
            instances=pd.DataFrame(inst_rows),
            timeline=timeline,
            pool=self.pool.summary() if self.pool.enabled else {},
            kv_blocks_per_instance=int(self._kv_total[0]) if len(self._kv_total) else 0,
            block_size=self.bs,
        )


def _ro(a: np.ndarray) -> np.ndarray:
    v = a.view()
    v.flags.writeable = False
    return v
