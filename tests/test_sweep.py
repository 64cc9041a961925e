"""`seersim sweep`: the grid × policies × seeds table, progress, resumption after a kill,
and the Ray executor against the local one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from typer.testing import CliRunner

import seersim
from conftest import REPO_ROOT, SMALL_YAML, TINY, TINY_SETS, load_small
from seersim.cli import app
from seersim.errors import ExecutorError, ScenarioError
from seersim.studies.sweep import parse_grid, sweep

# 5 instance counts × 4 chunk sizes × 3 policies × 2 seeds = 120 points
GRID = ["--grid", "cluster.instances=1,2,3,4,6", "--grid", "policy.chunk_tokens=256,512,1024,2048"]
POLICIES = ["--policies", "baseline,divided,context_aware"]
ARGS = ["sweep", str(SMALL_YAML), *TINY_SETS, *GRID, *POLICIES, "--seeds", "2"]
N_POINTS = 120
KEYS = ["cluster.instances", "policy.chunk_tokens", "policy", "seed"]


def test_parse_grid_takes_dotted_keys_and_yaml_values():
    g = parse_grid(["cluster.instances=2,4", "gpu=h100-sxm,a100-80gb", "workload.input_tokens={dist: constant, mean: 40},{dist: constant, mean: 80}"])
    assert g == {
        "cluster.instances": [2, 4],
        "gpu": ["h100-sxm", "a100-80gb"],
        "workload.input_tokens": [{"dist": "constant", "mean": 40}, {"dist": "constant", "mean": 80}],
    }
    for bad, msg in (("seed=1,2", "--seeds"), ("policy.name=a,b", "--policies"), ("cluster.instances", "dotted.key=")):
        with pytest.raises(ScenarioError, match=msg):
            parse_grid([bad])


def _point_files(out):
    return {f.name: f.stat().st_mtime_ns for f in (out / "points").glob("*.json")}


def test_sweep_of_120_points_survives_a_kill_and_resumes_without_redoing_points(tmp_path, monkeypatch):
    out = tmp_path / "sw"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "seersim", *ARGS, "--out", str(out)],
        env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while proc.poll() is None and len(_point_files(out) if (out / "points").is_dir() else ()) < 25:
        assert time.monotonic() < deadline, "the sweep wrote no points"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _point_files(out)
    assert 0 < len(before) < N_POINTS, f"the kill landed after {len(before)} points; nothing left to resume"
    assert not (out / "results.parquet").exists()  # merged only at the end

    monkeypatch.setattr("seersim.progress.PLAIN_QUIET_S", 0.0)  # lines even for a short resumed run
    result = CliRunner().invoke(app, [*ARGS, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"resumed: {len(before)} of {N_POINTS} points" in result.output
    assert f"({N_POINTS - len(before)} simulated now)" in result.output
    # progress off a terminal: plain lines, up to the whole sweep
    assert f"seersim: sweep of small: 100% ({N_POINTS}/{N_POINTS})" in result.output
    after = _point_files(out)
    assert len(after) == N_POINTS
    assert all(after[name] == mtime for name, mtime in before.items()), "a finished point was redone"

    table = pd.read_parquet(out / "results.parquet")
    assert len(table) == N_POINTS
    assert not table.duplicated(KEYS).any()
    for col in [*KEYS, "rl_step_s", "gpu_hours", "cost_usd", "gpu_hour_usd", "makespan_s", "throughput_tokens_per_s"]:
        assert col in table, col
    assert table["error"].isna().all()
    # a sample point equals a direct simulation of the same overrides
    row = table[(table["cluster.instances"] == 3) & (table["policy.chunk_tokens"] == 512)
                & (table["policy"] == "divided") & (table["seed"] == 1)].iloc[0]
    direct = seersim.simulate(load_small(**TINY, **{"cluster.instances": 3, "policy.chunk_tokens": 512}), policy="divided", seed=1).summary
    assert row["rl_step_s"] == pytest.approx(direct["rl_step_s"], rel=1e-12)
    assert row["cost_usd"] == pytest.approx(direct["gpus"] * direct["rl_step_s"] / 3600 * 2.5, rel=1e-12)

    # a third run has nothing left to do and keeps the table
    again = CliRunner().invoke(app, [*ARGS, "--out", str(out), "--json"])
    assert json.loads(again.stdout) == {"points": N_POINTS, "simulated": 0, "resumed": N_POINTS, "table": str(out / "results.parquet")}


def test_sweep_refuses_a_folder_of_another_scenario(tmp_path):
    out = tmp_path / "sw"
    args = ["sweep", str(SMALL_YAML), *TINY_SETS, "--grid", "cluster.instances=1,2", "--out", str(out)]
    assert CliRunner().invoke(app, args).exit_code == 0
    result = CliRunner().invoke(app, [*args, "--set", "engine.max_num_seqs=32"])
    assert result.exit_code == 2
    assert "different scenario" in result.stderr and "--overwrite" in result.stderr
    assert CliRunner().invoke(app, [*args, "--set", "engine.max_num_seqs=32", "--overwrite"]).exit_code == 0


def test_sweep_records_infeasible_points_once_with_their_error(tmp_path):
    sc = load_small(**TINY)
    res = sweep(sc, {"gpu.memory_bytes": [10e9, 80e9]}, out=tmp_path / "sw")
    assert list(res.table["error"].notna()) == [True, False]
    assert "does not fit" in res.table["error"].iloc[0]


@pytest.mark.slow
def test_ray_executor_gives_the_local_table(capsys):
    pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
    sc = load_small(**TINY)
    grid = {"cluster.instances": [1, 2, 4], "policy.chunk_tokens": [256, 1024]}
    local = sweep(sc, grid, ["baseline", "divided"], jobs=2).table
    try:
        remote = sweep(sc, grid, ["baseline", "divided"], jobs=2, executor="ray").table
    except ExecutorError as exc:
        with capsys.disabled():
            print(f"\nRay could not start here, so the Ray executor is untested: {exc}")
        pytest.skip(f"Ray could not start: {exc}")
    pd.testing.assert_frame_equal(local, remote)


@pytest.mark.parametrize("damage", ["{cut sho", "{}", "[1, 2]"])
def test_a_damaged_point_file_is_run_again(tmp_path, damage):
    sc = load_small(**TINY)
    out = tmp_path / "sw"
    first = sweep(sc, {"cluster.instances": [1, 2]}, ["baseline"], out=out).table
    damaged = sorted((out / "points").glob("*.json"))[0]
    damaged.write_text(damage)
    again = sweep(sc, {"cluster.instances": [1, 2]}, ["baseline"], out=out).table
    pd.testing.assert_frame_equal(first, again)
    assert json.loads(damaged.read_text())["summary"]["makespan_s"] > 0  # rewritten whole
