"""Oracle longest-processing-time-first: a reference that knows true output lengths.

The paper's "Oracle LFS": the waiting request with the longest true remaining length
goes first, with the same chunking and placement as context-aware scheduling. It
reads hidden lengths (hence the name) and is a reference, not a proven bound.
"""

from __future__ import annotations

import heapq

import numpy as np

from seersim.policies.base import ClusterView, Dispatch, Loads, Policy, chunk_limit, place_chunk


class OracleLPTPolicy(Policy):
    name = "oracle_lpt"
    uses_true_lengths = True

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self._true_output = np.zeros(0, np.int64)
        self._heap: list[tuple[int, int]] = []  # (-true remaining tokens, request id)

    def reveal_true_lengths(self, output_tokens: np.ndarray) -> None:
        """Called by the simulator only for policies that declare `uses_true_lengths`."""
        self._true_output = np.asarray(output_tokens, np.int64)

    def _push(self, view: ClusterView, rid: int) -> None:
        remaining = int(self._true_output[rid] - view.generated_tokens[rid])
        heapq.heappush(self._heap, (-remaining, rid))

    def on_step_start(self, view: ClusterView, request_ids: np.ndarray) -> None:
        for rid in request_ids.tolist():
            self._push(view, rid)

    def on_chunk_done(self, view: ClusterView, request_id: int, finished: bool) -> None:
        if not finished:
            self._push(view, request_id)

    def decide(self, view: ClusterView) -> list[Dispatch]:
        loads = Loads(view, self.cfg)
        out: list[Dispatch] = []
        while self._heap:
            rid = self._heap[0][1]
            d = place_chunk(view, loads, rid, chunk_limit(view, rid, self.cfg.chunk_tokens), self.cfg)
            if d is None:
                break
            heapq.heappop(self._heap)
            out.append(d)
        return out
