"""The backend-neutral rollout driver: one scheduler loop for the simulator and live servers.

It owns the bookkeeping of a rollout step — the request table, group progress,
dispatch validation, KV reservations, chunk accounting — and is both sides of the
policy contract: the read-only `ClusterView` a policy sees, and the applier of the
`Dispatch` decisions it returns. It talks to whatever executes the chunks through
the `Backend` protocol (`backends/base.py`). Scheduling passes are coalesced: every
event at one instant (chunk ends, the step start) asks for one pass, which runs after
all of them, at the same time.

`rollout_steps` runs `scenario.steps` RL steps, including partial rollout's
over-issue and carry-over (DESIGN §6 "Reference policies").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from seersim.backends.base import INSTANCE_COLUMNS, TIMELINE_COLUMNS, Backend, BackendStalled
from seersim.config import Scenario, SyntheticWorkload
from seersim.errors import PolicyError, SimulationError
from seersim.policies import Dispatch, Policy, make_policy
from seersim.policies.base import RankReservations, chunk_blocks
from seersim.requests import DONE, IN_FLIGHT, PENDING, GroupProgress, RequestTable
from seersim.workload import Request, Workload, build_workload, generate_synthetic

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class StepRecords:
    """Raw records of one rollout step (metrics.py turns them into a summary)."""

    requests: "pd.DataFrame"
    instances: "pd.DataFrame"
    timeline: "pd.DataFrame"
    pool: dict
    kv_blocks_per_instance: int
    block_size: int


class Driver:
    """Runs one RL step of `workload` under `policy` on `backend`.

    `stop_after_groups` (partial rollout): the step ends once this many groups have
    fully finished; the backend then aborts what still runs. `prefix_caching`: the
    instances share a group's prompt blocks between its requests, so a reservation
    counts them once per DP rank and group.

    A chunked policy's chunks are reserved and sent to a DP rank of the instance
    (`policies.base.RankReservations`, the rule `Loads` checks room with), so no rank
    over-commits its own KV; a whole-request policy (baseline) sends no rank and the
    instance balances its ranks itself (`Instance._pick_rank`).
    """

    def __init__(
        self,
        backend: Backend,
        policy: Policy,
        workload: Workload,
        progress: Callable[[int, int], None] | None = None,
        stop_after_groups: int | None = None,
        prefix_caching: bool = True,
    ) -> None:
        self.backend = backend
        self.policy = policy
        self.progress = progress
        self.stop_after_groups = stop_after_groups
        self.table = t = RequestTable(workload)
        self.groups = GroupProgress(t.group_id)
        # the backend's capacity is fixed for its life: read once (policies ask on every placement)
        self._num_instances = n = backend.num_instances
        self._block_size, self._max_num_seqs = backend.block_size, backend.max_num_seqs
        self._in_flight = np.zeros(n, np.int64)
        self._routes_ranks = policy.chunked
        dp = backend.dp_ranks
        rank_total = np.repeat(backend.kv_total_blocks[:, None] // dp, dp, axis=1)
        self._rank_total = _ro(rank_total)
        self._no_group_chunks = _ro(np.zeros((n, dp), np.int64))
        self._ranks = RankReservations(rank_total, np.zeros((n, dp), np.int64), lambda group: self._no_group_chunks)
        self._rank = np.full(t.n, -1, np.int64)  # the DP rank each in-flight chunk was sent to
        self._chunk_blocks = np.zeros(t.n, np.int64)  # each routed in-flight chunk's `chunk_blocks`
        # per group: full prompt blocks its requests share (the shortest prompt's)
        shared_prompt = np.zeros(int(t.group_id.max()) + 1 if t.n else 0, np.int64)
        if prefix_caching and t.n:
            shared_prompt[:] = t.input_tokens.max() // backend.block_size
            np.minimum.at(shared_prompt, t.group_id, t.input_tokens // backend.block_size)
        self._shared_prompt: list[int] = shared_prompt.tolist()
        self._reservation_rule = policy.cfg.kv_reservation
        self._chunks_returned = 0
        self._chunk_tokens_returned = 0
        # per request: instance -> its context at the end of its last chunk there (at the
        # chunk's limit while it runs): a bound on what the instance caches of it
        self._ran_on: list[dict[int, int]] = [{} for _ in range(t.n)]
        # the rank of each instance each request's last chunk there ran on (-1: none sent;
        # int32: requests × instances can be large)
        self._affinity = np.full((t.n, n), -1, np.int32)
        self._finished_by_group: dict[int, list[int]] = {}
        self._remaining = t.n
        # read-only views handed to policies (the arrays are never reallocated)
        self._ro_in_flight = _ro(self._in_flight)
        self._ro_affinity = _ro(self._affinity)
        self._ro_rank_reserved = _ro(self._ranks.reserved)
        self._ro_group_id = _ro(t.group_id)
        self._ro_input = _ro(t.input_tokens)
        self._ro_generated = _ro(t.generated)
        self._ro_group_counts: dict[int, np.ndarray] = {}  # per group that booked a chunk (`group_rank_in_flight`)
        self._returned: list[tuple[int, int, int]] = []  # `returned_chunks`
        self._pass_pending = False
        self._stopped = False

    # ------------------------------------------------------------------ ClusterView
    @property
    def now_s(self) -> float:
        return self.backend.now_s

    @property
    def num_instances(self) -> int:
        return self._num_instances

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def max_num_seqs(self) -> int:
        return self._max_num_seqs

    @property
    def kv_total_blocks(self) -> np.ndarray:
        return self.backend.kv_total_blocks

    @property
    def in_flight(self) -> np.ndarray:
        return self._ro_in_flight

    @property
    def rank_total_blocks(self) -> np.ndarray:
        return self._rank_total

    @property
    def rank_reserved_blocks(self) -> np.ndarray:
        return self._ro_rank_reserved

    def group_rank_in_flight(self, group_id: int) -> np.ndarray:
        view = self._ro_group_counts.get(group_id)
        if view is None:
            counts = self._ranks.group_counts(group_id)
            if counts is self._no_group_chunks:
                return counts  # (read-only already; the group's own counts come with its first booking)
            view = self._ro_group_counts[group_id] = _ro(counts)  # (its counts array lives on)
        return view

    def affinity_ranks(self, request_id: int) -> np.ndarray:
        return self._ro_affinity[request_id]

    def shared_prompt_blocks(self, group_id: int) -> int:
        return self._shared_prompt[group_id]

    @property
    def mean_chunk_tokens(self) -> float | None:
        return self._chunk_tokens_returned / self._chunks_returned if self._chunks_returned else None

    @property
    def kv_used_blocks(self) -> np.ndarray:
        return self.backend.kv_used_blocks()

    @property
    def group_id(self) -> np.ndarray:
        return self._ro_group_id

    @property
    def input_tokens(self) -> np.ndarray:
        return self._ro_input

    @property
    def generated_tokens(self) -> np.ndarray:
        return self._ro_generated

    @property
    def max_tokens(self) -> int:
        return self.table.max_tokens

    @property
    def num_requests(self) -> int:
        return self.table.n

    def finished_lengths(self, group_id: int) -> list[int]:
        return self._finished_by_group.get(group_id, [])

    def cached_tokens(self, request_id: int, instance_ids: Iterable[int] | None = None) -> dict[int, int]:
        ids = self._ran_on[request_id] if instance_ids is None else instance_ids
        return self.backend.cached_tokens(request_id, ids)

    def cached_tokens_bound(self, request_id: int) -> Mapping[int, int]:
        return MappingProxyType(self._ran_on[request_id])

    def pool_tokens(self, request_id: int) -> int:
        return self.backend.pool_tokens(request_id)

    @property
    def returned_chunks(self) -> Sequence[tuple[int, int, int]]:
        return self._returned

    # ------------------------------------------------------------------ running
    def run(self) -> StepRecords:
        t, backend = self.table, self.backend
        backend.begin_step(t, self.groups, self)
        if self.policy.uses_true_lengths:
            self.policy.reveal_true_lengths(t.output_tokens.copy())
        self.policy.on_step_start(self, np.arange(t.n, dtype=np.int64))
        if t.n:
            self._request_pass()
            try:
                backend.run()
            except BackendStalled:
                raise SimulationError(
                    f"policy {self.policy.name} stopped dispatching with {self._remaining} request(s) unfinished "
                    "and nothing running: a policy must eventually dispatch every waiting request"
                ) from None
        return self._records(backend.end_step(abort=self.stop_after_groups is not None))

    def _request_pass(self) -> None:
        if not self._pass_pending:
            self._pass_pending = True
            self.backend.call_soon(self._scheduling_pass)

    def _scheduling_pass(self) -> None:
        self._pass_pending = False
        decisions = self.policy.decide(self)
        self._returned.clear()
        for d in decisions:
            self._apply(d)

    def _apply(self, d: Dispatch) -> None:
        t = self.table
        rid, iid = d.request_id, d.instance_id
        if not (0 <= rid < t.n) or t.state[rid] != PENDING:
            raise PolicyError(f"policy {self.policy.name} dispatched request {rid}, which is not waiting for dispatch")
        if not (0 <= iid < self._num_instances):
            raise PolicyError(f"policy {self.policy.name} dispatched to instance {iid}, which does not exist")
        generated = int(t.generated[rid])
        room = t.max_tokens - generated
        if not (1 <= d.max_new_tokens <= room):
            raise PolicyError(
                f"policy {self.policy.name}: max_new_tokens={d.max_new_tokens} for request {rid} must be in 1..{room}"
            )
        prev = int(t.instance[rid])
        if prev >= 0 and prev != iid:
            t.migrations[rid] += 1
        if t.chunks[rid] == 0:
            t.first_dispatch_s[rid] = self.backend.now_s
        t.state[rid] = IN_FLIGHT
        t.instance[rid] = iid
        t.chunks[rid] += 1
        self._in_flight[iid] += 1
        rank = -1
        if self._routes_ranks:
            rank = self._ranks.rank(iid, int(self._affinity[rid, iid]))
            group = int(t.group_id[rid])
            blocks = chunk_blocks(self, rid, d.max_new_tokens, self._reservation_rule)
            self._chunk_blocks[rid] = blocks
            self._ranks.book(iid, rank, group, blocks, self._shared_prompt[group])
        self._rank[rid] = rank
        self._affinity[rid, iid] = rank
        self._ran_on[rid][iid] = int(t.input_tokens[rid]) + generated + d.max_new_tokens
        # the chunk ends at its limit or at the request's true end (EOS; forced live)
        tokens = min(d.max_new_tokens, int(t.output_tokens[rid]) - generated)
        self.backend.submit(iid, rid, tokens, d.pull_kv, rank if rank >= 0 else None)

    # ------------------------------------------------------------------ BackendListener
    def chunk_done(self, instance_id: int, request_id: int, generated_tokens: int, finished: bool) -> None:
        t = self.table
        self._chunks_returned += 1
        self._chunk_tokens_returned += generated_tokens - int(t.generated[request_id])
        t.generated[request_id] = generated_tokens
        self._ran_on[request_id][instance_id] = int(t.input_tokens[request_id]) + generated_tokens
        self._in_flight[instance_id] -= 1
        rank = int(self._rank[request_id])
        freed = 0
        if rank >= 0:
            group = int(t.group_id[request_id])
            blocks = int(self._chunk_blocks[request_id])
            freed = self._ranks.release(instance_id, rank, group, blocks, self._shared_prompt[group])
        self._returned.append((instance_id, rank, freed))
        if finished:
            t.state[request_id] = DONE
            t.finish_s[request_id] = self.backend.now_s
            self._finished_by_group.setdefault(int(t.group_id[request_id]), []).append(generated_tokens)
            self._remaining -= 1
            if self.groups.record_finished(request_id):
                if self.stop_after_groups is not None and self.groups.groups_done >= self.stop_after_groups:
                    self._remaining = 0  # the step ends now; the rest carries over
            if self.progress is not None:
                self.progress(t.n - self._remaining, t.n)
        else:
            t.state[request_id] = PENDING
        self.policy.on_chunk_done(self, request_id, finished)
        if self._remaining <= 0:
            if not self._stopped:
                self._stopped = True
                self.backend.stop()
        else:
            self._request_pass()

    # ------------------------------------------------------------------ records
    def _records(self, rec) -> StepRecords:
        import pandas as pd

        kv_total = self.backend.kv_total_blocks
        return StepRecords(
            requests=self.table.to_frame(),
            instances=pd.DataFrame(rec.instances, columns=list(INSTANCE_COLUMNS)),
            timeline=pd.DataFrame(rec.timeline, columns=list(TIMELINE_COLUMNS)),
            pool=rec.pool,
            kv_blocks_per_instance=int(kv_total[0]) if len(kv_total) else 0,
            block_size=self.backend.block_size,
        )


# ---------------------------------------------------------------------- multi-step runs
def rollout_steps(
    scenario: Scenario,
    backend: Backend,
    rng: np.random.Generator,
    workload: Workload | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[StepRecords]:
    """Run `scenario.steps` RL steps on `backend`, yielding each step's records.

    `workload` replays the same requests every step instead of building them. With a
    partial-rollout policy each step over-issues groups, ends when the step's number of
    groups finished, and carries the unfinished requests into the next step.
    """
    carried: list[Request] = []
    for _ in range(scenario.steps):
        wl = workload if workload is not None else build_workload(scenario, rng)
        policy = make_policy(scenario.policy)
        stop_after = None
        if policy.over_issue:
            wl, stop_after = over_issued_step(scenario, wl, carried, rng)
        driver = Driver(
            backend, policy, wl, progress=progress, stop_after_groups=stop_after,
            prefix_caching=scenario.engine.prefix_caching,
        )
        records = driver.run()
        if policy.over_issue:
            carried = carry_over(wl, driver.table)
        yield records


def over_issued_step(
    scenario: Scenario, workload: Workload, carried: list[Request], rng: np.random.Generator
) -> tuple[Workload, int]:
    """Partial rollout: carried requests plus fresh groups up to over_issue_factor × the
    step's groups; the step ends after the step's number of groups finish."""
    needed = workload.num_groups
    carried_groups = sorted({r.group_id for r in carried})
    target = math.ceil(scenario.policy.over_issue_factor * needed)
    fresh_groups = max(0, target - len(carried_groups))
    if isinstance(scenario.workload, SyntheticWorkload) and fresh_groups != needed:
        cfg = scenario.workload.model_copy(update={"prompts": max(1, fresh_groups)})
        fresh = generate_synthetic(cfg, rng).requests if fresh_groups else ()
    else:
        fresh = workload.requests
    remap = {g: i for i, g in enumerate(carried_groups)}
    reqs = [
        Request(i, remap[r.group_id], r.input_tokens, r.output_tokens, workload.max_tokens, r.generated_tokens)
        for i, r in enumerate(carried)
    ]
    base = len(carried_groups)
    for r in fresh:
        reqs.append(Request(len(reqs), base + r.group_id, r.input_tokens, r.output_tokens, workload.max_tokens))
    return Workload(tuple(reqs), workload.max_tokens), needed


def carry_over(workload: Workload, table: RequestTable) -> list[Request]:
    """Unfinished requests of a partial-rollout step, with the tokens they generated."""
    return [
        Request(0, int(table.group_id[i]), int(table.input_tokens[i]), int(table.output_tokens[i]), workload.max_tokens, int(table.generated[i]))
        for i in np.flatnonzero(np.isnan(table.finish_s))
    ]


def _ro(a: np.ndarray) -> np.ndarray:
    v = a.view()
    v.flags.writeable = False
    return v
