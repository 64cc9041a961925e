"""traces/gpu-session.sh: the one prepared script a lent GPU runs (issue 11): plans
made here carry every kernel shape, so the GPU machine needs torch only."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from seersim.profile.schema import write_profile_table
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
    # (whole decode steps are not timed in the smoke run, a 7B model's weights: stand one in)
    steps = [{"op": "iteration", "num_tokens": b, "batch_size": b, "context_tokens": b * 1024, "prefill_tokens": 0,
              "decode_tokens": b, "time_s": 0.007 + 1e-4 * b, "time_s_std": 0.0, "repeats": 10} for b in (1, 8, 32)]
    write_profile_table(steps, out / "profile-qwen2.5-7b-decode-steps.csv", {"gpu": "h100-sxm", "model": "qwen2.5-7b", "tp": 1})
    before = set(repo_root.iterdir())
    res = _session(repo_root, {}, "calibrate", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "== every operator table" in res.stdout and (out / "calibration.yaml").is_file()
    combined = json.loads(res.stdout.split("== every operator table", 1)[1].split("\n", 1)[1])
    assert set(combined["test_mape_per_table"]) == {"qwen2.5-7b"}  # (the whole steps: tested, not fitted)
    assert (out / "profile-moonlight-16b-a3b.calibration.yaml").is_file()
    assert set(repo_root.iterdir()) == before  # everything it writes goes under DIR


def test_without_a_step_it_prints_its_usage(repo_root):
    res = _session(repo_root, {})
    assert res.returncode == 2 and "gpu-session.sh run OUT_DIR" in res.stdout


def test_only_runs_the_plans_it_names(tmp_path, repo_root):
    """`ONLY="8 9"`: a later session times the plans an earlier one has not recorded."""
    pytest.importorskip("torch", reason="torch not installed (pip install 'seersim[gpu]'); GPU session test skipped")
    plans, out = tmp_path / "plans", tmp_path / "out"
    assert _session(repo_root, {"PLANS": str(plans), "SMOKE": "1"}, "plan").returncode == 0
    res = _session(repo_root, {"PLANS": str(plans), "ONLY": "4 5"}, "run", str(out), "cpu")
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(p.name for p in out.glob("profile-*.csv")) == ["profile-kimi-k2-attention.csv", "profile-qwen2-vl-72b-tp8-attention.csv"]


def test_the_fused_plans_are_recorded_not_fitted(tmp_path, repo_root):
    """`calibrate` leaves `*-fused.csv` out of every fit (our Triton MLA kernel is a floor,
    not a serving kernel's figure) and says so."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ("qwen2.5-7b", "kimi-k2-fused"):
        src = repo_root / "traces" / f"h100-sxm-{name}.csv"
        (out / f"profile-{name}.csv").write_bytes(src.read_bytes())
        (out / f"profile-{name}.csv.meta.json").write_bytes(src.with_name(src.name + ".meta.json").read_bytes())
    res = _session(repo_root, {}, "calibrate", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "profile-kimi-k2-fused.csv: recorded, not fitted" in res.stdout
    combined = json.loads(res.stdout.split("== every operator table", 1)[1].split("\n", 1)[1])
    assert combined["tables"] == ["qwen2.5-7b"]
