"""Catalog specs against the model cards, synthetic workload statistics, trace replay."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import seersim
from conftest import load_small, require_shared
from seersim.config import LengthDist
from seersim.specs import GPUS, MODELS, ModelSpec, get_gpu, get_model
from seersim.workload import build_workload
from seersim.workload.synthetic import quantile

# --------------------------------------------------------------------------- catalog
# (total params, active params) from the model cards
CARDS = {
    "moonlight-16b-a3b": (16e9, 3e9),
    "qwen2-vl-72b": (72.7e9, 72.7e9),  # LLM part of 73.4B
    "kimi-k2": (1.03e12, 32e9),
    "qwen2.5-7b": (7.61e9, 7.61e9),
    "llama-3.1-8b": (8.03e9, 8.03e9),
    "llama-2-7b": (6.74e9, 6.74e9),
}


@pytest.mark.parametrize("name", sorted(CARDS))
def test_derived_params_match_model_cards(name):
    m = get_model(name)
    total, active = CARDS[name]
    assert m.total_params == pytest.approx(total, rel=0.05)
    assert m.active_params == pytest.approx(active, rel=0.05)
    assert m.active_params <= m.total_params
    # (a quantized checkpoint's embedding, lm_head and router stay bf16)
    kept = m.vocab_params + m.router_params
    assert m.weight_bytes == pytest.approx((m.total_params - kept) * m.weight_bytes_per_param + 2 * kept)


def test_every_catalog_model_has_a_card_check():
    assert set(MODELS) == set(CARDS)


@pytest.mark.parametrize("name, layout", [("kimi-k2", "mla"), ("llama-2-7b", "mha"), ("qwen2.5-7b", "gqa")])
def test_attention_layout_names_mha_apart_from_gqa(name, layout):
    assert get_model(name).attention_layout == layout


@pytest.mark.parametrize("kv_heads", [5, 56])
def test_query_heads_must_group_evenly_over_kv_heads(kv_heads):
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        ModelSpec.model_validate({**get_model("qwen2.5-7b").model_dump(), "num_kv_heads": kv_heads})


def test_moe_flags():
    assert get_model("kimi-k2").is_moe and get_model("moonlight-16b-a3b").is_moe
    assert not get_model("qwen2.5-7b").is_moe
    assert get_model("kimi-k2").num_moe_layers == 60
    assert get_model("qwen2.5-7b").num_moe_layers == 0


def test_kv_bytes_per_token_gqa_by_hand():
    # Qwen2.5-7B: 28 layers x (K and V) x 4 KV heads x 128 dims x 2 bytes (bf16)
    assert get_model("qwen2.5-7b").kv_bytes_per_token == 28 * 2 * 4 * 128 * 2 == 57_344
    # Llama-3.1-8B: 32 layers x 2 x 8 KV heads x 128 x 2 bytes
    assert get_model("llama-3.1-8b").kv_bytes_per_token == 32 * 2 * 8 * 128 * 2 == 131_072


def test_kv_bytes_per_token_mla_by_hand():
    # Kimi-K2 (MLA): 61 layers x (kv_lora_rank 512 + rope dim 64) x 2 bytes; not 2*heads*head_dim
    m = get_model("kimi-k2")
    assert m.kv_bytes_per_token == 61 * (512 + 64) * 2 == 70_272
    assert m.kv_bytes_per_token < m.num_layers * 2 * m.num_kv_heads * m.head_dim * 2 / 20  # ~28x smaller
    assert get_model("moonlight-16b-a3b").kv_bytes_per_token == 27 * 576 * 2


def test_catalog_lookup_is_forgiving_and_errors_suggest():
    assert get_model(" Qwen2.5-7B ").name == "qwen2.5-7b"
    with pytest.raises(seersim.SpecError, match="(?i)did you mean 'kimi-k2'"):
        get_model("kimi-k3")
    with pytest.raises(seersim.SpecError, match="h100-sxm"):
        get_gpu("h100")
    assert get_gpu("h800").nvlink_bandwidth_bytes_per_s < get_gpu("h100-sxm").nvlink_bandwidth_bytes_per_s
    for g in GPUS.values():
        assert 0 < g.flops_efficiency <= 1 and 0 < g.bandwidth_efficiency <= 1


def test_inline_model_spec_with_base():
    sc = load_small(model={"base": "qwen2.5-7b", "num_layers": 14})
    assert sc.model.num_layers == 14
    assert sc.model.kv_bytes_per_token == get_model("qwen2.5-7b").kv_bytes_per_token / 2


# --------------------------------------------------------------------------- synthetic workload
def _synthetic(seed: int = 0, **overrides):
    sc = load_small(**overrides)
    return sc, build_workload(sc, np.random.default_rng(seed))


def _arrays(wl):
    g = np.array([r.group_id for r in wl.requests])
    i = np.array([r.input_tokens for r in wl.requests])
    o = np.array([r.output_tokens for r in wl.requests])
    return g, i, o


def test_synthetic_shape():
    sc, wl = _synthetic(**{"workload.prompts": 10, "workload.group_size": 3})
    g, i, o = _arrays(wl)
    assert len(wl) == 30 and wl.num_groups == 10
    np.testing.assert_array_equal(g, np.repeat(np.arange(10), 3))
    assert [r.id for r in wl.requests] == list(range(30))
    # siblings share their prompt (length)
    assert (i.reshape(10, 3) == i.reshape(10, 3)[:, :1]).all()
    assert wl.max_tokens == sc.workload.max_tokens
    assert all(r.max_tokens == sc.workload.max_tokens for r in wl.requests)
    assert wl.output_tokens == int(o.sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synthetic_mean_and_bounds_independent(seed):
    sc, wl = _synthetic(seed, **{"workload.prompts": 2000, "workload.group_size": 8, "workload.output_tokens.intra_group_corr": 0.0})
    _, i, o = _arrays(wl)
    out_cfg, in_cfg = sc.workload.output_tokens, sc.workload.input_tokens
    assert o.mean() == pytest.approx(out_cfg.mean, rel=0.03)
    assert o.max() <= sc.workload.max_tokens and o.min() >= out_cfg.min
    assert in_cfg.min <= i.min() and i.max() <= in_cfg.max
    assert (o == sc.workload.max_tokens).any(), "a long tail reaches max_tokens"


def test_synthetic_mean_with_group_correlation():
    sc, wl = _synthetic(0, **{"workload.prompts": 2000, "workload.group_size": 8})
    _, _, o = _arrays(wl)
    assert sc.workload.output_tokens.intra_group_corr > 0.5
    assert o.mean() == pytest.approx(sc.workload.output_tokens.mean, rel=0.03)
    assert o.max() <= sc.workload.max_tokens


def test_clipped_lognormal_quantiles_have_the_configured_mean():
    """The configured mean is the mean after clipping (deterministic check on a fine grid)."""
    u = (np.arange(200_000) + 0.5) / 200_000
    for mean, sigma, hi in [(2500, 1.0, 8192), (3000, 1.5, 16384), (1000, 0.3, 2048)]:
        x = quantile(LengthDist(dist="lognormal", mean=mean, sigma=sigma), u, hi)
        assert x.mean() == pytest.approx(mean, rel=0.005)
        assert x.max() <= hi and x.min() >= 1


@pytest.mark.parametrize(
    "fields",
    [
        {"dist": "gamma", "shape": 0.5},
        {"dist": "gamma", "shape": 4.0},
        {"dist": "lognormal_mixture", "sigma": 0.4, "mixture": {"weight": 0.3, "sigma": 0.6, "log_ratio": 2.0}},
    ],
)
def test_gamma_and_mixture_quantiles_have_the_configured_mean(fields):
    """Every family's `mean` is its mean after clipping, so one knob scales any of them."""
    u = (np.arange(100_000) + 0.5) / 100_000
    for mean, hi in [(2500, 8192), (1000, 2048)]:
        x = quantile(LengthDist(mean=mean, **fields), u, hi)
        assert x.mean() == pytest.approx(mean, rel=0.005)
        assert x.max() <= hi and x.min() >= 1


@pytest.mark.parametrize(
    "fields, word",
    [
        ({"dist": "gamma"}, "shape"),
        ({"dist": "lognormal", "shape": 2.0}, "shape"),
        ({"dist": "lognormal_mixture"}, "mixture"),
        ({"dist": "gamma", "shape": 1.0, "mixture": {"weight": 0.5, "sigma": 1, "log_ratio": 1}}, "mixture"),
    ],
)
def test_family_parameters_belong_to_their_family(fields, word):
    with pytest.raises(seersim.ScenarioError, match=word):
        load_small(**{"workload.output_tokens": {"mean": 2500, **fields}})


def test_constant_and_uniform_lengths():
    _, wl = _synthetic(
        **{"workload.prompts": 50, "workload.output_tokens.dist": "constant", "workload.input_tokens.dist": "constant"}
    )
    _, i, o = _arrays(wl)
    assert set(o.tolist()) == {2500} and set(i.tolist()) == {512}
    sc, wl = _synthetic(**{"workload.prompts": 2000, "workload.output_tokens": {"dist": "uniform", "mean": 2000, "min": 100, "intra_group_corr": 0.0}})
    _, _, o = _arrays(wl)
    assert o.min() >= 100 and o.max() <= 3900
    assert o.mean() == pytest.approx(2000, rel=0.03)


def _within_group_corr(wl, group_size):
    _, _, o = _arrays(wl)
    logs = np.log(o).reshape(-1, group_size)
    return float(np.corrcoef(logs[:, 0], logs[:, 1])[0, 1])


def test_intra_group_correlation():
    common = {"workload.prompts": 2000, "workload.group_size": 8, "workload.max_tokens": 65536}
    _, hi = _synthetic(**common, **{"workload.output_tokens.intra_group_corr": 0.9})
    _, lo = _synthetic(**common, **{"workload.output_tokens.intra_group_corr": 0.1})
    r_hi, r_lo = _within_group_corr(hi, 8), _within_group_corr(lo, 8)
    assert r_hi > r_lo
    assert r_hi == pytest.approx(0.9, abs=0.08)
    assert r_lo == pytest.approx(0.1, abs=0.08)


def test_output_mean_outside_range_is_a_scenario_error():
    with pytest.raises(seersim.ScenarioError, match="mean"):
        _synthetic(**{"workload.max_tokens": 2000})  # mean 2500 > max_tokens


# --------------------------------------------------------------------------- replay
def _replay_scenario(path: Path, fmt: str = "csv", **extra):
    return load_small(workload={"kind": "replay", "path": str(path), "format": fmt, **extra})


def test_replay_csv_round_trip(tmp_path):
    sc, wl = _synthetic(4, **{"workload.prompts": 12, "workload.group_size": 4})
    csv = tmp_path / "rollout.csv"
    wl.to_frame()[["group_id", "input_tokens", "output_tokens"]].to_csv(csv, index=False)
    rsc = _replay_scenario(csv, max_tokens=sc.workload.max_tokens)
    back = build_workload(rsc, np.random.default_rng(99))
    assert back == wl
    # and the simulation of the replay is the simulation of the original work
    a = seersim.simulate(sc, workload=wl).summary
    b = seersim.simulate(rsc).summary
    for k in ("makespan_s", "output_tokens", "tail_s", "preemptions", "requests", "groups"):
        assert a[k] == b[k], k


def test_replay_csv_groups_and_truncation(tmp_path):
    csv = tmp_path / "t.csv"
    pd.DataFrame(
        {
            "group_id": [7, 3, 7, 3, 9],
            "input_tokens": [100, 50, 999, 51, 20],  # a group takes its first row's prompt
            "output_tokens": [10, 20, 30, 5000, 40],
        }
    ).to_csv(csv, index=False)
    wl = build_workload(_replay_scenario(csv, max_tokens=1000), np.random.default_rng(0))
    g, i, o = _arrays(wl)
    np.testing.assert_array_equal(g, [0, 0, 1, 1, 2])  # renumbered by first appearance, rows kept together
    np.testing.assert_array_equal(i, [100, 100, 50, 50, 20])
    np.testing.assert_array_equal(o, [10, 30, 20, 1000, 40])  # truncated at max_tokens
    assert wl.max_tokens == 1000
    wl2 = build_workload(_replay_scenario(csv), np.random.default_rng(0))
    assert wl2.max_tokens == 5000, "default max_tokens is the trace's max"
    wl3 = build_workload(_replay_scenario(csv, limit=2), np.random.default_rng(0))
    assert len(wl3) == 2


def test_replay_relative_path_resolves_against_scenario_folder(tmp_path):
    (tmp_path / "data").mkdir()
    pd.DataFrame({"group_id": [0, 0], "input_tokens": [10, 10], "output_tokens": [5, 6]}).to_csv(
        tmp_path / "data" / "t.csv", index=False
    )
    yaml = tmp_path / "sc.yaml"
    yaml.write_text(
        "model: qwen2.5-7b\ngpu: h100-sxm\ncluster: {instances: 1}\n"
        "workload: {kind: replay, path: data/t.csv}\n"
    )
    res = seersim.simulate(seersim.load_scenario(yaml))
    assert res.summary["output_tokens"] == 11 and res.summary["requests"] == 2


def _first_rows(path: Path, fmt: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    if fmt == "mooncake":
        rows = [json.loads(l) for l in path.read_text().splitlines()[:n]]
        return np.array([r["input_length"] for r in rows]), np.array([r["output_length"] for r in rows])
    df = pd.read_csv(path, nrows=n)
    cols = {"azure": ("ContextTokens", "GeneratedTokens"), "vidur": ("num_prefill_tokens", "num_decode_tokens")}[fmt]
    return df[cols[0]].to_numpy(), df[cols[1]].to_numpy()


PUBLIC = [
    pytest.param("mooncake/conversation_trace.jsonl", "mooncake", id="mooncake"),
    pytest.param("azure/AzureLLMInferenceTrace_conv.csv", "azure", id="azure"),
    pytest.param("vidur-processed/splitwise_conv.csv", "vidur", id="vidur"),
]


@pytest.mark.parametrize("rel, fmt", PUBLIC)
def test_public_trace_reads(traces_dir, rel, fmt):
    path = require_shared(traces_dir / rel, f"the public {fmt} trace")
    wl = build_workload(_replay_scenario(path, fmt, limit=200), np.random.default_rng(0))
    g, i, o = _arrays(wl)
    assert len(wl) == 200
    np.testing.assert_array_equal(g, np.arange(200))  # group_size 1: every row its own group
    exp_in, exp_out = _first_rows(path, fmt, 200)
    np.testing.assert_array_equal(i, exp_in)
    np.testing.assert_array_equal(o, exp_out)
    assert wl.max_tokens == int(exp_out.max())
    # grouped: consecutive rows form groups sharing the first row's prompt
    wl4 = build_workload(_replay_scenario(path, fmt, limit=200, group_size=4), np.random.default_rng(0))
    g4, i4, o4 = _arrays(wl4)
    np.testing.assert_array_equal(g4, np.arange(200) // 4)
    np.testing.assert_array_equal(i4, np.repeat(exp_in[::4], 4))
    np.testing.assert_array_equal(o4, exp_out)


def test_azure_and_vidur_conv_traces_agree(traces_dir):
    """Vidur's splitwise_conv.csv is the Azure conversation trace, processed."""
    a = traces_dir / "azure/AzureLLMInferenceTrace_conv.csv"
    v = traces_dir / "vidur-processed/splitwise_conv.csv"
    require_shared(a, "the public Azure LLM inference conversation trace")
    require_shared(v, "Vidur's processed copy of the Azure conversation trace")
    wa = build_workload(_replay_scenario(a, "azure", limit=200), np.random.default_rng(0))
    wv = build_workload(_replay_scenario(v, "vidur", limit=200), np.random.default_rng(0))
    assert wa == wv


def test_public_trace_simulates(traces_dir):
    path = require_shared(traces_dir / "mooncake/conversation_trace.jsonl", "the public Mooncake conversation trace")
    sc = _replay_scenario(path, "mooncake", limit=200, group_size=4)
    res = seersim.simulate(sc, policy="divided")
    assert res.summary["requests"] == 200 and res.summary["groups"] == 50
    assert not res.requests["finish_s"].isna().any()
    assert (res.requests["generated_tokens"] == res.requests["output_tokens"]).all()
