"""`seersim calibrate lengths | acceptance | kv`: fits recover what generated the data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

import seersim
from conftest import load_small
from seersim.cli import app
from seersim.workload import build_workload


def _rollout_log(tmp_path, **overrides) -> tuple:
    sc = load_small(**{"workload.prompts": 150, **overrides})
    wl = build_workload(sc, np.random.default_rng(0))
    log = wl.to_frame().drop(columns="request_id")
    path = tmp_path / "rollout.csv"
    log.to_csv(path, index=False)
    return sc, log, path


def test_lengths_recovers_a_synthetic_workload_and_writes_a_usable_snippet(tmp_path):
    sc, log, path = _rollout_log(tmp_path)
    out = tmp_path / "wl.yaml"
    res = CliRunner().invoke(app, ["calibrate", "lengths", str(path), "--max-tokens", "8192", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    assert r["distribution"] in ("lognormal", "gamma", "lognormal_mixture")
    assert {"mean_tokens", "intra_group_correlation", "goodness_of_fit", "params"} <= set(r)
    assert r["censored"] == int((log["output_tokens"] >= 8192).sum()) > 0
    assert r["mean_tokens"] == pytest.approx(log["output_tokens"].mean(), rel=0.05)
    assert r["intra_group_correlation"] == pytest.approx(0.8, abs=0.07)
    lognormal = r["families"]["lognormal"]["params"]
    assert lognormal["sigma"] == pytest.approx(1.0, abs=0.1)  # the scenario's sigma, despite the cap
    snippet = yaml.safe_load(out.read_text())["workload"]
    assert snippet["output_tokens"]["intra_group_corr"] == pytest.approx(r["intra_group_correlation"], abs=1e-3)
    sc2 = seersim.scenario_from_dict({**sc.model_dump(), "workload": snippet})
    assert seersim.simulate(sc2, policy="baseline").summary["requests"] == snippet["prompts"] * snippet["group_size"]
    assert out.with_suffix(".png").is_file()


@pytest.mark.parametrize(
    "output_tokens,family",
    [
        ({"dist": "gamma", "mean": 2500, "shape": 0.6, "intra_group_corr": 0.7}, "gamma"),
        (
            {"dist": "lognormal_mixture", "mean": 2500, "sigma": 0.3,
             "mixture": {"weight": 0.35, "sigma": 0.3, "log_ratio": 2.5}, "intra_group_corr": 0.7},
            "lognormal_mixture",
        ),
    ],
)
def test_lengths_round_trip_of_every_family(tmp_path, output_tokens, family):
    """A workload drawn from gamma or a two-lognormal mixture is recognised, and the
    snippet draws that family again: same mean, same spread, same correlation."""
    sc, log, path = _rollout_log(tmp_path, **{"workload.prompts": 300, "workload.output_tokens": output_tokens})
    out = tmp_path / "wl.yaml"
    res = CliRunner().invoke(app, ["calibrate", "lengths", str(path), "--max-tokens", "8192", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    assert r["distribution"] == family
    assert r["intra_group_correlation"] == pytest.approx(0.7, abs=0.08)
    snippet = yaml.safe_load(out.read_text())["workload"]
    assert snippet["output_tokens"]["dist"] == family
    sc2 = seersim.scenario_from_dict({**sc.model_dump(), "workload": snippet})
    again = build_workload(sc2, np.random.default_rng(1)).to_frame()["output_tokens"]
    first = log["output_tokens"]
    assert again.mean() == pytest.approx(first.mean(), rel=0.08)
    for q in (0.25, 0.5, 0.9):
        assert again.quantile(q) == pytest.approx(first.quantile(q), rel=0.15)


def test_lengths_censoring_matters(tmp_path):
    """Ignoring the cap would shrink sigma; the censored fit keeps it."""
    from seersim.calibrate.lengths import fit_lengths

    _, log, _ = _rollout_log(tmp_path, **{"workload.max_tokens": 3000, "workload.output_tokens.mean": 1800})
    log["max_tokens"] = 3000
    censored = fit_lengths(log).families["lognormal"]["params"]["sigma"]
    naive = float(np.log(log["output_tokens"]).std())
    assert censored > naive + 0.05


def test_lengths_log_without_max_tokens_is_an_error(tmp_path):
    _, _, path = _rollout_log(tmp_path)
    res = CliRunner().invoke(app, ["calibrate", "lengths", str(path)])
    assert res.exit_code == 2 and "--max-tokens" in res.output


@pytest.mark.parametrize(
    "command,text",
    [
        ("acceptance", 'draft_tokens,accepted_tokens,references\n"4,2\n'),
        ("lengths", 'group_id,input_tokens,output_tokens\n"0,1\n'),
        ("acceptance", "draft_tokens,references\n4,0\n"),
    ],
)
def test_malformed_or_incomplete_logs_are_one_clear_error(tmp_path, command, text):
    """A truncated CSV or a missing column: one `seersim: error:` line naming the file, exit 2."""
    path = tmp_path / "log.csv"
    path.write_text(text)
    extra = ["--max-tokens", "64"] if command == "lengths" else []
    res = CliRunner().invoke(app, ["calibrate", command, str(path), *extra])
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert str(path) in res.output and "Traceback" not in res.output


def test_acceptance_recovers_alpha_per_reference_count(tmp_path):
    rng = np.random.default_rng(1)
    true = {0: 0.35, 1: 0.5, 5: 0.6}
    rows = []
    for refs, alpha in true.items():
        for _ in range(3000):
            gamma = int(rng.integers(1, 9))
            accepted = 0
            while accepted < gamma and rng.random() < alpha:
                accepted += 1
            rows.append({"draft_tokens": gamma, "accepted_tokens": accepted, "references": refs})
    rows += [{"draft_tokens": 4, "accepted_tokens": 1, "references": 9}] * 3  # too few steps: dropped
    path = tmp_path / "spec.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    out = tmp_path / "acc.yaml"
    res = CliRunner().invoke(app, ["calibrate", "acceptance", str(path), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    for refs, alpha in true.items():
        assert r["alpha"][str(refs)] == pytest.approx(alpha, abs=0.02)
    assert r["dropped_steps"] == 3
    table = {int(k): v for k, v in r["acceptance_table"].items()}
    sc = load_small(**{"engine.speculation.acceptance_table": table, "workload.prompts": 4})
    assert seersim.simulate(sc, policy="seer").summary["output_tokens"] > 0
    from seersim.calibrate.acceptance import load_acceptance

    assert load_acceptance(out)["paths"][1][0] == pytest.approx(table[0], abs=1e-3)


def test_paper_table2_is_the_shipped_default():
    from seersim.calibrate.acceptance import load_acceptance
    from seersim.engine.specdec import PAPER_ACCEPTANCE

    shipped = load_acceptance()
    assert "Table 2" in shipped["source"] and shipped["paths"] == PAPER_ACCEPTANCE
    assert PAPER_ACCEPTANCE[1] == {0: 1.70, 1: 2.04, 5: 2.32, 15: 2.53}


@pytest.mark.parametrize(
    "text, per_engine",
    [
        ("INFO 03-01 kv_cache_utils.py:716] GPU KV cache size: 812,144 tokens\n", 812_128),  # less the null block
        ("INFO 03-01 kv_cache_utils.py:716] CPU KV cache size: 4,608 tokens\n", 4_592),
        ('vllm:cache_config_info{block_size="16",cache_dtype="auto",num_gpu_blocks="50000"} 1.0\n', 799_984),
        ("INFO executor_base.py:111] # cuda blocks: 40000, # CPU blocks: 4096\n", 640_000),
    ],
)
def test_kv_reads_vllm_reports_and_compares_with_the_specs(tmp_path, text, per_engine):
    log = tmp_path / "server.log"
    log.write_text("noise\n" + text)
    res = CliRunner().invoke(app, ["calibrate", "kv", str(log), "--scenario", "scenarios/small.yaml", "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    from seersim.engine import kv_capacity_blocks

    predicted = kv_capacity_blocks(load_small(**{"engine.kv_capacity_tokens": None})) * 16
    assert r["measured_tokens"] == per_engine and r["predicted_tokens"] == predicted
    assert r["difference"] == pytest.approx((predicted - per_engine) / per_engine)


def test_kv_without_a_cache_line_is_an_error(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("nothing here\n")
    res = CliRunner().invoke(app, ["calibrate", "kv", str(log), "--scenario", "scenarios/small.yaml"])
    assert res.exit_code == 2 and "no KV cache size found" in res.output
