"""Typed errors of seersim.

Library code raises these; only the CLI turns them into one-line messages and exit
codes. Each message names the offending field or file and says how to fix it.
"""

from __future__ import annotations

from typing import Any


class SeersimError(Exception):
    """Base of every error seersim raises on bad input or impossible set-ups."""


class ScenarioError(SeersimError):
    """A scenario file or an override is malformed or has an invalid field."""


class SpecError(SeersimError):
    """An unknown model/GPU name, or a model that cannot run on the chosen hardware."""


class TraceError(SeersimError):
    """A replay or profiling trace is missing, truncated or has wrong columns."""


class PolicyError(SeersimError):
    """An unknown policy, or a policy decision the cluster cannot apply."""


class SimulationError(SeersimError):
    """The simulation reached a state it cannot continue from (e.g. a request can never fit)."""


class OutputError(SeersimError):
    """A result file or folder cannot be written (e.g. --out names an existing file)."""


class BadOption(SeersimError):
    """A command-line option has a value no command can use (e.g. an empty list)."""


class LimitError(SeersimError):
    """A run would exceed one of the scenario's `limits` (work or memory), so it is refused up front."""


class BackendError(SeersimError):
    """A live backend (vLLM servers) cannot be started, reached, or lost requests."""


class ExecutorError(SeersimError):
    """A study's executor cannot run (e.g. Ray is not installed or cannot start)."""


def plain(value: Any) -> str:
    """A value as a user typed it, for an error message: numpy scalars as plain numbers,
    strings quoted."""
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        value = value.item()
    if isinstance(value, bool):
        return str(value).lower()  # as YAML spells it
    return repr(value) if isinstance(value, str) else str(value)
