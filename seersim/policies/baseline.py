"""veRL-like baseline: whole groups assigned to instances at the start of the step.

Each instance then runs its requests to completion with vLLM's own continuous
batching (and its preemptions); nothing moves between instances.
"""

from __future__ import annotations

import numpy as np

from seersim.policies.base import ClusterView, Dispatch, Policy


class BaselinePolicy(Policy):
    name = "baseline"
    chunked = False  # whole requests, as veRL dispatches them

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self._todo: np.ndarray = np.zeros(0, np.int64)

    def on_step_start(self, view: ClusterView, request_ids: np.ndarray) -> None:
        self._todo = np.asarray(request_ids, np.int64)

    def decide(self, view: ClusterView) -> list[Dispatch]:
        if not len(self._todo):
            return []
        rids = self._todo
        self._todo = np.zeros(0, np.int64)
        groups, first = np.unique(view.group_id[rids], return_index=True)
        order = np.argsort(first, kind="stable")  # groups in order of appearance
        n = view.num_instances
        if self.cfg.baseline_assignment == "round_robin":
            assign = {int(groups[g]): k % n for k, g in enumerate(order)}
        else:  # least_loaded: fewest prompt+expected tokens so far, by group size
            load = np.zeros(n)
            assign = {}
            for g in order:
                gid = int(groups[g])
                size = int(np.count_nonzero(view.group_id[rids] == gid))
                target = int(np.argmin(load))
                assign[gid] = target
                load[target] += size
        return [
            Dispatch(int(r), assign[int(view.group_id[r])], int(view.max_tokens - view.generated_tokens[r]))
            for r in rids
        ]
