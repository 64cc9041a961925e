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
(`cost/base.py: CostModel`), policies (`policies/base.py: Policy`), model and GPU
catalogs (`specs/`), trace formats (`workload/replay.py`), backends
(`backends/base.py: Backend`). See docs/extending.md.
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
