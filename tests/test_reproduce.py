"""`seersim reproduce` machinery, on small stand-ins for the three paper scenarios (the
real ones take minutes; the command and the table format are what is tested here)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import seersim
from seersim.cli import app
from seersim.studies.reproduce import CHUNKS, PAPER

REPO = Path(__file__).resolve().parents[1]


def _stand_ins(tmp_path: Path) -> Path:
    text = (REPO / "scenarios" / "small.yaml").read_text().replace("prompts: 64", "prompts: 12")
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name in PAPER:
        (tmp_path / f"{name}.yaml").write_text(text)
    return tmp_path


def test_reproduce_writes_paper_vs_seersim_table(tmp_path):
    sdir = _stand_ins(tmp_path / "sc")
    out = tmp_path / "repro.md"
    args = ["reproduce", "--scenarios-dir", str(sdir), "--out", str(out), "--no-chunks", "--seeds", "2", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    md = out.read_text()
    for name, paper in PAPER.items():
        assert f"| {name} | speedup seer | {paper['seer']:.2f}x |" in md
        assert f"| {name} | tail reduction seer | {paper['tail_reduction']:.0%} |" in md
    assert md.count("| yes |") + md.count("| no |") == 4 * len(PAPER)
    assert f"`seersim reproduce --out {out} --seeds 2 --no-chunks`" in md  # the command that regenerates it
    # each cell is the mean over the seeds of one step's ratio, with its standard error
    sc = seersim.load_scenario(sdir / "moonlight.yaml")
    ratios = []
    for seed in (sc.seed, sc.seed + 1):
        base, seer = (seersim.simulate(sc, policy=p, seed=seed).summary for p in ("baseline", "seer"))
        ratios.append(seer["throughput_tokens_per_s"] / base["throughput_tokens_per_s"])
    cell = next(r for r in json.loads(result.stdout)["table4"] if r["model"] == "moonlight" and r["metric"] == "speedup seer")
    assert cell["seersim"] == pytest.approx(sum(ratios) / 2, rel=1e-12)
    assert cell["se"] == pytest.approx(abs(ratios[0] - ratios[1]) / 2, rel=1e-9)
    assert f"| {cell['se']:.2f} |" in md.split("| moonlight | speedup seer |")[1].splitlines()[0]


def test_reproduce_defaults_to_enough_seeds_for_its_tolerance():
    """The CLI's default (a literal, so --help need not import pandas) is the module's."""
    from seersim.studies.cli import reproduce as cmd
    from seersim.studies.reproduce import DEFAULT_SEEDS

    assert inspect.signature(cmd).parameters["seeds"].default == DEFAULT_SEEDS >= 10


def test_reproduce_json_includes_chunk_sizes(tmp_path):
    sdir = _stand_ins(tmp_path / "sc")
    result = CliRunner().invoke(app, ["reproduce", "--scenarios-dir", str(sdir), "--json", "--seeds", "1"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {r["chunk_tokens"] for r in data["chunks"]} == set(CHUNKS)
    assert len(data["table4"]) == 4 * len(PAPER)
    assert all(r["seersim"] > 0 for r in data["table4"])
    assert all(r["se"] is None for r in data["table4"])  # no spread from one seed
    # the shipped chunk size's column is Table 4's own runs
    shipped = seersim.load_scenario(sdir / "moonlight.yaml").policy.chunk_tokens
    table4 = {(r["model"], r["metric"]): r["seersim"] for r in data["table4"]}
    at_shipped = [r for r in data["chunks"] if r["chunk_tokens"] == shipped]
    assert len(at_shipped) == 2 * len(PAPER)
    assert all(r["speedup"] == table4[(r["model"], f"speedup {r['policy']}")] for r in at_shipped)


def test_reproduce_missing_scenarios_dir_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["reproduce", "--scenarios-dir", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "not found" in result.stderr


def test_reproduce_sensitivity_changes_one_assumption_at_a_time(tmp_path):
    from seersim.studies.reproduce import SENSITIVITY, TOLERANCE

    sdir = _stand_ins(tmp_path / "sc")
    out = tmp_path / "repro.md"
    args = ["reproduce", "--scenarios-dir", str(sdir), "--no-chunks", "--sensitivity", "--json", "--out", str(out), "--seeds", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    rows = data["sensitivity"]
    assert len(rows) == len(PAPER) * (1 + len(SENSITIVITY))
    cells = ("divided", "context_aware", "seer", "tail_reduction")
    for name, paper in PAPER.items():
        mine = {r["assumption"]: r for r in rows if r["model"] == name}
        shipped = {r["metric"]: r["seersim"] for r in data["table4"] if r["model"] == name}
        assert mine["as shipped"]["seer"] == shipped["speedup seer"]
        for r in mine.values():
            assert r["within_10pp"] == sum(abs(r[c] - paper[c]) <= TOLERANCE for c in cells)
        # a wider length spread changes the work, so the speedups move
        assert mine["output σ − 0.2"]["seer"] != mine["as shipped"]["seer"]
        assert mine["output σ − 0.2"]["shipped"] == "1"  # small.yaml's own σ
    md = out.read_text()
    assert "## Assumptions" in md and md.count("| fp8 KV cache (2) |") == len(PAPER)


def test_reproduce_sensitivity_on_a_replayed_trace_is_a_clear_error(tmp_path):
    sdir = _stand_ins(tmp_path / "sc")
    replay = (REPO / "scenarios" / "small-replay.yaml").read_text().replace("../traces/", str(REPO / "traces") + "/")
    (sdir / "moonlight.yaml").write_text(replay)
    result = CliRunner().invoke(app, ["reproduce", "--scenarios-dir", str(sdir), "--no-chunks", "--sensitivity", "--seeds", "1"])
    assert result.exit_code == 2
    assert "moonlight.yaml" in result.stderr and "synthetic" in result.stderr and "Traceback" not in result.output
