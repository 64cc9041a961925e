"""Partial rollout (Kimi k1.5 / APRIL): over-issue groups, end the step early, carry over.

The step issues `over_issue_factor` × the groups it needs and ends as soon as the
needed number of groups have fully finished; unfinished requests keep their tokens
and continue in the next RL step at high priority. Within a step, scheduling is
divided rollout (chunks, affinity/least-loaded placement), with carried-over requests
(those that start the step with tokens already generated) ahead of fresh ones.
"""

from __future__ import annotations

import numpy as np

from seersim.policies.base import ClusterView
from seersim.policies.divided import DividedPolicy


class PartialRolloutPolicy(DividedPolicy):
    name = "partial_rollout"
    over_issue = True

    def on_step_start(self, view: ClusterView, request_ids: np.ndarray) -> None:
        carried = view.generated_tokens[request_ids] > 0
        self._continuing.extend(int(r) for r in request_ids[carried])
        self._fresh.extend(int(r) for r in request_ids[~carried])
