"""The simulated backend implements the driver's Backend protocol, and the driver is
the only bookkeeper: a step run through Driver + SimBackend equals simulate()'s."""

from __future__ import annotations

import inspect

import numpy as np

import seersim
from conftest import assert_frames_equivalent, load_small
from seersim.backends.base import Backend, BackendListener
from seersim.driver import Driver
from seersim.engine import SimBackend
from seersim.policies import make_policy
from seersim.workload import build_workload


def _members(proto) -> dict[str, object]:
    return {k: v for k, v in vars(proto).items() if not k.startswith("_")}


def test_sim_backend_has_every_protocol_member_with_its_signature():
    for name, member in _members(Backend).items():
        impl = getattr(SimBackend, name, None)
        assert impl is not None, f"SimBackend lacks {name}"
        if isinstance(member, property):
            assert isinstance(impl, property), name
        else:
            assert list(inspect.signature(impl).parameters) == list(inspect.signature(member).parameters), name
    assert list(inspect.signature(Driver.chunk_done).parameters) == list(
        inspect.signature(_members(BackendListener)["chunk_done"]).parameters
    )


def test_driver_on_sim_backend_is_what_simulate_runs():
    sc = load_small(**{"workload.prompts": 6, "policy.name": "divided", "policy.chunk_tokens": 512})
    wl = build_workload(sc, np.random.default_rng(0))
    backend = SimBackend(sc)
    records = Driver(backend, make_policy(sc.policy), wl).run()
    res = seersim.simulate(sc, workload=wl)
    assert_frames_equivalent(records.requests, res.steps[0].requests)
    assert_frames_equivalent(records.instances, res.steps[0].instances)
    # the backend never writes the driver's dispatch columns: every chunk was submitted once
    assert int(records.requests["chunks"].sum()) == res.summary["chunks"]
    assert backend.now_s == records.requests["finish_s"].max()
