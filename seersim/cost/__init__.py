"""Step-time models behind one interface (`CostModel`), chosen by a scenario's `cost:`
section through a registry: `calibrated` (default), `roofline`, a name a user
registered, or a dotted import path `package.module:Class`."""

from __future__ import annotations

import importlib
from typing import Callable

from seersim.config import Scenario
from seersim.cost.base import CachedStepLines, CostModel, StepLines
from seersim.cost.calibrated import IterationCost, KernelCurvesCost, calibrated_from_scenario
from seersim.cost.roofline import RooflineCost
from seersim.errors import ScenarioError

__all__ = [
    "CostModel",
    "StepLines",
    "CachedStepLines",
    "RooflineCost",
    "KernelCurvesCost",
    "IterationCost",
    "COST_MODELS",
    "register_cost_model",
    "build_cost_model",
]

CostFactory = Callable[[Scenario], CostModel]

COST_MODELS: dict[str, CostFactory] = {
    "roofline": RooflineCost.from_scenario,
    "calibrated": calibrated_from_scenario,
}


def register_cost_model(name: str, factory: CostFactory | None = None):
    """Register `factory(scenario) -> CostModel` under `name` (usable as a decorator on a
    class with `from_scenario`, or on a function)."""

    def add(obj):
        COST_MODELS[name] = getattr(obj, "from_scenario", obj)
        return obj

    return add(factory) if factory is not None else add


def _import_factory(path: str) -> CostFactory:
    module, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ScenarioError(
            f"cost.model '{path}': cannot import it ({exc}); use one of {', '.join(sorted(COST_MODELS))} "
            "or 'package.module:Class'"
        ) from None
    if hasattr(obj, "from_scenario"):
        return obj.from_scenario
    if not isinstance(obj, type):
        raise ScenarioError(
            f"cost.model '{path}' is not a class; name a cost-model class (see docs/extending.md) or register a factory "
            "with seersim.cost.register_cost_model"
        )

    def build(scenario: Scenario) -> CostModel:
        try:
            return obj(scenario.model, scenario.gpu, scenario.cluster.parallelism, **scenario.cost.options)
        except TypeError as exc:
            raise ScenarioError(
                f"cost.model '{path}': the class takes neither (model, gpu, parallelism, **cost.options) nor has "
                f"from_scenario(scenario) ({exc})"
            ) from None

    return build


def build_cost_model(scenario: Scenario) -> CostModel:
    """The cost model the scenario's `cost:` section names (process workers rebuild it
    from the scenario, so nothing unpicklable needs to cross)."""
    name = scenario.cost.model
    factory = COST_MODELS.get(name)
    if factory is None:
        if "." not in name and ":" not in name:
            raise ScenarioError(
                f"cost.model '{name}' is unknown; use one of {', '.join(sorted(COST_MODELS))}, a name given to "
                "seersim.cost.register_cost_model, or 'package.module:Class'"
            )
        factory = _import_factory(name)
    model = factory(scenario)
    if not callable(getattr(model, "step_lines", None)):
        raise ScenarioError(f"cost.model '{name}' built a {type(model).__name__} without step_lines(); see docs/extending.md")
    return model


def __getattr__(name: str):
    """The stretch arithmetic moved to `seersim.engine.stretch`; old imports keep working."""
    if name in ("LinearStretch", "HeadStretch", "TabulatedStretch"):
        from seersim.engine import stretch

        return getattr(stretch, name)
    raise AttributeError(name)
