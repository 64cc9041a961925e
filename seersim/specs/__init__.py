"""Model and GPU catalogs. A new model or GPU is one entry in models.py / gpus.py,
or an inline spec in the scenario file."""

from __future__ import annotations

import difflib

from seersim.errors import SpecError
from seersim.specs.gpu import GPUSpec
from seersim.specs.gpus import GPUS
from seersim.specs.model import ModelSpec
from seersim.specs.models import MODELS

__all__ = ["GPUSpec", "ModelSpec", "GPUS", "MODELS", "get_model", "get_gpu"]


def _lookup(kind: str, catalog: dict, name: str):
    key = name.strip().lower()
    if key in catalog:
        return catalog[key]
    close = difflib.get_close_matches(key, catalog, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise SpecError(
        f"unknown {kind} '{name}'.{hint} Known: {', '.join(sorted(catalog))}; "
        f"or give an inline {kind} spec in the scenario."
    )


def get_model(name: str) -> ModelSpec:
    return _lookup("model", MODELS, name)


def get_gpu(name: str) -> GPUSpec:
    return _lookup("gpu", GPUS, name)
