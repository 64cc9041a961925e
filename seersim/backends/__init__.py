"""Backends: what executes the rollout a driver schedules.

`base.Backend` is the protocol the backend-neutral driver (`seersim/driver.py`) talks
to. The simulated cluster (`seersim/engine/cluster.py: SimBackend`) implements it;
live backends (one OpenAI-compatible vLLM server per instance) implement the same
protocol, so every policy runs unchanged on either.
"""

from seersim.backends.base import Backend, BackendListener, BackendRecords, BackendStalled

__all__ = ["Backend", "BackendListener", "BackendRecords", "BackendStalled"]
