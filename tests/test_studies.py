"""The study runner (one for compare, regress, reproduce, sweep, plan) and the regress
gate's verdicts: regression, stale baseline, missing metric."""

from __future__ import annotations

import json
import pickle

import pytest
from typer.testing import CliRunner

import seersim
from conftest import SMALL_YAML, TINY, load_small
from seersim.cli import app
from seersim.cli_common import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_STALE_BASELINE
from seersim.errors import ExecutorError, ScenarioError, SpecError
from seersim.studies import regress as rg
from seersim.studies.compare import compare
from seersim.studies.plan import plan
from seersim.studies.runner import Runner, make_task, run_all, seed_list
from seersim.studies.sweep import sweep


def test_tasks_are_plain_data_and_workers_rebuild_the_cost_model():
    """Scenarios with their own cost models (the calibrated default, a roofline with its
    own efficiency and overhead) give the same numbers in worker processes as in-process:
    each worker rebuilds the model from the scenario's `cost:` section; no live object
    crosses the process boundary."""
    roofline = load_small(**TINY, **{"cost.model": "roofline", "cost.flops_efficiency": 0.2, "cost.step_overhead_s": 0.01})
    scenarios = {"calibrated": load_small(**TINY), "roofline": roofline}
    tasks = [make_task(sc, p, 0, key=f"{name}/{p}") for name, sc in scenarios.items() for p in ("baseline", "divided", "seer")]
    assert all(type(v).__module__ == "builtins" for t in tasks for v in t.scenario.values())
    pickle.dumps(tasks)
    pooled = run_all(tasks, jobs=2)
    for name, sc in scenarios.items():
        for p in ("baseline", "divided", "seer"):
            assert pooled[f"{name}/{p}"].summary == seersim.simulate(sc, policy=p, seed=0).summary
    assert pooled["roofline/baseline"].summary["makespan_s"] != pooled["calibrated/baseline"].summary["makespan_s"]


def test_compare_in_processes_equals_in_process():
    sc = load_small(**TINY)
    a = compare(sc, ["baseline", "context_aware"], seeds=2, jobs=1).runs
    b = compare(sc, ["baseline", "context_aware"], seeds=2, jobs=2).runs
    assert a.to_dict(orient="records") == b.to_dict(orient="records")


def test_an_impossible_point_comes_back_as_its_typed_error():
    sc = load_small(**TINY, **{"gpu.memory_bytes": 10e9})  # 15 GB of weights on a 10 GB GPU
    out = run_all([make_task(sc, "baseline", 0, key="x")])["x"]
    assert out.summary is None and isinstance(out.error, SpecError)
    assert "does not fit" in str(out.error)


def test_unknown_executor_is_a_typed_error():
    with pytest.raises(ExecutorError, match="choose one of local, ray"):
        Runner(executor="slurm")


# ------------------------------------------------------------------ regress verdicts
def _baseline(tmp_path, **fields):
    path = tmp_path / "regress.json"
    rg.update(path, [str(SMALL_YAML)], ["baseline"])
    data = json.loads(path.read_text())
    for e in data["entries"]:
        e["overrides"] = dict(TINY)
    path.write_text(json.dumps(data))
    rg.update(path)  # re-measure with the tiny overrides
    data = json.loads(path.read_text())
    for e in data["entries"]:
        for k, v in fields.items():
            if v is None:
                e["metrics"].pop(k)
            else:
                e["metrics"][k] = v(e["metrics"][k])
    path.write_text(json.dumps(data))
    return path


def test_regress_reports_an_improvement_beyond_tolerance_as_a_stale_baseline(tmp_path):
    path = _baseline(tmp_path, makespan_s=lambda m: m * 1.10)  # stored 10% slower than now
    result = CliRunner().invoke(app, ["regress", "--baseline", str(path)])
    assert result.exit_code == EXIT_STALE_BASELINE, result.output
    assert "stale baseline" in result.output and "seersim regress --update" in result.output
    table = rg.check(path)
    assert list(table[table["metric"] == "makespan_s"]["status"]) == [rg.STALE]


def test_regress_worse_wins_over_stale(tmp_path):
    path = _baseline(tmp_path, makespan_s=lambda m: m * 1.10, tail_s=lambda t: t * 0.5)
    result = CliRunner().invoke(app, ["regress", "--baseline", str(path), "--json"])
    assert result.exit_code == EXIT_CHECK_FAILED
    data = json.loads(result.stdout)
    assert data["passed"] is False and data["stale"] is True


def test_regress_missing_metric_is_an_error_naming_it(tmp_path):
    path = _baseline(tmp_path, tail_s=None)
    result = CliRunner().invoke(app, ["regress", "--baseline", str(path)])
    assert result.exit_code == EXIT_BAD_INPUT
    assert "tail_s" in result.stderr and "--update" in result.stderr
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("stored, named", [(lambda t: None, "has no stored tail_s"), (lambda t: "abc", "tail_s is not a number")])
def test_regress_null_or_text_metric_is_an_error_naming_it(tmp_path, stored, named):
    path = _baseline(tmp_path, tail_s=stored)
    result = CliRunner().invoke(app, ["regress", "--baseline", str(path)])
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert named in result.stderr and len(result.stderr.splitlines()) == 1


def test_regress_help_documents_exit_codes():
    result = CliRunner().invoke(app, ["regress", "--help"])
    assert "stale baseline" in result.output and "3" in result.output



@pytest.mark.parametrize("count", [0, -1, True, 1.5])
def test_every_study_refuses_a_seed_count_that_is_not_a_whole_number_from_one(count):
    sc = load_small(**TINY)
    assert seed_list(sc.model_copy(update={"seed": 7}), 3) == [7, 8, 9]
    for study in (
        lambda: compare(sc, ["baseline"], seeds=count),
        lambda: sweep(sc, {"cluster.instances": [1]}, ["baseline"], seeds=count),
        lambda: plan(sc, 100.0, {"cluster.instances": [1]}, ["baseline"], seeds=count),
    ):
        with pytest.raises(ScenarioError, match="--seeds must be a whole number ≥ 1"):
            study()
