"""Scheduling policies, chosen by name. A new policy is one module plus one line here."""

from __future__ import annotations

import difflib

from seersim.config import PolicyConfig
from seersim.errors import PolicyError
from seersim.policies.base import ClusterView, Dispatch, Loads, Policy, chunk_limit, place_chunk
from seersim.policies.baseline import BaselinePolicy
from seersim.policies.context_aware import ContextAwarePolicy
from seersim.policies.divided import DividedPolicy
from seersim.policies.oracle_lpt import OracleLPTPolicy
from seersim.policies.partial_rollout import PartialRolloutPolicy
from seersim.policies.seer import SeerPolicy

REGISTRY: dict[str, type[Policy]] = {
    p.name: p for p in (BaselinePolicy, DividedPolicy, ContextAwarePolicy, SeerPolicy, OracleLPTPolicy, PartialRolloutPolicy)
}

__all__ = ["ClusterView", "Dispatch", "Loads", "Policy", "REGISTRY", "chunk_limit", "make_policy", "place_chunk", "policy_class"]


def policy_class(name: str) -> type[Policy]:
    cls = REGISTRY.get(name)
    if cls is None:
        close = difflib.get_close_matches(name, REGISTRY, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise PolicyError(f"policy.name: unknown policy '{name}'.{hint} Known: {', '.join(REGISTRY)}")
    return cls


def make_policy(cfg: PolicyConfig) -> Policy:
    return policy_class(cfg.name)(cfg)
