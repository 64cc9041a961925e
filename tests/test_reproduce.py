"""`seersim reproduce` machinery, on small stand-ins for the three paper scenarios (the
real ones take minutes; the command and the table format are what is tested here)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

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
    result = CliRunner().invoke(app, ["reproduce", "--scenarios-dir", str(sdir), "--out", str(out), "--no-chunks"])
    assert result.exit_code == 0, result.output
    md = out.read_text()
    for name, paper in PAPER.items():
        assert f"| {name} | speedup seer | {paper['seer']:.2f}x |" in md
        assert f"| {name} | tail reduction seer | {paper['tail_reduction']:.0%} |" in md
    assert md.count("| yes |") + md.count("| no |") == 4 * len(PAPER)
    assert f"`seersim reproduce --out {out} --seeds 3 --no-chunks`" in md  # the command that regenerates it


def test_reproduce_json_includes_chunk_sizes(tmp_path):
    sdir = _stand_ins(tmp_path / "sc")
    result = CliRunner().invoke(app, ["reproduce", "--scenarios-dir", str(sdir), "--json", "--seeds", "1"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {r["chunk_tokens"] for r in data["chunks"]} == set(CHUNKS)
    assert len(data["table4"]) == 4 * len(PAPER)
    assert all(r["seersim"] > 0 for r in data["table4"])


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
