"""`seersim report DIR`: one self-contained HTML page per kind of output folder."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from conftest import SMALL_YAML, TINY_SETS
from seersim.cli import app

SCENARIO = [str(SMALL_YAML), *TINY_SETS]
COMMANDS = {
    "run": ["run", *SCENARIO, "-p", "divided"],
    "compare": ["compare", *SCENARIO, "--policies", "baseline,divided"],
    "sweep": ["sweep", *SCENARIO, "--grid", "cluster.instances=1,2", "--policies", "baseline,seer"],
    "plan": ["plan", *SCENARIO, "--target-step-s", "1000", "--grid", "cluster.instances=1,2,4"],
}
# text each kind's report must show (its tables), and how many plots at least
EXPECT = {
    "run": (["makespan (rollout time)", "Instances", "busy_s"], 1),
    "compare": (["speedup_vs_baseline", "divided", "Runs (one per policy and seed)"], 3),
    "sweep": (["cluster.instances", "rl_step_s", "cost_usd", "seer"], 2),
    "plan": (["Best configuration", "Pareto frontier", "best.yaml (ready to run)", "pruned"], 1),
}


@pytest.mark.parametrize("kind", list(COMMANDS))
def test_report_is_one_self_contained_page(kind, tmp_path):
    out = tmp_path / kind
    made = CliRunner().invoke(app, [*COMMANDS[kind], "--out", str(out)])
    assert made.exit_code == 0, made.output
    result = CliRunner().invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text()
    assert f"seersim {kind} report" in page
    texts, plots = EXPECT[kind]
    for text in texts:
        assert text in page, text
    assert page.count("data:image/png;base64,") >= plots
    # self-contained: nothing fetched from elsewhere
    assert not re.search(r"""(src|href)=["'](https?:|file:|/)""", page)


def test_report_of_a_folder_without_results_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "plan.json" in result.stderr and "--out" in result.stderr
