"""traces/gpu-session.sh: the one prepared script a lent GPU runs (issue 11): plans
made here carry every kernel shape, so the GPU machine needs torch only."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from seersim.profile.table import read_profile_table


def _session(repo_root, env: dict, *args: str):
    full = {**os.environ, "SEERSIM": f"{sys.executable} -m seersim", "PYTHON": sys.executable, "PYTHONPATH": str(repo_root), **env}
    return subprocess.run(["bash", str(repo_root / "traces/gpu-session.sh"), *args], capture_output=True, text=True, env=full)


def test_the_committed_gpu_session_plans_are_current(tmp_path, repo_root):
    """traces/plans/ is what `gpu-session.sh plan` writes from today's catalog (a GPU
    session times the committed plans: a stale one would profile yesterday's shapes)."""
    res = _session(repo_root, {"PLANS": str(tmp_path)}, "plan")
    assert res.returncode == 0, res.stderr
    committed = sorted((repo_root / "traces/plans").glob("*.json"))
    assert committed and [p.name for p in committed] == sorted(p.name for p in tmp_path.glob("*.json"))
    for path in committed:
        old, new = json.loads(path.read_text()), json.loads((tmp_path / path.name).read_text())
        for plan in (old, new):
            plan["meta"].pop("command")
        assert old == new, f"{path} is stale: run `bash traces/gpu-session.sh plan`"


def test_a_gpu_session_runs_its_plans_where_only_torch_is(tmp_path, repo_root):
    """The session's steps on CPU with tiny grids: plan here, run (torch only), tables,
    calibration from them."""
    torch = pytest.importorskip("torch", reason="torch not installed (pip install 'seersim[gpu]'); GPU session test skipped")
    plans, out = tmp_path / "plans", tmp_path / "out"
    assert _session(repo_root, {"PLANS": str(plans), "SMOKE": "1"}, "plan").returncode == 0
    res = _session(repo_root, {"PLANS": str(plans)}, "run", str(out), "cpu")
    assert res.returncode == 0, res.stdout + res.stderr
    names = sorted(p.name for p in out.glob("profile-*.csv"))
    assert names == sorted(f"profile-{p.stem.split('-', 1)[1]}.csv" for p in plans.glob("*.json"))
    moonlight = read_profile_table(out / "profile-moonlight-16b-a3b.csv")
    assert moonlight.meta["gpu"] == "h100-sxm" and (moonlight.rows["time_s"] > 0).all()
    assert set(moonlight.rows["op"]) == {"attn_decode", "attn_prefill"}
    assert f"torch {torch.__version__}" in (out / "session-machine.txt").read_text()
    before = set(repo_root.iterdir())
    res = _session(repo_root, {}, "calibrate", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "== every operator table" in res.stdout and (out / "calibration.yaml").is_file()
    assert (out / "profile-moonlight-16b-a3b.calibration.yaml").is_file()
    assert set(repo_root.iterdir()) == before  # everything it writes goes under DIR


def test_without_a_step_it_prints_its_usage(repo_root):
    res = _session(repo_root, {})
    assert res.returncode == 2 and "gpu-session.sh run OUT_DIR" in res.stdout
