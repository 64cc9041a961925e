"""seersim — simulate the rollout phase of synchronous RL training of LLMs.

Where to start reading:
1. `config.py` — the scenario schema (what a run is made of);
2. `policies/base.py` — the policy ↔ cluster contract; `policies/*.py` one policy each;
3. `driver.py` — the backend-neutral rollout driver (request table, dispatch checks and
   KV reservations, chunk bookkeeping, the policies' view, multi-step runs), talking to
   a `backends/base.py: Backend`;
4. `engine/` — the simulated backend: `instance.py` one vLLM-like engine with
   fast-forward (the core of speed) over a `batch.py` running batch, `specdec.py` the
   speculative-decoding strategy, `memory.py` KV capacity, `cluster.py` the wiring;
5. `api.py` — simulate().

Extension points (each a small interface, registered by name): cost models
(`cost/base.py: CostModel`, picked by a scenario's `cost:` section), policies
(`policies/base.py: Policy`), model and GPU catalogs (`specs/`), trace formats
(`workload/replay.py`), backends (`backends/base.py: Backend`). See
docs/extending.md; calibration: docs/calibration.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from seersim.errors import OutputError, PolicyError, ScenarioError, SeersimError, SimulationError, SpecError, TraceError

if TYPE_CHECKING:
    from seersim.api import RunResult, StepResult, simulate
    from seersim.config import Scenario, load_scenario, scenario_from_dict, with_overrides

# The API is loaded on first use (PEP 562), so that `seersim --help` and other light
# commands do not pay for numpy, pandas, scipy and pydantic models at start-up.
_LAZY = {
    "RunResult": "seersim.api",
    "StepResult": "seersim.api",
    "simulate": "seersim.api",
    "Scenario": "seersim.config",
    "load_scenario": "seersim.config",
    "scenario_from_dict": "seersim.config",
    "with_overrides": "seersim.config",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'seersim' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "RunResult",
    "StepResult",
    "Scenario",
    "simulate",
    "load_scenario",
    "scenario_from_dict",
    "with_overrides",
    "SeersimError",
    "ScenarioError",
    "SpecError",
    "TraceError",
    "PolicyError",
    "SimulationError",
    "OutputError",
]
__version__ = "0.1.0"
