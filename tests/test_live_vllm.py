"""Live vLLM tests: policies drive real CPU servers through the same driver, and a
killed server gives a clear report instead of a hang or lost requests.

Opt-in (they start two vLLM servers, ~1-2 min, then run for a few minutes): set
SEERSIM_LIVE=1 (CI does, after installing the `[vllm]` extra). Without it, or where
vLLM cannot be imported or started, every test here is skipped with the reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import seersim

pytestmark = pytest.mark.live

REPO = Path(__file__).resolve().parents[1]
SCENARIO = REPO / "scenarios" / "validation-kvlimited.yaml"
# small enough for CI: 4 groups x 4, short outputs; the scenario's engine otherwise
SMALL = {
    "workload.prompts": 4,
    "workload.group_size": 4,
    "workload.max_tokens": 512,
    "workload.output_tokens.mean": 160,
}


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    if os.environ.get("SEERSIM_LIVE") != "1":
        pytest.skip("live vLLM tests are opt-in: set SEERSIM_LIVE=1 (CI does after installing '.[vllm]')")
    pytest.importorskip("httpx", reason="the live backend needs httpx: pip install -e '.[vllm]'")
    from seersim.backends.local import LocalServers, ServerOptions, TinyModel, build_tiny_model, vllm_importable

    why = vllm_importable()
    if why:
        pytest.skip(why)
    sc = seersim.load_scenario(SCENARIO)
    spec = TinyModel()
    model = build_tiny_model(tmp_path_factory.mktemp("model") / "tiny-llama", spec)
    # the scenario's usable KV plus the block vLLM keeps as its null block
    kv_bytes = (sc.engine.kv_capacity_tokens + sc.engine.block_size_tokens) * spec.kv_bytes_per_token
    fleet = LocalServers(2, model, ServerOptions(max_num_seqs=sc.engine.max_num_seqs, kv_cache_memory_bytes=kv_bytes))
    try:
        fleet.start()
    except seersim.SeersimError as exc:
        pytest.skip(f"vLLM CPU servers could not be started here: {exc}")
    print(f"\n2 vLLM CPU servers ready in {fleet.start_s:.0f} s: {fleet.urls}")
    yield fleet
    fleet.stop()
    assert all(not s.alive() for s in fleet.servers)


def _backend(fleet, sc):
    from seersim.backends.vllm import VLLMBackend

    return VLLMBackend(fleet.urls, max_num_seqs=sc.engine.max_num_seqs)


@pytest.mark.parametrize("policy", ["baseline", "divided", "context_aware"])
def test_policies_drive_live_servers(servers, policy):
    """Every request finishes with exactly its forced length; chunked policies make
    several chunks per long request; the records look like the simulator's."""
    from seersim.backends.vllm import run_live

    sc = seersim.load_scenario(SCENARIO, **SMALL)
    res = run_live(sc, _backend(servers, sc), policy=policy)
    req = res.requests
    sim = seersim.simulate(sc, policy=policy).requests
    assert list(req.columns) == list(sim.columns)
    assert not req["finish_s"].isna().any()
    np.testing.assert_array_equal(req["generated_tokens"], req["output_tokens"])
    np.testing.assert_array_equal(req["output_tokens"], sim["output_tokens"])  # identical work
    chunk = sc.policy.chunk_tokens
    if policy == "baseline":
        assert (req["chunks"] == 1).all()
    else:
        np.testing.assert_array_equal(req["chunks"], -(-req["output_tokens"] // chunk))
    s = res.summary
    assert s["finished_requests"] == len(req) and s["makespan_s"] > 0
    assert s["output_tokens"] == int(req["output_tokens"].sum())


def test_profile_table_has_iteration_rows(servers):
    from seersim.profile.vllm import ProfileGrid, profile_vllm

    rows, meta = profile_vllm(servers.urls, ProfileGrid(batch_sizes=(1, 4), context_tokens=(128,), prefill_tokens=(128, 512), repeats=1))
    assert set(rows["op"]) == {"iteration"}
    assert (rows["time_s"] > 0).all()
    assert len(rows) == 4 and meta["servers"] == servers.urls
    decode = rows[rows["decode_tokens"] > 0]
    assert list(decode["batch_size"]) == [1, 4]


def test_profile_from_the_servers_step_logs(servers):
    """The per-step log of this run's steps only: every step of a batch-4 decode point
    is a row measurement, with the batch's 4 sequences and their forward time."""
    from seersim.profile.vllm import ProfileGrid, profile_vllm

    grid = ProfileGrid(batch_sizes=(4,), context_tokens=(128,), prefill_tokens=(128,), repeats=1)
    logs = [s.log_path for s in servers.servers]
    rows, meta = profile_vllm(servers.urls, grid, logs=logs)
    assert meta["server_logs"] == [str(p) for p in logs] and "per-step logs" in meta["source"]
    assert (rows["time_s"] > 0).all() and (rows["time_s"] >= rows["forward_s"] * 0.5).all()
    decode4 = rows[(rows["decode_tokens"] == 4) & (rows["prefill_tokens"] == 0)]
    # 80 forced tokens per request, on each of the 2 servers: most of those steps are timed
    assert decode4["repeats"].sum() >= 2 * 60


def test_validate_writes_the_report(servers, tmp_path):
    """Profile → calibrate → live + simulated runs → validation.json with the issue's keys."""
    import json

    from seersim.profile.vllm import ProfileGrid
    from seersim.studies.validate import validate, write_validation

    sc = seersim.load_scenario(SCENARIO, **SMALL)
    grid = ProfileGrid(batch_sizes=(1, 4, 8, 16), context_tokens=(128, 256), prefill_tokens=(128, 512), repeats=1)
    kept = []

    def on_run(policy: str, repeat: int, summary: dict) -> None:
        # each finished run is on disk before the next starts
        kept.append(len(pd.read_parquet(tmp_path / "live_runs-partial.parquet")))

    res = validate(sc, servers.urls, repeats=1, work_dir=tmp_path, grid=grid, on_run=on_run,
                   logs=[s.log_path for s in servers.servers])
    assert kept == [1, 2, 3]
    write_validation(tmp_path, res)
    assert not list(tmp_path.glob("*-partial.*"))  # superseded by the complete records
    report = json.loads((tmp_path / "validation.json").read_text())
    assert report["servers"] == servers.urls and report["repeats"] == 1
    assert isinstance(report["ranking_agrees"], bool)
    assert [p["policy"] for p in report["policies"]] == ["baseline", "divided", "context_aware"]
    for p in report["policies"]:
        assert p["live_makespan_s"] > 0 and p["sim_makespan_s"] > 0
        assert p["makespan_error"] == pytest.approx((p["sim_makespan_s"] - p["live_makespan_s"]) / p["live_makespan_s"])
    for name in ("finish_cdf.png", "profile.csv", "profile.csv.meta.json", "calibration.yaml"):
        assert (tmp_path / name).is_file(), name
    live = res.live_requests
    assert len(live) == 3 * sc.workload.prompts * sc.workload.group_size and not live["finish_s"].isna().any()
    # engine totals from the step logs, per policy, beside the simulator's
    assert [e["policy"] for e in report["engine"]] == ["baseline", "divided", "context_aware"]
    for e in report["engine"]:
        assert e["live_steps"] > 0 and e["sim_steps"] > 0


def test_killed_server_reports_failures_and_keeps_finished_records(servers):
    """Kill one server mid-run: LiveRunError naming it, the finished requests' records,
    and every other request accounted for (failed, not sent, or never dispatched)."""
    from seersim.backends.vllm import LiveRunError, run_live

    sc = seersim.load_scenario(SCENARIO, **{**SMALL, "workload.prompts": 8})
    backend = _backend(servers, sc)
    killed = {}

    def progress(done: int, total: int) -> None:
        if done >= 4 and not killed:
            killed["url"] = servers.urls[1]
            servers.kill(1)

    with pytest.raises(LiveRunError) as info:
        run_live(sc, backend, policy="divided", progress=progress)
    err = info.value
    assert killed and killed["url"] in str(err)
    req = err.requests
    finished = req[~req["finish_s"].isna()]
    assert len(finished) >= 4
    np.testing.assert_array_equal(finished["generated_tokens"], finished["output_tokens"])
    tried = [f for f in err.failures if f.attempts > 0]
    assert tried and all(f.instance_id == 1 for f in tried)
    # no request is dropped silently: every unfinished one has its reason
    unfinished = set(req.loc[req["finish_s"].isna(), "request_id"])
    assert unfinished and set(err.unfinished) == unfinished
    assert {f.request_id for f in tried} <= {r for r, why in err.unfinished.items() if why.startswith("failed")}
