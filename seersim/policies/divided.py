"""Seer's Divided Rollout: requests are scheduled chunk by chunk.

Every chunk of at most `chunk_tokens` goes to an instance with KV room for it (so
instances never over-commit KV and never preempt), placed by affinity or load
(`place_chunk`); after the chunk the request returns here and may continue
anywhere. Continuations go before fresh requests, in the order they returned, so
started work (and its KV) finishes first.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from seersim.policies.base import BlockedHead, ClusterView, Dispatch, Loads, Policy


class DividedPolicy(Policy):
    name = "divided"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self._fresh: deque[int] = deque()
        self._continuing: deque[int] = deque()
        self._blocked = BlockedHead(cfg)

    def on_step_start(self, view: ClusterView, request_ids: np.ndarray) -> None:
        self._fresh.extend(int(r) for r in request_ids)

    def on_chunk_done(self, view: ClusterView, request_id: int, finished: bool) -> None:
        if not finished:
            self._continuing.append(request_id)

    def decide(self, view: ClusterView) -> list[Dispatch]:
        head = self._continuing or self._fresh
        if not head or self._blocked.skip(view, head[0]):
            return []
        loads = Loads(view, self.cfg)
        out: list[Dispatch] = []
        for queue in (self._continuing, self._fresh):
            while queue:
                rid = queue[0]
                d = self._blocked.place(view, loads, rid)
                if d is None:
                    return out
                queue.popleft()
                out.append(d)
        return out
