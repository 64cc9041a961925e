"""Seer: context-aware scheduling on divided rollout, with adaptive grouped speculative
decoding switched on in the engines (speculation is an engine option, DESIGN §6: this
policy asks for `grouped_adaptive` when the scenario leaves speculation off)."""

from __future__ import annotations

from seersim.policies.context_aware import ContextAwarePolicy


class SeerPolicy(ContextAwarePolicy):
    name = "seer"
    speculation = "grouped_adaptive"
