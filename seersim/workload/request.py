"""The request record shared by workloads, engine and metrics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from seersim.errors import TraceError


@dataclass(frozen=True, slots=True)
class Request:
    """One sampled response of one prompt. `output_tokens` is the hidden truth
    (already truncated at `max_tokens`); schedulers must not read it."""

    id: int
    group_id: int
    input_tokens: int
    output_tokens: int
    max_tokens: int
    generated_tokens: int = 0  # carried over from an earlier RL step (partial rollout)


@dataclass(frozen=True)
class Workload:
    requests: tuple[Request, ...]
    max_tokens: int

    def __post_init__(self) -> None:
        ids = [r.id for r in self.requests]
        if ids != list(range(len(ids))):
            raise TraceError("workload: request ids must be 0..n-1 in order")
        for r in self.requests:
            if r.input_tokens < 1 or not (1 <= r.output_tokens <= self.max_tokens) or not (
                0 <= r.generated_tokens < r.output_tokens
            ):
                raise TraceError(
                    f"workload: request {r.id} has input_tokens={r.input_tokens}, output_tokens={r.output_tokens}, "
                    f"generated_tokens={r.generated_tokens}; need input >= 1, 1 <= output <= max_tokens="
                    f"{self.max_tokens} and 0 <= generated < output"
                )

    def __len__(self) -> int:
        return len(self.requests)

    @property
    def output_tokens(self) -> int:
        return int(sum(r.output_tokens for r in self.requests))

    @property
    def num_groups(self) -> int:
        return len({r.group_id for r in self.requests})

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "request_id": np.array([r.id for r in self.requests], dtype=np.int64),
                "group_id": np.array([r.group_id for r in self.requests], dtype=np.int64),
                "input_tokens": np.array([r.input_tokens for r in self.requests], dtype=np.int64),
                "output_tokens": np.array([r.output_tokens for r in self.requests], dtype=np.int64),
            }
        )

    @classmethod
    def from_arrays(cls, group_id, input_tokens, output_tokens, max_tokens: int) -> "Workload":
        reqs = tuple(
            Request(i, int(g), int(inp), int(out), int(max_tokens))
            for i, (g, inp, out) in enumerate(zip(group_id, input_tokens, output_tokens))
        )
        return cls(reqs, int(max_tokens))
