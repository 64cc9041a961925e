"""The speculative planner's shortcuts give the numbers of their definitions
(engine/specdec.py, engine/stretch.py): Algorithm 1 evaluated inline for rooflines
picks the drafts `StepLines.at` picks, a roofline stretch's closed-form index is the
generic one, and a cluster's decoders share one memo of its cost model's lines."""

from __future__ import annotations

from itertools import accumulate
from pathlib import Path

import numpy as np
import pytest

import seersim
from seersim.config import SpeculationConfig
from seersim.cost import build_cost_model
from seersim.cost.base import StepLines
from seersim.engine.specdec import MAX_DRAFT, SpecDecoder
from seersim.engine.stretch import LinearStretch
from seersim.requests import GroupProgress
from conftest import load_small, run_cluster

SMALL = Path(__file__).resolve().parents[1] / "scenarios" / "small.yaml"


class ThreeLines:
    """A cost model whose lines are not a roofline (a third line), so Algorithm 1 takes
    its general path; the same numbers as the model it wraps otherwise."""

    def __init__(self, cost) -> None:
        self.cost = cost

    def step_lines(self, num_seqs, new_tokens, extra_attn_pairs, queries_per_seq=1.0) -> StepLines:
        lines = self.cost.step_lines(num_seqs, new_tokens, extra_attn_pairs, queries_per_seq)
        return StepLines((*lines.intercepts_s, 0.0), (*lines.slopes_s, max(lines.slopes_s) * 0.999))


def _decoder(cost, **spec) -> SpecDecoder:
    groups = GroupProgress(np.repeat(np.arange(16), 8))
    cfg = SpeculationConfig(mode="grouped_adaptive", **spec)
    return SpecDecoder(cfg, groups, cost, token_budget=8192)


def _reference_choice(dec: SpecDecoder, refs: np.ndarray, probe: np.ndarray, context: int) -> tuple[int, int]:
    """Algorithm 1 from its definition: every γ's time per accepted token by `StepLines.at`."""
    alpha = dec._alpha[refs]
    batch = len(alpha)
    a_mean = float(alpha.sum()) / batch
    cap = min(MAX_DRAFT, (dec.token_budget // batch - 1) // dec.cfg.paths)
    tau_g = list(accumulate(a_mean**g for g in range(cap + 1)))
    times = []
    for g in range(cap + 1):
        width = 1 + dec.cfg.paths * g
        lines = dec.cost.step_lines(batch, batch * width, 0, float(width))
        overhead_s = dec.cfg.draft_overhead_s if g else 0.0
        times.append((lines.at(context + batch * (width - 1)) + overhead_s) / tau_g[g])
    best = min(range(len(times)), key=lambda g: (times[g], g))
    n_h = int(probe.sum())
    if best == 0 or best * batch < n_h:
        return 0, 0
    if n_h == 0:
        return best, best
    n_l = batch - n_h
    a_h = float(alpha[probe].sum()) / n_h
    a_l = float(alpha[~probe].sum()) / n_l if n_l else 0.0
    return SpecDecoder._split_budget(best * batch, n_h, n_l, a_h, a_l)


@pytest.mark.parametrize("three_lines", [False, True])
def test_algorithm_1_matches_its_definition(three_lines):
    cost = build_cost_model(seersim.load_scenario(SMALL))
    dec = _decoder(ThreeLines(cost) if three_lines else cost)
    dec._alpha, dec._tau_q = dec.model.tables(dec.groups.max_group_size)
    rng = np.random.default_rng(7)
    chosen = set()
    for _ in range(300):
        batch = int(rng.integers(1, 96))
        refs = rng.integers(0, 8, batch)
        probe = rng.random(batch) < rng.choice([0.0, 0.1, 0.5])
        choose = dec._gamma_choice(refs, probe)
        for context in rng.integers(batch, batch * 40_000, 3).tolist():
            got = choose(int(context))
            assert got == _reference_choice(dec, refs, probe, int(context))
            chosen.add(got)
    assert len(chosen) > 3, "the draws must exercise several draft choices"


def test_roofline_stretch_index_is_the_generic_one():
    rng = np.random.default_rng(3)
    crossing = 0
    for _ in range(2000):
        a = rng.uniform(1e-3, 2e-2, 2).tolist()
        b = rng.uniform(1e-9, 1e-6, 2).tolist()
        stretch = LinearStretch(StepLines(tuple(a), tuple(b)), float(rng.uniform(0, 5e4)), float(rng.uniform(0, 500)))
        starts, cum = stretch._starts, stretch._cum
        stretch._index()
        assert (starts, cum) == (stretch._starts, stretch._cum)
        crossing += len(starts) == 2
    assert crossing > 100, "the draws must cross between the two lines"


def test_a_clusters_decoders_share_one_lines_memo():
    """Every instance prices speculative iterations with the backend's one cost model and
    draft configuration, so their decoders fill one memo of its lines; a decoder built
    alone keeps its own."""
    sc = load_small(**{"engine.speculation.mode": "grouped_adaptive"})
    driver, _, _ = run_cluster(sc)
    decoders = [inst.spec for inst in driver.backend.instances]
    assert len(decoders) > 1
    assert all(d._gamma_lines is decoders[0]._gamma_lines and d._verify_lines is decoders[0]._verify_lines for d in decoders)
    assert decoders[0]._gamma_lines, "the run must price speculative iterations"
    cost = build_cost_model(sc)
    assert _decoder(cost)._gamma_lines is not _decoder(cost)._gamma_lines


def test_raised_lines_add_the_overhead_to_every_line():
    lines = StepLines((1e-3, 2e-3), (1e-9, 3e-9))
    assert lines.raised(0.0) is lines
    up = lines.raised(5e-4)
    assert up.slopes_s == lines.slopes_s
    for context in (0, 10**5, 10**7):
        assert up.at(context) == pytest.approx(lines.at(context) + 5e-4)
