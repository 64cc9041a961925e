"""State of one rollout step, owned by the driver: per-request columns (struct of
arrays) and per-group progress.

Who writes what (see `backends/base.py`): the driver writes dispatch state and the
columns a returned chunk settles; backends write what only an engine sees (first
token, preemptions, pulled KV). Policies read observable columns through the view.
`output_tokens` is the hidden truth: only backends (which see EOS, or force it live)
and oracle policies read it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from seersim.workload import Workload

if TYPE_CHECKING:
    import pandas as pd

PENDING, IN_FLIGHT, DONE = 0, 1, 2


class RequestTable:
    def __init__(self, workload: Workload) -> None:
        reqs = workload.requests
        n = len(reqs)
        self.n = n
        self.max_tokens = workload.max_tokens
        self.group_id = np.fromiter((r.group_id for r in reqs), np.int64, n)
        self.input_tokens = np.fromiter((r.input_tokens for r in reqs), np.int64, n)
        self.output_tokens = np.fromiter((r.output_tokens for r in reqs), np.int64, n)  # hidden truth
        self.generated = np.fromiter((r.generated_tokens for r in reqs), np.int64, n)
        self.initial_generated = self.generated.copy()  # carried over from an earlier step
        self.state = np.full(n, PENDING, np.int8)
        self.instance = np.full(n, -1, np.int64)  # where it runs or last ran
        self.chunks = np.zeros(n, np.int64)
        self.migrations = np.zeros(n, np.int64)
        self.preemptions = np.zeros(n, np.int64)
        self.pulled_bytes = np.zeros(n, np.float64)
        self.first_dispatch_s = np.full(n, np.nan)
        self.first_token_s = np.full(n, np.nan)
        self.finish_s = np.full(n, np.nan)

    def to_frame(self) -> "pd.DataFrame":
        import pandas as pd  # records only: the simulation itself does not need pandas

        return pd.DataFrame(
            {
                "request_id": np.arange(self.n),
                "group_id": self.group_id,
                "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens,
                "generated_tokens": self.generated,
                "step_tokens": self.generated - self.initial_generated,
                "instance": self.instance,
                "chunks": self.chunks,
                "migrations": self.migrations,
                "preemptions": self.preemptions,
                "pulled_bytes": self.pulled_bytes,
                "dispatch_s": self.first_dispatch_s,
                "first_token_s": self.first_token_s,
                "finish_s": self.finish_s,
            }
        )


class GroupProgress:
    """Per-group progress of one step: group sizes, finished responses, probes.

    The driver records finished requests; backends read it (speculative decoding
    drafts from a group's finished siblings and favours probes). Each group's first
    request is its probe (context-aware scheduling, speculation priority).
    """

    def __init__(self, group_id: np.ndarray) -> None:
        n_groups = int(group_id.max()) + 1 if len(group_id) else 0
        self._group_id = group_id
        self._finished = np.zeros(n_groups, np.int64)
        self.sizes = np.bincount(group_id, minlength=n_groups) if len(group_id) else self._finished.copy()
        self.sizes.flags.writeable = False
        probe = np.zeros(len(group_id), bool)
        if len(group_id):
            _, first = np.unique(group_id, return_index=True)
            probe[first] = True
        probe.flags.writeable = False
        self._probe = probe
        self.groups_done = 0

    @property
    def max_group_size(self) -> int:
        return int(self.sizes.max()) if len(self.sizes) else 1

    def finished_siblings(self, request_ids: np.ndarray) -> np.ndarray:
        """Finished responses of each request's group."""
        return self._finished[self._group_id[request_ids]]

    def is_probe(self, request_ids: np.ndarray) -> np.ndarray:
        return self._probe[request_ids]

    def record_finished(self, request_id: int) -> bool:
        """A request finished (driver only). Returns whether its group is now complete."""
        g = self._group_id[request_id]
        self._finished[g] += 1
        if self._finished[g] == self.sizes[g]:
            self.groups_done += 1
            return True
        return False
