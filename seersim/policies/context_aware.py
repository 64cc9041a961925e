"""Seer's Context-Aware Scheduling (the paper's Algorithm 2), on top of divided rollout.

Responses of one group have similar lengths, so each group's first request runs as a
*probe* at high priority and the group's finished lengths estimate the rest:

  every scheduling decision:
  1. a group's estimate = the longest finished length seen in it; none yet: max_tokens;
  2. if a probe is waiting, pick the probe with the fewest tokens generated so far;
  3. else pick, among the other waiting requests, one of the group with the largest
     estimate (ties by request id) — approximately longest-first;
  4. its chunk is min(chunk_tokens, max_tokens − generated), sent to an instance with
     KV room for it (placement as divided rollout), else wait until room frees.

Step 3 orders the requests *not started yet*; probes keep step 2's priority between
their chunks. Any other request between two chunks of divided rollout continues before
them, in the order its chunks returned (`continuation_order: first`, the default):
longest-first decides the order in which work starts, as in list scheduling (LPT), and a
chunk boundary is a load-balancing point, not a new decision of priority. Re-ranking
there by the group's estimate (`continuation_order: estimate`, DESIGN §6 step 3 read
literally) parks every request whose group's first finisher was short behind all groups
without one, and those underestimated requests end the step (Kimi-K2: README, known
limitations).

Anti-starvation: every `anti_starvation_every`-th pick (0 = off) serves instead the
waiting group that has received the least service time so far (to the microsecond,
ties by group id). Every pick counts; under `continuation_order: first` a waiting
continuation takes the pick, so anti-starvation serves only requests not started yet.

The policy learns only what it observes: finished lengths, tokens generated so far.
"""

from __future__ import annotations

import heapq
from bisect import insort
from collections import deque

import numpy as np

from seersim.policies.base import BlockedHead, ClusterView, Dispatch, Loads, Policy

# Served time is a sum of chunk durations between float instants, which fast-forward
# and step by step compute an ulp apart: groups served equally must still tie, so
# service is compared at this resolution.
SERVED_RESOLUTION_S = 1e-6


class ContextAwarePolicy(Policy):
    name = "context_aware"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self._probe_heap: list[tuple[int, int]] = []  # (generated, request id)
        self._group_heap: list[tuple[int, int, int]] = []  # (-estimate, first waiting id, group)
        self._waiting: dict[int, list[int]] = {}  # group -> sorted waiting non-probe ids
        self._estimate: dict[int, int] = {}
        self._is_probe: set[int] = set()
        self._continuing: deque[int] = deque()  # non-probe requests between chunks (continuation_order: first)
        # service time per group, kept only for anti-starvation
        self._served_s: dict[int, float] = {}
        self._dispatched_at: dict[int, float] = {}
        self._picks = 0
        self._blocked = BlockedHead(cfg)

    # ---- events -------------------------------------------------------------------
    def on_step_start(self, view: ClusterView, request_ids: np.ndarray) -> None:
        groups = view.group_id[request_ids]
        _, first = np.unique(groups, return_index=True)
        self._is_probe = {int(request_ids[i]) for i in first}
        for rid in request_ids.tolist():
            self._make_waiting(view, rid)

    def on_chunk_done(self, view: ClusterView, request_id: int, finished: bool) -> None:
        group = int(view.group_id[request_id])
        if self.cfg.anti_starvation_every:
            now = view.now_s
            self._served_s[group] = self._served_s.get(group, 0.0) + now - self._dispatched_at.pop(request_id, now)
        if finished:
            lengths = view.finished_lengths(group)
            new_est = max(lengths) if lengths else view.max_tokens
            if new_est != self._estimate.get(group):
                self._estimate[group] = new_est
                self._push_group(group)
        elif request_id in self._is_probe or self.cfg.continuation_order == "estimate":
            self._make_waiting(view, request_id)
        else:
            self._continuing.append(request_id)

    def _make_waiting(self, view: ClusterView, rid: int) -> None:
        if rid in self._is_probe:
            heapq.heappush(self._probe_heap, (int(view.generated_tokens[rid]), rid))
            return
        group = int(view.group_id[rid])
        self._estimate.setdefault(group, view.max_tokens)
        insort(self._waiting.setdefault(group, []), rid)
        self._push_group(group)

    def _push_group(self, group: int) -> None:
        members = self._waiting.get(group)
        if members:
            heapq.heappush(self._group_heap, (-self._estimate[group], members[0], group))

    # ---- picking ------------------------------------------------------------------
    def _top_group(self) -> int | None:
        heap = self._group_heap
        while heap:
            neg_est, first, group = heap[0]
            members = self._waiting.get(group)
            if members and members[0] == first and -neg_est == self._estimate[group]:
                return group
            heapq.heappop(heap)  # stale entry
        return None

    def _starved_group(self) -> int | None:
        waiting = [g for g, m in self._waiting.items() if m]
        served = self._served_s
        return min(waiting, key=lambda g: (round(served.get(g, 0.0) / SERVED_RESOLUTION_S), g)) if waiting else None

    def _next(self) -> tuple[int, str] | None:
        """The request to serve next and where it comes from ('probe', 'continuing' or
        'group')."""
        if self._probe_heap:
            return self._probe_heap[0][1], "probe"
        if self._continuing:
            return self._continuing[0], "continuing"
        every = self.cfg.anti_starvation_every
        group = self._starved_group() if every and (self._picks + 1) % every == 0 else self._top_group()
        if group is None:
            return None
        return self._waiting[group][0], "group"

    def decide(self, view: ClusterView) -> list[Dispatch]:
        nxt = self._next()
        if nxt is None or self._blocked.skip(view, nxt[0]):
            return []
        loads = Loads(view, self.cfg)
        out: list[Dispatch] = []
        while nxt is not None:
            rid, source = nxt
            d = self._blocked.place(view, loads, rid)
            if d is None:
                return out  # no instance has room: wait for one (no smaller request jumps ahead)
            self._picks += 1
            if source == "probe":
                heapq.heappop(self._probe_heap)
            elif source == "continuing":
                self._continuing.popleft()
            else:
                group = int(view.group_id[rid])
                self._waiting[group].pop(0)
                self._push_group(group)
            if self.cfg.anti_starvation_every:
                self._dispatched_at[rid] = view.now_s
            out.append(d)
            nxt = self._next()
        return out
