"""Per-request state of one RL step as columns (struct of arrays), owned by the cluster.

Engines write progress (generated tokens, first-token and finish times, preemptions);
the cluster writes dispatch state; policies read observable columns through the view.
`output_tokens` is the hidden truth: only engines (which see EOS) and oracle policies read it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from seersim.workload import Workload

PENDING, IN_FLIGHT, DONE = 0, 1, 2


class RequestTable:
    def __init__(self, workload: Workload, block_size: int, prefix_caching: bool) -> None:
        reqs = workload.requests
        n = len(reqs)
        self.n = n
        self.max_tokens = workload.max_tokens
        self.group_id = np.fromiter((r.group_id for r in reqs), np.int64, n)
        self.input_tokens = np.fromiter((r.input_tokens for r in reqs), np.int64, n)
        self.output_tokens = np.fromiter((r.output_tokens for r in reqs), np.int64, n)  # hidden truth
        # full prompt blocks that prefix caching can share between siblings
        self.prompt_blocks = self.input_tokens // block_size if prefix_caching else np.zeros(n, np.int64)
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

    def to_frame(self) -> pd.DataFrame:
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
