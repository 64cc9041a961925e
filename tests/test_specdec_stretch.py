"""Speculative stretches across draft-cap changes (engine/specdec.py, docs/engine.md
"Speculative decoding"): fast-forward ≡ step-by-step when a stretch spans pieces of
falling drafts, when a dispatch interrupts it, with DP ranks, and
with several draft paths (which end the stretch at a cap change instead). An interrupt
inside a later piece is rare (pieces come where a chunk nears its end), so the pieces'
own inversion is checked directly."""

from __future__ import annotations

import numpy as np
import pytest

from test_fast_forward import SMALL, _assert_equivalent, _both


def _record_pieces(monkeypatch) -> dict[str, int]:
    """Count speculative plans made of pieces across draft-cap changes, those a dispatch
    interrupted, and plans running into later epochs (their pieces are epochs)."""
    from seersim.engine.instance import Instance
    from seersim.engine.stretch import SegmentedStretch

    seen = {"segmented": 0, "interrupted": 0, "epochs": 0, "epochs_interrupted": 0}
    original = Instance._advance

    def recording(self, plan, steps, start):
        if isinstance(plan.stretch, SegmentedStretch):
            if self.spec.spans_epochs:
                seen["epochs"] += 1
                seen["epochs_interrupted"] += steps < plan.steps and steps not in self.spec.epoch_ends
            else:
                seen["segmented"] += 1
                seen["interrupted"] += steps < plan.steps
        return original(self, plan, steps, start)

    monkeypatch.setattr(Instance, "_advance", recording)
    return seen


# queued requests (8 running per instance) and small chunks: dispatches arrive mid-stretch
# (continuations re-ranked by estimate: their dispatch times are what interrupts a piece)
SEER = {
    **SMALL,
    "workload.prompts": 16,
    "cluster.instances": 2,
    "policy.chunk_tokens": 128,
    "engine.max_num_seqs": 8,
    "policy.continuation_order": "estimate",
}


@pytest.mark.parametrize("over", [{}, {"cluster.parallelism.dp": 2}], ids=["dp1", "dp2"])
def test_stretch_across_cap_changes(monkeypatch, over):
    seen = _record_pieces(monkeypatch)
    ff, sbs = _both("seer", **{**SEER, **over})
    assert seen["segmented"] > 0, "scenario must plan stretches across draft-cap changes"
    assert seen["interrupted"] > 0, "scenario must interrupt such a stretch"
    _assert_equivalent(ff, sbs)


@pytest.mark.parametrize("over", [{}, {"cluster.parallelism.dp": 2}], ids=["dp1", "dp2"])
def test_stretch_across_epochs(monkeypatch, over):
    """Short epochs: stretches run on through epoch starts whose drafts stay; a sibling
    finishing on another instance ends one at its next epoch end, a dispatch inside
    a later epoch."""
    from seersim.engine.instance import Instance

    seen = _record_pieces(monkeypatch)
    cuts = {"n": 0}
    sibling_finished = Instance.sibling_finished

    def recording(self, group, priority):
        interrupts = self.process.interrupt

        def counting(cause):
            cuts["n"] += 1
            interrupts(cause)

        self.process.interrupt = counting
        try:
            sibling_finished(self, group, priority)
        finally:
            del self.process.interrupt

    monkeypatch.setattr(Instance, "sibling_finished", recording)
    over = {
        **SEER,
        "cluster.instances": 3,
        "engine.max_num_seqs": 16,
        "policy.chunk_tokens": 256,
        "engine.speculation.reevaluate_steps": 4,
        **over,
    }
    ff, sbs = _both("seer", **over)
    assert seen["epochs"] > 0, "scenario must plan stretches across epochs"
    assert cuts["n"] > 0, "scenario must end such a stretch early for a finished sibling"
    assert seen["epochs_interrupted"] > 0, "scenario must interrupt such a stretch for a dispatch"
    _assert_equivalent(ff, sbs)


def test_several_paths_end_at_the_cap_change(monkeypatch):
    """With two draft paths KV slots are not monotone in the tokens emitted: no pieces."""
    seen = _record_pieces(monkeypatch)
    ff, sbs = _both("seer", **{**SEER, "engine.speculation.paths": 2})
    assert seen["segmented"] == 0
    _assert_equivalent(ff, sbs)


def test_full_token_budget_ends_at_the_cap_change(monkeypatch):
    """A batch that fills its token budget may admit a waiting head once drafts shrink:
    no pieces then (`fixed` drafts are cut by the budget, not chosen to fit it)."""
    from seersim.engine.specdec import SpecDecoder

    full = {"n": 0}
    original = SpecDecoder._leaves_budget

    def recording(self, verified, ranks):
        out = original(self, verified, ranks)
        full["n"] += not out
        return out

    monkeypatch.setattr(SpecDecoder, "_leaves_budget", recording)
    over = {**SEER, "engine.speculation.mode": "fixed", "engine.max_num_seqs": 16, "engine.max_num_batched_tokens": 48}
    ff, sbs = _both("seer", **over)
    assert full["n"] > 0, "scenario must fill the token budget while a cap falls"
    _assert_equivalent(ff, sbs)


def test_segmented_stretch_inverts_its_sum():
    """steps_done_by agrees exactly with cumulative, inside and at the ends of every piece."""
    from seersim.cost.base import StepLines
    from seersim.engine.stretch import SegmentedStretch
    from seersim.engine.stretch import LinearStretch

    parts = [
        (1, LinearStretch(StepLines((0.010, 0.004), (1e-7, 3e-7)), 1000.0, 12.5)),
        (4, LinearStretch(StepLines((0.009,), (1.1e-7,)), 1050.0, 12.5)),
        (9, LinearStretch(StepLines((0.008, 0.002), (1e-7, 4e-7)), 1110.0, 12.5)),
    ]
    stretch = SegmentedStretch(parts)
    k_max = 20
    cum = [stretch.cumulative(k) for k in range(k_max + 1)]
    assert all(b > a for a, b in zip(cum, cum[1:]))
    assert cum[3] == parts[0][1].cumulative(3)
    assert cum[5] == cum[3] + parts[1][1].cumulative(2)
    for elapsed in np.linspace(0.0, cum[-1] * 1.1, 997).tolist() + cum:
        k = stretch.steps_done_by(elapsed, k_max)
        assert cum[k] <= elapsed or k == 0
        assert k == k_max or cum[k + 1] > elapsed
