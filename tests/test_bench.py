"""benchmarks/bench.py: its runs, its growth series and its report (speed itself is
measured by running it, never asserted here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench  # noqa: E402


def test_fleet_series_scales_instances_and_prompts_together():
    base, x4 = bench.fleet_scenario(1), bench.fleet_scenario(4)
    assert x4.cluster.instances == 4 * base.cluster.instances
    assert x4.workload.prompts == 4 * base.workload.prompts
    assert x4.workload.group_size == base.workload.group_size
    assert x4.name.endswith("fleet-x4")


def test_growth_lines_divide_each_factor_by_its_series_first_run():
    def row(series, factor, policy, wall):
        return {"series": series, "factor": factor, "policy": policy, "wall_s": wall, "cpu_s": wall,
                "iterations": 10 * factor, "events": 5 * factor}

    rows = [row("a", 1, "baseline", 1.0), row("a", 2, "baseline", 1.5), row("a", 4, "baseline", 3.0),
            row("b", 1, "baseline", 2.0), row("b", 4, "baseline", 2.4), {"policy": "seer", "wall_s": 9.0}]
    assert bench.growth_lines(rows) == [
        "a x2/x1, baseline: wall 1.50x, cpu 1.50x, iterations 2.0x, events 2.0x",
        "a x4/x1, baseline: wall 3.00x, cpu 3.00x, iterations 4.0x, events 4.0x",
        "b x4/x1, baseline: wall 1.20x, cpu 1.20x, iterations 4.0x, events 4.0x",
    ]


def test_a_run_reports_what_it_simulated(capsys):
    bench.main(["--only", "small", "--policies", "baseline,divided", "--json"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["scenario"], r["policy"]) for r in rows] == [("small", "baseline"), ("small", "divided")]
    for r in rows:
        assert r["requests"] == 512 and r["output_tokens"] > 0 and r["events"] > 0 and r["cpu_s"] > 0
        # (wall_s is printed to the millisecond, the rate from the unrounded time)
        assert r["sim_tokens_per_wall_s"] == pytest.approx(r["output_tokens"] / r["wall_s"], rel=0.02)


@pytest.mark.parametrize("argv, named", [(["--only", "kimi"], "unknown kimi"), (["--policies", "sear"], "--policies: unknown sear")])
def test_an_unknown_run_or_policy_name_is_refused(capsys, argv, named):
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    assert e.value.code == 2
    assert named in capsys.readouterr().err
