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


def test_reproduce_json_includes_chunk_sizes(tmp_path):
    sdir = _stand_ins(tmp_path / "sc")
    result = CliRunner().invoke(app, ["reproduce", "--scenarios-dir", str(sdir), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {r["chunk_tokens"] for r in data["chunks"]} == set(CHUNKS)
    assert len(data["table4"]) == 4 * len(PAPER)
    assert all(r["seersim"] > 0 for r in data["table4"])


def test_reproduce_missing_scenarios_dir_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["reproduce", "--scenarios-dir", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "not found" in result.stderr
