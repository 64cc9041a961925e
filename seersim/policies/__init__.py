"""Scheduling policies, chosen by name. A new policy is one module plus one line here."""

from __future__ import annotations

import difflib

from seersim.config import PolicyConfig
from seersim.errors import PolicyError
from seersim.policies.base import ClusterView, Dispatch, Loads, Policy, chunk_limit, place_chunk
from seersim.policies.baseline import BaselinePolicy
from seersim.policies.divided import DividedPolicy

REGISTRY: dict[str, type[Policy]] = {p.name: p for p in (BaselinePolicy, DividedPolicy)}

__all__ = ["ClusterView", "Dispatch", "Loads", "Policy", "REGISTRY", "chunk_limit", "make_policy", "place_chunk"]


def make_policy(cfg: PolicyConfig) -> Policy:
    cls = REGISTRY.get(cfg.name)
    if cls is None:
        close = difflib.get_close_matches(cfg.name, REGISTRY, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise PolicyError(f"policy.name: unknown policy '{cfg.name}'.{hint} Known: {', '.join(REGISTRY)}")
    return cls(cfg)
