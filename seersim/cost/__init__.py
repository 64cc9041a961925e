"""Step-time models behind one interface (`CostModel`), chosen by name."""

from __future__ import annotations

from seersim.config import Scenario
from seersim.cost.base import CostModel, HeadStretch, LinearStretch, StepLines, TabulatedStretch
from seersim.cost.roofline import RooflineCost

__all__ = ["CostModel", "StepLines", "LinearStretch", "HeadStretch", "TabulatedStretch", "RooflineCost", "build_cost_model"]


def build_cost_model(scenario: Scenario) -> CostModel:
    return RooflineCost(scenario.model, scenario.gpu, scenario.cluster.parallelism)
