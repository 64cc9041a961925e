"""Cost calibration: the registry, the calibrated models' absolute times, the modelling
fixes of issue 11 (verify cost at the knee, replicated KV under TP, prefill and decode
FLOPs/bytes), and fits on the public Vidur tables (skipped when ../shared is absent)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

import seersim
from conftest import SHARED, load_small
from seersim.cli import app
from seersim.config import Parallelism
from seersim.cost import COST_MODELS, IterationCost, KernelCurvesCost, RooflineCost, build_cost_model
from seersim.cost.calibrated import per_token_decode_s
from seersim.engine import kv_capacity_blocks
from seersim.errors import ScenarioError, SpecError, TraceError
from seersim.specs import get_gpu, get_model

VIDUR = SHARED / "profiling" / "vidur" / "compute"
H100_TABLES = {
    "Llama-2-7b-hf": "meta-llama/Llama-2-7b-hf",
    "Llama-2-70b-hf": "meta-llama/Llama-2-70b-hf",
    "Qwen-72B": "Qwen/Qwen-72B",
    "CodeLlama-34b-Instruct-hf": "codellama/CodeLlama-34b-Instruct-hf",
}
needs_vidur = pytest.mark.skipif(not VIDUR.is_dir(), reason=f"public Vidur tables not found at {VIDUR}")


def _cost(model: str, gpu: str = "h100-sxm", **par) -> object:
    sc = load_small(**{"model": model, "gpu": gpu, "cluster.parallelism": par or {"tp": 1}})
    return build_cost_model(sc)


# --------------------------------------------------------------------------- registry
def test_default_is_calibrated_and_roofline_selectable():
    assert isinstance(build_cost_model(load_small()), KernelCurvesCost)
    assert isinstance(build_cost_model(load_small(**{"cost.model": "roofline"})), RooflineCost)
    assert set(COST_MODELS) >= {"calibrated", "roofline"}


def test_unknown_cost_model_is_a_clear_error():
    with pytest.raises(ScenarioError, match="cost.model 'rooflin' is unknown"):
        build_cost_model(load_small(**{"cost.model": "rooflin"}))
    with pytest.raises(ScenarioError, match="cannot import"):
        build_cost_model(load_small(**{"cost.model": "no_such_pkg.mod:Cls"}))


@pytest.mark.parametrize(
    "path, named",
    [
        ("os:system", "is not a class"),  # a function
        ("collections:OrderedDict", "takes neither"),  # a class of another signature
        ("builtins:slice", "without step_lines"),  # takes the three arguments but prices nothing
    ],
)
def test_a_dotted_path_to_something_else_is_a_clear_error(path, named):
    with pytest.raises(ScenarioError, match=named):
        build_cost_model(load_small(**{"cost.model": path}))


def test_dotted_import_path_builds_a_user_class():
    sc = load_small(**{"cost.model": "seersim.cost.roofline:RooflineCost", "cost.step_overhead_s": 0.002})
    cost = build_cost_model(sc)
    assert isinstance(cost, RooflineCost) and cost.step_overhead_s == 0.002


def test_gpu_without_calibration_names_the_fix():
    gpu = {"name": "x", "memory_bytes": 80e9, "hbm_bandwidth_bytes_per_s": 3e12, "peak_flops": 9e14,
           "nvlink_bandwidth_bytes_per_s": 4e11}
    with pytest.raises(SpecError, match="no shipped calibration.*cost.file.*roofline"):
        build_cost_model(load_small(gpu=gpu))


def test_missing_calibration_file_is_a_trace_error(tmp_path):
    with pytest.raises(TraceError, match="not found"):
        build_cost_model(load_small(**{"cost.file": str(tmp_path / "nope.yaml")}))


def _edited_calibration(tmp_path, kind: str, edit) -> str:
    """A copy of a calibration of `kind` (the shipped H100 curves, or an iteration fit)
    with `edit` applied to its parameters."""
    from seersim.cost.calibration import Calibration, IterationFit, load_calibration, shipped_calibration

    if kind == "kernel_curves":
        cal = load_calibration(shipped_calibration("h100"))
        d = {"schema": "seersim-calibration/1", "kind": kind, "gpu": cal.gpu, "curves": cal.curves.to_dict()}
        edit(d["curves"])
    else:
        fit = IterationFit(0.001, (1.0, 64.0, 512.0), (0.0, 0.001, 0.004), 1e-8, 0.0)
        d = {"schema": "seersim-calibration/1", "kind": kind, "gpu": "h100-sxm", "iteration": fit.to_dict()}
        edit(d["iteration"])
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(d))
    return str(path)


@pytest.mark.parametrize(
    "kind, edit, named",
    [
        ("kernel_curves", lambda c: c.update(gemm_bandwidth_efficiency="abc"), "gemm_bandwidth_efficiency"),
        ("kernel_curves", lambda c: c.update(gemm_bandwidth_efficiency=0), "gemm_bandwidth_efficiency"),
        ("kernel_curves", lambda c: c.update(gemm_latency_s=-1e-6), "gemm_latency_s"),
        ("kernel_curves", lambda c: c["flops_efficiency"].pop(), "one value per knot"),
        ("kernel_curves", lambda c: c["flops_efficiency"].__setitem__(0, float("nan")), "flops_efficiency"),
        ("kernel_curves", lambda c: c["flops_knots_tokens"].reverse(), "strictly increasing"),
        ("iteration", lambda f: f.update(overhead_s=float("inf")), "overhead_s"),
        ("iteration", lambda f: f.update(knots_s=[0.0, 0.001]), "one value per knot"),
        ("iteration", lambda f: f.update(knots_tokens=[]), "at least one knot"),
    ],
)
def test_a_corrupt_calibration_names_its_field(tmp_path, kind, edit, named):
    path = _edited_calibration(tmp_path, kind, edit)
    with pytest.raises(TraceError, match=named):
        build_cost_model(load_small(**{"cost.file": path}))


def test_an_unedited_calibration_round_trips(tmp_path):
    path = _edited_calibration(tmp_path, "kernel_curves", lambda c: None)
    shipped = build_cost_model(load_small())
    assert build_cost_model(load_small(**{"cost.file": path})).step_lines(8, 8, 0, 1.0) == shipped.step_lines(8, 8, 0, 1.0)


@pytest.mark.parametrize("gpu, refused", [("h100-sxm", False), ("h800", False), ("h200", False), ("a100-80gb", True)])
def test_kernel_curves_serve_their_own_gpu_family(tmp_path, gpu, refused):
    path = _edited_calibration(tmp_path, "kernel_curves", lambda c: None)  # the shipped H100 curves
    sc = load_small(**{"cost.file": path, "gpu": gpu})
    if refused:
        with pytest.raises(SpecError, match="fitted on h100-sxm, another architecture than the scenario's a100-80gb"):
            build_cost_model(sc)
    else:
        assert build_cost_model(sc).step_lines(8, 8, 0, 1.0).at(8000) > 0


def test_cli_names_a_bad_cost_model(tmp_path):
    res = CliRunner().invoke(app, ["run", "scenarios/small.yaml", "--set", "cost.model=nope", "--set", "workload.prompts=2"])
    assert res.exit_code == 2 and "cost.model 'nope' is unknown" in res.output


def test_models_pickle_with_their_cache():
    for name in ("calibrated", "roofline"):
        cost = build_cost_model(load_small(**{"cost.model": name}))
        before = cost.step_lines(8, 8, 0).at(8000)
        clone = pickle.loads(pickle.dumps(cost))
        assert clone.step_lines(8, 8, 0).at(8000) == before


def test_parallel_compare_with_the_calibrated_model():
    """Workers rebuild the scenario's calibrated model from its `cost:` section."""
    sc = load_small(
        **{"workload.prompts": 6, "workload.max_tokens": 2048, "workload.output_tokens.mean": 600, "cost.model": "calibrated"}
    )
    from seersim.studies.compare import compare

    serial = compare(sc, ["baseline", "divided"], jobs=1)
    parallel = compare(sc, ["baseline", "divided"], jobs=2)
    cols = ["policy", "makespan_s", "throughput_tokens_per_s"]
    pd.testing.assert_frame_equal(serial.runs[cols], parallel.runs[cols])


# --------------------------------------------------------------------------- absolute times
@pytest.mark.parametrize("model", ["qwen2.5-7b", "llama-3.1-8b"])
def test_decoding_alone_on_h100_costs_5_to_8_ms_per_token(model):
    t = per_token_decode_s(_cost(model), context_tokens=1000)
    assert 5e-3 <= t <= 8e-3, t


def test_verify_width_8_costs_more_than_width_1_at_batch_32():
    """Issue 11 fix 2: at ~256 tokens GEMMs sit at the knee, where verifying drafts is not free."""
    cost = _cost("qwen2.5-7b")
    ctx = 32 * 3000

    def step(width: int) -> float:
        return cost.step_lines(32, 32 * width, 0, float(width)).at(ctx + 32 * (width - 1))

    assert step(8) > 1.15 * step(1)
    assert step(3) > step(1)


# Issue 11's profiled verify cost: with 32 sequences at 3K context, verify widths 3, 5, 7
# and 9 grew the iteration by 7, 8, 15 and 18%. Vidur's H100 Llama-2-7B linear layers
# (0.184 ms per layer at 32 tokens, 0.31 ms at 288) beside the KV reads of an MHA batch
# (512 KB per token) give exactly those numbers, so that is the model they hold for.
ISSUE_VERIFY_GROWTH = {3: 0.07, 5: 0.08, 7: 0.15, 9: 0.18}


def test_verify_growth_follows_the_issues_profile_on_an_mha_model():
    cost = _cost("llama-2-7b")
    ctx = 32 * 3000

    def step(width: int) -> float:
        return cost.step_lines(32, 32 * width, 0, float(width)).at(ctx + 32 * (width - 1))

    growth = {w: step(w) / step(1) - 1 for w in ISSUE_VERIFY_GROWTH}
    assert all(abs(growth[w] - g) <= 0.06 for w, g in ISSUE_VERIFY_GROWTH.items()), growth
    assert list(growth.values()) == sorted(growth.values())


def test_roofline_overhead_follows_the_engine_kind():
    v1 = build_cost_model(load_small(**{"cost.model": "roofline"}))
    v0 = build_cost_model(load_small(**{"cost.model": "roofline", "cost.engine_kind": "vllm-v0"}))
    assert v0.step_lines(1, 1, 0).at(100) - v1.step_lines(1, 1, 0).at(100) == pytest.approx(3.5e-3)


# --------------------------------------------------------------------------- modelling fixes
def test_mla_kv_is_replicated_under_tp():
    """Issue 11 fix 3: Moonlight at tp=2 held 3.47M KV tokens; its latent is on both ranks."""
    m = get_model("moonlight-16b-a3b")
    assert m.kv_bytes_per_token_stored(2) == 2 * m.kv_bytes_per_token
    scenarios = {tp: seersim.load_scenario("scenarios/moonlight.yaml", **{"cluster.parallelism.tp": tp}) for tp in (1, 2)}
    tokens = {tp: kv_capacity_blocks(sc) * sc.engine.block_size_tokens for tp, sc in scenarios.items()}
    assert 1.6e6 < tokens[2] < 1.8e6, tokens
    assert tokens[2] < 1.5 * tokens[1]


def test_fp8_checkpoints_keep_the_embedding_lm_head_and_router_in_bf16():
    """Kimi-K2's fp8 checkpoint ships its 2 x 1.17B vocabulary parameters and its MoE
    router (60 layers x 7168 x 384) in bf16: they were counted at 1 byte, which put
    2.5 GB more KV on every DP rank and read the lm_head and router at half their bytes."""
    from seersim.calibrate.costfit import predict_rows
    from seersim.cost.calibration import load_calibration, shipped_calibration

    kimi, qwen = get_model("kimi-k2"), get_model("qwen2.5-7b")
    assert kimi.router_params == 60 * 7168 * 384 and qwen.router_params == 0
    assert kimi.unquantized_params == kimi.vocab_params + kimi.router_params
    assert kimi.unquantized_bytes_per_param == 2.0 and qwen.unquantized_bytes_per_param == qwen.weight_bytes_per_param == 2.0
    assert kimi.weight_bytes == kimi.total_params + kimi.vocab_params + kimi.router_params
    sc = seersim.load_scenario("scenarios/kimi-k2.yaml")
    par, eng = sc.cluster.parallelism, sc.engine
    budget = par.gpus * (sc.gpu.memory_bytes * eng.gpu_memory_utilization - eng.activation_reserve_bytes_per_gpu)
    # (dense at 1 B, vocabulary and router 2 B)
    weights = (kimi.dense_params + kimi.vocab_params + kimi.router_params) * par.dp + kimi.routed_expert_params
    assert kv_capacity_blocks(sc) == int((budget - weights) // (kimi.kv_bytes_per_token_stored(par.tp) * eng.block_size_tokens))
    curves = load_calibration(shipped_calibration("h100")).curves
    row = pd.DataFrame([{"op": "lm_head", "num_tokens": 1, "tp": 1}])
    expected = curves.gemm_s(get_gpu("h100-sxm"), 1, kimi.hidden_size, kimi.vocab_size, 2.0)
    assert predict_rows(curves, get_gpu("h100-sxm"), kimi, row)[0] == pytest.approx(float(expected))
    assert RooflineCost(kimi, get_gpu("h800"), Parallelism(tp=1, dp=32, ep=32))._dense_bytes == pytest.approx(
        32 * ((kimi.dense_params - kimi.vocab_params) + 2 * kimi.lm_head_params + kimi.router_params))
    cost = _cost("kimi-k2", gpu="h800", tp=1, dp=32, ep=32)
    assert (60, kimi.hidden_size, 384, 2.0) in cost._gemms


def test_an_fp8_models_gemm_rows_are_not_fitted_as_bf16_curves(tmp_path, repo_root):
    """traces/h100-sxm-kimi-k2-fp8-gemms.csv times fp8 GEMMs: fitting the bf16 curves on
    them is refused, naming why; with --base, which fits attention alone, the table
    holds nothing to fit."""
    table = str(repo_root / "traces" / "h100-sxm-kimi-k2-fp8-gemms.csv")
    res = CliRunner().invoke(app, ["calibrate", "cost", table, "--out", str(tmp_path / "c.yaml")])
    assert res.exit_code == 2 and "fp8 model" in res.output and "Traceback" not in res.output
    shipped = repo_root / "seersim" / "cost" / "calibrations" / "h100.yaml"
    res = CliRunner().invoke(app, ["calibrate", "cost", "--base", str(shipped), table, "--out", str(tmp_path / "c.yaml")])
    assert res.exit_code == 2 and "no attention rows" in res.output
    assert not (tmp_path / "c.yaml").exists()


def test_gqa_kv_heads_replicate_past_their_count():
    m = get_model("qwen2.5-7b")  # 4 KV heads
    assert m.kv_bytes_per_token_stored(4) == m.kv_bytes_per_token
    assert m.kv_bytes_per_token_stored(8) == 2 * m.kv_bytes_per_token


def test_prefill_flops_skip_embedding_and_lm_head_runs_once_per_sequence():
    """Issue 11 fix 4: the embedding is a gather and logits are computed for the last token only."""
    m, g = get_model("qwen2.5-7b"), get_gpu("h100-sxm")
    cost = RooflineCost(m, g, Parallelism(), step_overhead_s=0.0)
    tokens = 4096
    lines = cost.step_lines(1, tokens, 0)
    layer_params = m.active_params - 2 * m.embedding_params
    expected = 2.0 * (layer_params * tokens + m.lm_head_params) / (g.peak_flops * g.flops_efficiency)
    assert lines.intercepts_s[0] == pytest.approx(expected, rel=1e-12)
    verify = cost.step_lines(4, 36, 0, 9.0)  # every verified position needs logits
    assert verify.intercepts_s[0] == pytest.approx(
        2.0 * (layer_params * 36 + m.lm_head_params * 36) / (g.peak_flops * g.flops_efficiency), rel=1e-12
    )


def test_decode_does_not_read_the_input_embedding_table():
    m, g = get_model("qwen2.5-7b"), get_gpu("h100-sxm")
    cost = RooflineCost(m, g, Parallelism(), step_overhead_s=0.0)
    read = cost.step_lines(1, 1, 0).intercepts_s[1] * g.hbm_bandwidth_bytes_per_s * g.bandwidth_efficiency
    assert read == pytest.approx((m.dense_params - m.embedding_params) * m.weight_bytes_per_param, rel=1e-12)


def test_mla_prefill_pairs_use_the_non_absorbed_form():
    m = get_model("kimi-k2")
    assert m.attention_flops_per_pair / m.prefill_attention_flops_per_pair == pytest.approx(3.4, abs=0.05)
    cost = _cost("moonlight-16b-a3b", gpu="h800")
    pairs = 4096 * 4097 // 2 - 4096
    prefill = cost.step_lines(1, 4096, pairs)
    no_pairs = cost.step_lines(1, 4096, 0)
    extra_s = prefill.intercepts_s[0] - no_pairs.intercepts_s[0]
    assert extra_s == pytest.approx(pairs * cost._prefill_pair_s, rel=1e-9)
    # (per FLOP at each kernel's efficiency: prefill's attention kernel, decode's FlashMLA)
    c = cost.curves
    assert cost._prefill_pair_s * c.attention_flops_efficiency < cost._decode_pair_s * c.mla_decode_flops_efficiency / 3


def test_mla_decode_is_charged_in_whole_query_tiles():
    """MLA decode attention runs FlashMLA's 64-row query tiles (heads x query tokens a
    sequence) at its published efficiency: Moonlight's 16 heads fill one tile with up to
    4 query tokens and two with 5; Kimi-K2's 64 heads fill one per query token."""
    from dataclasses import replace

    def attention_slope(cost, queries):
        return cost.step_lines(8, 8 * queries, 0, float(queries)).slopes_s[0]

    moon = _cost("moonlight-16b-a3b", gpu="h800")
    eff, tile = moon.curves.mla_decode_flops_efficiency, moon.curves.mla_decode_tile_rows
    assert (eff, tile) == (0.667, 64)
    m, g = get_model("moonlight-16b-a3b"), get_gpu("h800")
    per_query_s = m.attention_flops_per_pair / (g.peak_flops * eff)
    assert attention_slope(moon, 1) == pytest.approx(per_query_s * 4, rel=1e-12)  # 16 rows: a whole tile
    assert attention_slope(moon, 4) == attention_slope(moon, 1)
    assert attention_slope(moon, 5) == pytest.approx(per_query_s * 8, rel=1e-12)  # 80 rows: two tiles
    kimi = _cost("kimi-k2", gpu="h800", tp=1, dp=32, ep=32)
    assert attention_slope(kimi, 3) == pytest.approx(3 * attention_slope(kimi, 1), rel=1e-12)
    assert attention_slope(kimi, 1) == pytest.approx(
        get_model("kimi-k2").attention_flops_per_pair / (32 * g.peak_flops * eff), rel=1e-12)
    # prefill pairs (the non-absorbed form) and GQA models keep the attention efficiency
    assert moon._prefill_pair_s == pytest.approx(
        m.prefill_attention_flops_per_pair / (g.peak_flops * moon.curves.attention_flops_efficiency), rel=1e-12)
    qwen = _cost("qwen2.5-7b")
    assert attention_slope(qwen, 5) == pytest.approx(5 * attention_slope(qwen, 1), rel=1e-12)
    # without a kernel of its own (the A100's curves), MLA decode is priced as other attention
    plain = KernelCurvesCost(m, g, Parallelism(), replace(moon.curves, mla_decode_flops_efficiency=None), 0.0)
    assert attention_slope(plain, 5) == pytest.approx(
        5 * m.attention_flops_per_pair / (g.peak_flops * moon.curves.attention_flops_efficiency), rel=1e-12)
    assert build_cost_model(load_small(model="moonlight-16b-a3b", gpu="a100-80gb")).curves.mla_decode_flops_efficiency is None
    for bad in (0, 2.5):
        with pytest.raises(ValueError, match="mla_decode_tile_rows"):
            replace(moon.curves, mla_decode_tile_rows=bad)


def test_kimi_small_batches_read_fewer_experts_under_the_calibrated_model():
    cost = _cost("kimi-k2", gpu="h800", tp=1, dp=32, ep=32)
    one, full = cost.step_lines(32, 32, 0).at(32 * 1000), cost.step_lines(4096, 4096, 0).at(4096 * 1000)
    assert one < full


# --------------------------------------------------------------------------- fits on real tables
@needs_vidur
def test_shipped_h100_curves_hold_on_each_tables_heldout_points():
    """The shipped calibration was fitted on the training points only; its held-out MAPE
    per table (recomputed here from the same seeded split) is within 10%."""
    from seersim.calibrate.costfit import HELDOUT_FRACTION, _predict_points, _split
    from seersim.calibrate.tables import read_cost_data
    from seersim.cost.calibration import load_calibration, shipped_calibration

    cal = load_calibration(shipped_calibration("h100"))
    assert cal.fit["heldout_fraction"] == HELDOUT_FRACTION
    vidur_fit = cal.fit["base"]  # (the GEMM curves; attention was fitted on top: the next test)
    for name, rel in H100_TABLES.items():
        data = read_cost_data(VIDUR / "h100" / rel)
        meas = data.points().to_numpy()
        held = _split(len(meas), vidur_fit["seed"])
        pred = _predict_points(cal.curves, data).to_numpy()
        mape = float(np.mean(np.abs(pred[held] / meas[held] - 1)))
        assert mape <= 0.10, (name, mape)
        assert mape == pytest.approx(vidur_fit["heldout_mape_per_table"][name], rel=1e-6)


SHIPPED_ATTENTION_TABLES = ("qwen2.5-7b", "llama-3.1-8b", "qwen2-vl-72b-tp8-attention")


def test_shipped_h100_attention_refits_from_the_h100_tables_in_traces(repo_root):
    """The shipped H100 attention efficiencies are no assumption: refitting them on the
    attention tables recorded on an H100 (traces/) gives them back, and they hold on
    the held-out quarter of those points."""
    from seersim.calibrate.costfit import fit_kernel_curves
    from seersim.calibrate.tables import read_cost_data
    from seersim.cost.calibration import load_calibration, shipped_calibration

    cal = load_calibration(shipped_calibration("h100"))
    datas = [read_cost_data(repo_root / "traces" / f"h100-sxm-{t}.csv") for t in SHIPPED_ATTENTION_TABLES]
    res = fit_kernel_curves(datas, cal.fit["seed"], base=cal)
    for key in ("attention_flops_efficiency", "attention_bandwidth_efficiency", "attention_latency_s"):
        assert res.params[key] == pytest.approx(getattr(cal.curves, key), rel=1e-3), key
    assert res.heldout_mape == pytest.approx(cal.fit["heldout_mape"], rel=1e-3) and res.heldout_mape <= 0.15
    kept = ("gemm_latency_s", "gemm_bandwidth_efficiency", "flops_efficiency", "elementwise_bandwidth_efficiency")
    assert all(getattr(res.calibration.curves, k) == getattr(cal.curves, k) for k in kept)
    assert set(res.calibration.fit["tables"]) == {"qwen2.5-7b", "llama-3.1-8b", "qwen2-vl-72b"}


@needs_vidur
@pytest.mark.slow
def test_calibrate_cost_cli_fits_one_model_and_tests_another(tmp_path):
    out = tmp_path / "llama.yaml"
    res = CliRunner().invoke(
        app,
        ["calibrate", "cost", str(VIDUR / "h100" / H100_TABLES["Llama-2-7b-hf"]),
         "--test", str(VIDUR / "h100" / H100_TABLES["Qwen-72B"]), "--out", str(out), "--json"],
    )
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    assert r["rows"] > 1000 and r["heldout_mape"] <= 0.10 and r["test_mape"] <= 0.15
    assert {"params", "calibration", "plot", "heldout_mape_per_table", "test_mape_per_table"} <= set(r)
    assert out.is_file() and out.with_suffix(".png").is_file()
    sc = load_small(**{"cost.file": str(out), "workload.prompts": 4})
    assert 5e-3 <= per_token_decode_s(build_cost_model(sc)) <= 9e-3
    assert seersim.simulate(sc, policy="baseline").summary["makespan_s"] > 0


def test_calibrate_cost_fits_an_iteration_table(tmp_path):
    from seersim.profile.schema import write_profile_table

    rng = np.random.default_rng(3)
    n = 300
    tokens = np.r_[rng.integers(1, 64, n // 2), rng.integers(64, 4096, n - n // 2)]
    batch = np.minimum(tokens, rng.integers(1, 128, n))
    ctx = batch * rng.integers(200, 4000, n)
    t = 1e-3 + np.interp(tokens, [1, 512, 4096], [0, 4e-3, 3e-2]) + 2e-8 * ctx + 1e-5 * batch
    rows = pd.DataFrame({"op": "iteration", "num_tokens": tokens, "batch_size": batch, "context_tokens": ctx,
                         "prefill_tokens": tokens - batch, "decode_tokens": batch, "time_s": t * rng.normal(1, 0.01, n),
                         "time_s_std": 0.0, "repeats": 1})
    table = tmp_path / "steps.csv"
    write_profile_table(rows, table, {"gpu": "h100-sxm", "model": "qwen2.5-7b", "tp": 1})
    out = tmp_path / "it.yaml"
    res = CliRunner().invoke(app, ["calibrate", "cost", str(table), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    assert r["kind"] == "iteration" and r["rows"] == n and r["heldout_mape"] < 0.03
    assert r["params"]["context_s_per_token"] == pytest.approx(2e-8, rel=0.2)
    sc = load_small(**{"cost.file": str(out)})
    assert build_cost_model(sc).step_lines(1, 1, 0).at(1000) == pytest.approx(1e-3 + 2e-5 + 1e-5, rel=0.3)
    other = load_small(**{"cost.file": str(out), "model": "llama-3.1-8b"})
    with pytest.raises(SpecError, match="iteration fit for model 'qwen2.5-7b'"):
        build_cost_model(other)


def test_calibrate_cost_rejects_a_table_without_the_schema_columns(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    res = CliRunner().invoke(app, ["calibrate", "cost", str(bad)])
    assert res.exit_code == 2 and "missing columns" in res.output


def test_calibrate_cost_fits_an_operator_table_with_attention(tmp_path):
    """A seersim operator table (as `seersim profile` writes on a GPU), generated from known
    curves: the fit recovers the attention efficiencies that Vidur's tables cannot give."""
    from dataclasses import replace

    from seersim.calibrate.costfit import predict_rows
    from seersim.cost.calibration import load_calibration, shipped_calibration
    from seersim.profile.schema import write_profile_table

    truth = replace(load_calibration(shipped_calibration("h100")).curves,
                    attention_flops_efficiency=0.42, attention_bandwidth_efficiency=0.66)
    model, gpu = get_model("qwen2.5-7b"), get_gpu("h100-sxm")
    rows = []
    for op in ("qkv_proj", "attn_out_proj", "mlp_up_gate", "mlp_down", "lm_head"):
        rows += [{"op": op, "num_tokens": t, "batch_size": t, "context_tokens": 0, "prefill_tokens": t, "decode_tokens": 0}
                 for t in (1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096)]
    rows += [{"op": "attn_decode", "num_tokens": b, "batch_size": b, "context_tokens": b * c, "prefill_tokens": 0,
              "decode_tokens": b} for b in (1, 8, 32, 128) for c in (512, 2048, 8192, 32768)]
    rows += [{"op": "attn_prefill", "num_tokens": t, "batch_size": 1, "context_tokens": t, "prefill_tokens": t,
              "decode_tokens": 0} for t in (512, 2048, 8192, 16384)]
    df = pd.DataFrame(rows)
    df["tp"] = 1
    df["time_s"] = predict_rows(truth, gpu, model, df)
    df["time_s_std"], df["repeats"] = 0.0, 5
    table = tmp_path / "ops.csv"
    write_profile_table(df.drop(columns="tp"), table, {"gpu": "h100-sxm", "model": "qwen2.5-7b", "tp": 1})
    res = CliRunner().invoke(app, ["calibrate", "cost", str(table), "--out", str(tmp_path / "ops.yaml"), "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    assert r["kind"] == "kernel_curves" and r["heldout_mape"] < 0.05
    assert r["params"]["attention_bandwidth_efficiency"] == pytest.approx(0.66, rel=0.05)
    assert r["params"]["attention_flops_efficiency"] == pytest.approx(0.42, rel=0.1)


def test_shipped_scenarios_use_the_calibrated_model_and_say_so():
    from conftest import REPO_ROOT

    for path in sorted((REPO_ROOT / "scenarios").glob("*.yaml")):
        text = path.read_text()
        assert "cost:" in text and "model: calibrated" in text, path.name
        sc = seersim.load_scenario(path)
        # kernel curves, or (live validation scenarios) a deployment's iteration fit
        assert isinstance(build_cost_model(sc), (KernelCurvesCost, IterationCost)), path.name


def test_iteration_table_from_a_hub_model_on_cpu(tmp_path):
    """Live vLLM step logs name the model by its hub id and may come from a CPU server:
    the iteration fit needs neither a catalog model nor a catalog GPU, and a scenario of
    the same model (catalog name) accepts it."""
    from seersim.profile.schema import write_profile_table

    rng = np.random.default_rng(5)
    tokens = np.r_[rng.integers(1, 32, 30), rng.integers(32, 2048, 50)]
    batch = np.minimum(tokens, rng.integers(1, 64, 80))
    ctx = batch * rng.integers(100, 3000, 80)
    rows = pd.DataFrame({"op": "iteration", "num_tokens": tokens, "batch_size": batch, "context_tokens": ctx,
                         "prefill_tokens": tokens - batch, "decode_tokens": batch,
                         "time_s": 0.01 + 1e-5 * tokens + 1e-8 * ctx, "time_s_std": 0.0, "repeats": 1})
    table = tmp_path / "cpu-steps.csv"
    write_profile_table(rows, table, {"gpu": "cpu", "model": "Qwen/Qwen2.5-7B", "tp": 1})
    out = tmp_path / "cpu.yaml"
    res = CliRunner().invoke(app, ["calibrate", "cost", str(table), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["heldout_mape"] < 0.02
    cost = build_cost_model(load_small(**{"cost.file": str(out)}))
    assert cost.step_lines(1, 1, 0).at(100) == pytest.approx(0.01, rel=0.05)
    assert cost.step_lines(64, 1024, 0).at(64 * 2000) == pytest.approx(0.01 + 1e-5 * 1024 + 1e-8 * 128_000, rel=0.05)


def test_calibrate_cost_base_fits_attention_alone_and_says_when_it_cannot(tmp_path, repo_root):
    from seersim.cost.calibration import load_calibration, shipped_calibration
    from seersim.profile.schema import write_profile_table
    from seersim.profile.table import read_profile_table

    shipped = shipped_calibration("h100")
    table = repo_root / "traces" / "h100-sxm-qwen2.5-7b.csv"
    out = tmp_path / "att.yaml"
    res = CliRunner().invoke(app, ["calibrate", "cost", "--base", str(shipped), str(table), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    assert r["rows"] == 68 and r["heldout_mape"] <= 0.2  # the attention rows alone
    fitted, base = load_calibration(out), load_calibration(shipped)
    assert fitted.curves.flops_efficiency == base.curves.flops_efficiency
    # (the MLA decode kernel's published figures are kept, with their source)
    assert (fitted.curves.mla_decode_flops_efficiency, fitted.curves.mla_decode_tile_rows) == (0.667, 64)
    assert "FlashMLA" in fitted.curves.sources["mla_decode"]
    assert fitted.fit["base"]["command"] == base.fit["base"]["command"]  # (the base's own origin is kept)
    assert fitted.curves.attention_latency_s > 0
    assert fitted.step_overhead_s is None  # (the shipped file leaves the overhead to the engine kind)

    from dataclasses import replace

    from seersim.cost.calibration import save_calibration

    with_overhead = tmp_path / "base-with-overhead.yaml"  # a deployment's own overhead is kept, like its curves
    save_calibration(replace(base, step_overhead_s=1.5e-3), with_overhead)
    res = CliRunner().invoke(app, ["calibrate", "cost", "--base", str(with_overhead), str(table), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert load_calibration(out).step_overhead_s == 1.5e-3

    gemms = read_profile_table(table)
    only_gemms = tmp_path / "gemms.csv"
    write_profile_table(gemms.rows[~gemms.rows["op"].str.startswith("attn")].to_dict("records"), only_gemms, gemms.meta)
    res = CliRunner().invoke(app, ["calibrate", "cost", "--base", str(shipped), str(only_gemms), "--out", str(out)])
    assert res.exit_code == 2 and "no attention rows" in res.output and "Traceback" not in res.output
    a100 = shipped_calibration("a100")
    res = CliRunner().invoke(app, ["calibrate", "cost", "--base", str(a100), str(table), "--out", str(out)])
    assert res.exit_code == 2 and "not kernel curves of h100-sxm" in res.output


def test_kernel_curves_are_tested_on_whole_decode_steps(tmp_path, repo_root):
    """`calibrate cost ... --test STEPS.csv`: an iteration table of a catalog model (a
    bare forward, `profile --ops decode_step`) is priced as the cost model's step
    without its per-step overhead."""
    from seersim.config import Parallelism
    from seersim.cost.calibration import load_calibration, shipped_calibration
    from seersim.profile.schema import write_profile_table

    shipped = shipped_calibration("h100")
    cost = KernelCurvesCost(get_model("qwen2.5-7b"), get_gpu("h100-sxm"), Parallelism(), load_calibration(shipped).curves, 0.0)
    rows = [{"op": "iteration", "num_tokens": b, "batch_size": b, "context_tokens": b * c, "prefill_tokens": 0,
             "decode_tokens": b, "time_s": 1.25 * float(cost.step_lines(b, b, 0).at(b * c)), "time_s_std": 0.0, "repeats": 3}
            for b, c in ((1, 1024), (8, 4096), (64, 2048))]
    steps = tmp_path / "steps.csv"
    write_profile_table(rows, steps, {"gpu": "h100-sxm", "model": "qwen2.5-7b", "tp": 1})
    res = CliRunner().invoke(app, ["calibrate", "cost", "--base", str(shipped), str(repo_root / "traces" / "h100-sxm-qwen2.5-7b.csv"),
                                   "--test", str(steps), "--out", str(tmp_path / "c.yaml"), "--json"])
    assert res.exit_code == 0, res.output
    fitted = KernelCurvesCost(get_model("qwen2.5-7b"), get_gpu("h100-sxm"), Parallelism(),
                              load_calibration(tmp_path / "c.yaml").curves, 0.0)
    want = np.mean([abs(float(fitted.step_lines(r["batch_size"], r["num_tokens"], 0).at(r["context_tokens"])) / r["time_s"] - 1)
                    for r in rows])
    assert 0.15 < want < 0.25  # (the steps are 1.25x the shipped curves; the fit moved attention a little)
    assert json.loads(res.output)["test_mape_per_table"]["qwen2.5-7b"] == pytest.approx(want, rel=1e-9)
    write_profile_table(rows, steps, {"gpu": "h100-sxm", "model": "my-finetune", "tp": 1})
    res = CliRunner().invoke(app, ["calibrate", "cost", "--base", str(shipped), str(repo_root / "traces" / "h100-sxm-qwen2.5-7b.csv"),
                                   "--test", str(steps), "--out", str(tmp_path / "c.yaml")])
    assert res.exit_code == 2 and "outside the catalog" in res.output
    rows[0].update(prefill_tokens=rows[0]["num_tokens"], decode_tokens=0)  # (a live step log's prefill step)
    write_profile_table(rows, steps, {"gpu": "h100-sxm", "model": "qwen2.5-7b", "tp": 1})
    res = CliRunner().invoke(app, ["calibrate", "cost", "--base", str(shipped), str(repo_root / "traces" / "h100-sxm-qwen2.5-7b.csv"),
                                   "--test", str(steps), "--out", str(tmp_path / "c.yaml")])
    assert res.exit_code == 2 and "decode-only iteration rows" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize(
    "gpu, model",
    [("h100-sxm", "qwen2.5-7b"), ("h100-sxm", "llama-3.1-8b"), ("h200", "qwen2.5-7b"), ("h200", "llama-3.1-8b")],
)
def test_the_shipped_curves_predict_whole_decode_steps_timed_on_real_gpus(repo_root, gpu, model):
    """Whole decode iterations (every layer with its own weights and KV, in a CUDA graph)
    timed on an H100 (plain and verify steps) and an H200 (plain) (traces/): the shipped
    H100 curves, through each GPU's catalog specs, predict them within 15% on average,
    and within -25%..+15% each. The curves' attention was fitted on operator rows and
    their GEMMs on Vidur's tables: none of these steps was fitted."""
    from seersim.calibrate.costfit import evaluate_kernel_curves
    from seersim.calibrate.tables import read_cost_data
    from seersim.cost.calibration import load_calibration, shipped_calibration

    steps = read_cost_data(repo_root / "traces" / f"{gpu}-{model}-decode-steps.csv")
    assert steps.is_iteration and steps.gpu == gpu and len(steps.rows) >= 9
    if gpu == "h100-sxm":  # verify steps of 3-9 tokens a sequence, priced as the engine prices them
        assert set(steps.rows["num_tokens"] // steps.rows["batch_size"]) == {1, 3, 5, 9}
    mape, frame = evaluate_kernel_curves(load_calibration(shipped_calibration("h100")).curves, steps)
    ratio = frame["predicted_s"] / frame["measured_s"]
    assert mape <= 0.15 and ratio.between(0.75, 1.15).all(), ratio.round(3).tolist()


def _fused_rows(repo_root, model: str, op: str) -> pd.DataFrame:
    """The committed fused-kernel rows of `model` on an H100 with the shipped curves'
    prediction (`ratio` = predicted / measured)."""
    from seersim.calibrate.costfit import predict_rows
    from seersim.cost.calibration import load_calibration, shipped_calibration
    from seersim.profile.table import read_profile_table

    table = read_profile_table(repo_root / "traces" / f"h100-sxm-{model}-fused.csv")
    assert table.meta["fused"] and table.meta["complete"] and table.meta["device_name"].startswith("NVIDIA H100")
    rows = table.rows[table.rows["op"] == op].assign(tp=1)
    spec = get_model(model)
    curves = load_calibration(shipped_calibration("h100")).curves
    rows["ratio"] = predict_rows(curves, get_gpu("h100-sxm"), spec, rows) / rows["time_s"]
    rows["width"] = rows["num_tokens"] // rows["batch_size"]
    rows["per_sequence"] = rows["context_tokens"] // rows["batch_size"]
    return rows


@pytest.mark.parametrize("model, most, band", [("moonlight-16b-a3b", 0.20, (0.7, 1.1)), ("kimi-k2", 0.25, (0.55, 1.5))])
def test_the_shipped_curves_price_fused_routed_experts_timed_on_an_h100(repo_root, model, most, band):
    """Routed experts as grouped GEMMs (`profile --fused`, traces/), 1-4096 tokens: the
    routed-expert formula (touched experts' weights read once, rows per expert on the
    GEMM curve) with the shipped curves, never fitted to them. Moonlight's experts are
    bf16; Kimi-K2's fp8, as its checkpoint (input quantized per row), which the curves
    price at the bf16 FLOP rate: optimistic at 1 token (the quantization's launches),
    pessimistic past ~1K tokens (fp8 tensor cores), docs/calibration.md."""
    rows = _fused_rows(repo_root, model, "moe_experts")
    assert len(rows) == 10
    assert float(np.mean(np.abs(rows["ratio"] - 1))) <= most and rows["ratio"].between(*band).all(), rows["ratio"].round(2).tolist()


def test_a_fused_mla_kernel_reads_the_latent_at_the_fitted_bandwidth(repo_root):
    """Moonlight's MLA decode through the fused Triton kernel (traces/): where it reads a
    large latent cache (one query a sequence, ≥ 1M tokens in the batch) the shipped
    attention kernel's KV rate, fitted on GQA kernels, prices it within 15%. Past the
    turn to compute-bound (verify widths) this kernel runs slower than the figure in use
    (our Triton kernel reaches 0.1-0.2 of peak, FlashMLA reports 0.59-0.67): recorded, not
    fitted (docs/calibration.md)."""
    rows = _fused_rows(repo_root, "moonlight-16b-a3b", "attn_decode")
    read_bound = rows[(rows["width"] == 1) & (rows["context_tokens"] >= 2**20)]
    assert len(read_bound) >= 5 and read_bound["ratio"].between(0.85, 1.15).all(), read_bound["ratio"].round(2).tolist()
    assert (rows.loc[rows["width"] == 9, "ratio"] < 0.6).all()
