"""seersim — simulate the rollout phase of synchronous RL training of LLMs.

Where to start reading:
1. `config.py` — the scenario schema (what a run is made of);
2. `engine/instance.py` — one vLLM-like engine with fast-forward (the core of speed);
3. `policies/base.py` — the policy ↔ cluster contract; `policies/*.py` one policy each;
4. `engine/cluster.py` — instances + KV pool driven by a policy; `api.py` — simulate().

Extension points (each a small interface, registered by name): cost models
(`cost/base.py: CostModel`, picked by a scenario's `cost:` section), policies
(`policies/base.py: Policy`), model and GPU catalogs (`specs/`), trace formats
(`workload/replay.py`). See docs/extending.md; calibration: docs/calibration.md.
"""

from seersim.api import RunResult, StepResult, simulate
from seersim.config import Scenario, load_scenario, scenario_from_dict, with_overrides
from seersim.errors import OutputError, PolicyError, ScenarioError, SeersimError, SimulationError, SpecError, TraceError

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
