"""`seersim profile`: torch operator timings in the `seersim-profile/1` schema, read back
by `seersim calibrate cost`. Runs on CPU with a tiny grid; skipped where torch is absent
(CI installs `.[test]`, which has no torch: the `[gpu]` extra brings it)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from seersim.cli import app
from seersim.profile.schema import COLUMNS
from seersim.profile.table import read_profile_table

torch = pytest.importorskip("torch", reason="torch not installed (pip install 'seersim[gpu]'); profile tests skipped")

TINY = ["--device", "cpu", "--tokens", "1,4", "--batches", "1,2", "--contexts", "16,64", "--widths", "1,3", "--prefill", "16", "--repeats", "2"]


def test_profile_writes_the_schema_with_provenance(tmp_path):
    out = tmp_path / "qwen.csv"
    res = CliRunner().invoke(
        app, ["profile", "--model", "qwen2.5-7b", "--ops", "qkv_proj,attn_out_proj,attn_decode,attn_prefill", "--out", str(out), *TINY]
    )
    assert res.exit_code == 0, res.output
    table = read_profile_table(out)
    rows = table.rows
    assert list(rows.columns[: len(COLUMNS)]) == COLUMNS
    assert set(rows["op"]) == {"qkv_proj", "attn_out_proj", "attn_decode", "attn_prefill"}
    assert len(rows) == 2 * 2 + 2 * 2 * 2 + 1
    assert (rows["time_s"] > 0).all() and (rows["repeats"] == 2).all()
    decode = rows[rows["op"] == "attn_decode"]
    assert sorted(decode["context_tokens"]) == [16, 16, 32, 32, 64, 64, 128, 128]  # batch x context, each width
    # a verify step of w queries per sequence: w·batch query tokens (what the fit reads as queries per sequence)
    assert sorted(zip(decode["batch_size"], decode["num_tokens"])) == [(1, 1)] * 2 + [(1, 3)] * 2 + [(2, 2)] * 2 + [(2, 6)] * 2
    assert (decode["decode_tokens"] == decode["num_tokens"]).all()
    meta = json.loads(out.with_name(out.name + ".meta.json").read_text())
    assert meta["schema"] == "seersim-profile/1" and meta["model"] == "qwen2.5-7b" and meta["torch"] == torch.__version__
    assert {"date", "device", "dtype", "tp", "command"} <= set(meta)


def test_profile_mla_decode_attends_over_the_latent(tmp_path):
    from seersim.profile.torch_ops import ProfileGrid, profile_model
    from seersim.specs import get_model

    grid = ProfileGrid(tokens=(1,), decode_batches=(1,), decode_contexts=(32,), prefill_tokens=(8,), repeats=1, warmup=0)
    rows, _ = profile_model(get_model("moonlight-16b-a3b"), 1, "cpu", "bfloat16", grid, {"kv_a_proj", "attn_decode", "attn_prefill"})
    assert set(rows["op"]) == {"kv_a_proj", "attn_decode", "attn_prefill"}


def test_profile_on_cuda_needs_the_gpu_name(tmp_path):
    res = CliRunner().invoke(app, ["profile", "--model", "qwen2.5-7b", "--device", "cuda", "--out", str(tmp_path / "x.csv")])
    assert res.exit_code == 2 and "--gpu" in res.output


def test_profile_unknown_model(tmp_path):
    res = CliRunner().invoke(app, ["profile", "--model", "qwen9", "--device", "cpu", "--out", str(tmp_path / "x.csv")])
    assert res.exit_code == 2 and "unknown model" in res.output


def test_split_kv_fills_the_gpu_with_pieces_of_a_long_context():
    from seersim.profile.torch_runner import kv_splits

    assert kv_splits(1, 1, 32768, sms=132) == 128  # one latent head: 128 pieces of 256 tokens
    assert kv_splits(2, 4, 32768, sms=132) == 64  # 2 sequences x 4 K/V heads x 64 pieces >= 264
    assert kv_splits(256, 1, 32768, sms=132) == 2  # a big batch nearly fills it alone
    assert kv_splits(512, 1, 32768, sms=132) == 1
    assert kv_splits(1, 1, 512, sms=132) == 2  # pieces stay >= 256 tokens
    assert kv_splits(1, 1, 768, sms=132) == 2  # 384-token pieces; 192 would be too short
    assert kv_splits(8, 1, 300, sms=1) == 1  # a CPU's one "multiprocessor": no split


# The runner must import nothing of seersim's dependencies but torch: it runs on a GPU
# machine where only torch is installed.
_TORCH_ONLY = """
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"pandas", "pydantic", "typer", "scipy", "simpy", "yaml", "matplotlib", "pyarrow"}:
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
sys.argv = ["torch_runner", *sys.argv[1:]]
runpy.run_module("seersim.profile.torch_runner", run_name="__main__")
"""


def test_a_plan_written_here_is_timed_where_only_torch_is(tmp_path, repo_root):
    import subprocess
    import sys

    plan = tmp_path / "plan.json"
    res = CliRunner().invoke(
        app, ["profile", "--model", "moonlight-16b-a3b", "--gpu", "h100-sxm", "--plan-out", str(plan),
              "--ops", "mlp_up_gate,moe_experts,attn_decode,attn_prefill", *TINY]
    )
    assert res.exit_code == 0, res.output
    assert "torch_runner" in res.output
    out = tmp_path / "table.csv"
    run = subprocess.run(
        [sys.executable, "-c", _TORCH_ONLY, str(plan), "--out", str(out), "--device", "cpu"],
        cwd=repo_root, capture_output=True, text=True, env={**__import__("os").environ, "PYTHONPATH": str(repo_root)},
    )
    assert run.returncode == 0, run.stderr
    table = read_profile_table(out)
    # moonlight's first layer is dense (an MLP), the rest MoE; MLA decode and prefill
    assert set(table.rows["op"]) == {"mlp_up_gate", "moe_experts", "attn_decode", "attn_prefill"}
    assert len(table.rows) == 2 + 2 + 2 * 2 * 2 + 1
    meta = table.meta
    assert meta["model"] == "moonlight-16b-a3b" and meta["gpu"] == "h100-sxm" and meta["torch"] == torch.__version__
    assert meta["grid"]["decode_widths"] == [1, 3] and meta["runner_command"].endswith("--device cpu")


def test_a_malformed_plan_is_one_clear_error(tmp_path):
    from seersim.profile.torch_runner import main

    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "something-else"}')
    assert main([str(bad), "--out", str(tmp_path / "t.csv"), "--device", "cpu"]) == 2
    assert not (tmp_path / "t.csv").exists()


@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda p: p.update(repeats=0), "'repeats' must be an integer >= 1"),
        (lambda p: p.update(warmup=-1), "'warmup' must be an integer >= 0"),
        (lambda p: p["meta"].update(dtype="bfloat17"), "not a torch dtype"),
        (lambda p: p.update(items={}), "'items' must be a list"),
    ],
)
def test_a_hand_edited_plan_is_refused_before_any_timing(tmp_path, capsys, edit, named):
    from seersim.profile.torch_ops import ProfileGrid, plan_model
    from seersim.profile.torch_runner import main
    from seersim.specs import get_model

    plan = plan_model(get_model("qwen2.5-7b"), 1, ProfileGrid(tokens=(1,), decode_batches=(1,), decode_contexts=(8,),
                                                              decode_widths=(1,), prefill_tokens=(8,), repeats=1, warmup=0))
    edit(plan)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    assert main([str(path), "--out", str(tmp_path / "t.csv"), "--device", "cpu"]) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "t.csv").exists()


def test_an_item_that_fails_is_skipped_and_what_was_measured_is_kept(tmp_path):
    """On a lent GPU one shape out of memory must not cost the session: the runner skips
    it, says so, and writes the table after every item (a run cut short keeps its rows)."""
    from seersim.profile.torch_ops import ProfileGrid, plan_model
    from seersim.profile.torch_runner import main, run_plan
    from seersim.specs import get_model

    grid = ProfileGrid(tokens=(1, 4), repeats=1, warmup=0)
    plan = plan_model(get_model("qwen2.5-7b"), 1, grid, {"qkv_proj", "attn_out_proj"}, gpu="h100-sxm")
    plan["items"].insert(1, {"kind": "gemm", "op": "mlp_down", "k": -1, "n": 4, "tokens": [1]})  # torch refuses it
    seen = []
    rows, meta = run_plan(plan, "cpu", lambda rows, meta: seen.append((len(rows), meta["items_done"])))
    assert seen == [(2, 1), (2, 2), (4, 3)]
    assert [f["op"] for f in meta["failed_items"]] == ["mlp_down"] and not meta["complete"]
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    out = tmp_path / "t.csv"
    assert main([str(path), "--out", str(out), "--device", "cpu"]) == 1  # partial: not 0
    table = read_profile_table(out)
    assert list(table.rows["op"]) == ["qkv_proj", "qkv_proj", "attn_out_proj", "attn_out_proj"]
    assert table.meta["items_done"] == 3 and table.meta["failed_items"][0]["op"] == "mlp_down"


def test_a_point_that_fails_costs_that_point_not_its_item(tmp_path):
    """On a GPU the largest decode shapes may not fit: the item's other points are kept
    and the failed one is named in the table's meta."""
    from seersim.profile.torch_ops import ProfileGrid, plan_model
    from seersim.profile.torch_runner import run_plan
    from seersim.specs import get_model

    plan = plan_model(get_model("qwen2.5-7b"), 1, ProfileGrid(tokens=(1,), decode_batches=(1, 2), decode_contexts=(16,),
                                                              decode_widths=(1,), prefill_tokens=(8,), repeats=1, warmup=0),
                      {"attn_decode"})
    plan["items"][0]["points"].insert(1, [-1, 16, 1])  # (a shape torch refuses, as it would one out of memory)
    rows, meta = run_plan(plan, "cpu")
    assert [r["batch_size"] for r in rows] == [1, 2]
    assert [f["point"] for f in meta["failed_points"]] == ["batch=-1 context=16 width=1"]
    assert meta["failed_items"] == [] and not meta["complete"]


def test_a_whole_decode_step_is_planned_alone_for_dense_models_on_one_gpu():
    from seersim.errors import ScenarioError
    from seersim.profile.torch_ops import MOST_STEP_KV_BYTES, plan_model
    from seersim.specs import get_model

    qwen = get_model("qwen2.5-7b")
    (item,) = plan_model(qwen, 1, ops={"decode_step"})["items"]
    assert item["kind"] == "decode_step" and item["layers"] == qwen.num_layers
    assert item["points"] and all(b * c * qwen.kv_bytes_per_token_per_gpu(1) <= MOST_STEP_KV_BYTES for b, c, _ in item["points"])
    assert {w for _, _, w in item["points"]} == {1, 3, 5, 9}  # (verify steps too)
    assert all(i["kind"] != "decode_step" for i in plan_model(qwen, 1)["items"])  # (an iteration table of its own)
    with pytest.raises(ScenarioError, match="plan it alone"):
        plan_model(qwen, 1, ops={"decode_step", "qkv_proj"})
    for model, tp in (("moonlight-16b-a3b", 1), ("qwen2.5-7b", 2)):  # MLA + MoE; the all-reduces
        with pytest.raises(ScenarioError, match="has no decode_step"):
            plan_model(get_model(model), tp, ops={"decode_step"})


def test_a_whole_decode_step_runs_every_layer_and_writes_iteration_rows():
    from seersim.profile.torch_runner import run_plan

    tiny = {"kind": "decode_step", "op": "iteration", "layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2,
            "head_dim": 16, "intermediate": 96, "vocab": 100, "points": [[1, 32, 1], [3, 64, 1], [3, 64, 4]]}
    plan = {"schema": "seersim-profile-plan/1", "meta": {"dtype": "float32", "model": "tiny"}, "repeats": 1,
            "warmup": 0, "items": [tiny]}
    rows, meta = run_plan(plan, "cpu")
    assert meta["complete"], meta
    assert [(r["op"], r["batch_size"], r["context_tokens"], r["decode_tokens"]) for r in rows] == [
        ("iteration", 1, 32, 1), ("iteration", 3, 192, 3), ("iteration", 3, 192, 12)]
    assert all(r["time_s"] > 0 for r in rows)


def test_a_device_fault_stops_the_plan_and_keeps_what_was_measured(monkeypatch):
    """A kernel's illegal address poisons the CUDA context: every later call fails. The
    runner keeps the rows measured so far, names the fault, and runs nothing more
    (it once crashed in its clean-up and lost the item's rows)."""
    from seersim.profile import torch_runner

    def faulty(torch_, item, device, dt, timer):
        def boom():
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return [("first", lambda: torch_runner._row("attn_decode", 1, 1, 8, 0, 1, (1e-5, 0.0, 1))), ("second", boom),
                ("third", lambda: pytest.fail("ran after the device was lost"))]

    def lost():
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setitem(torch_runner._KINDS, "faulty", faulty)
    monkeypatch.setattr(torch.cuda, "empty_cache", lost)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "a faulty GPU")
    plan = {"schema": torch_runner.PLAN_SCHEMA, "meta": {"dtype": "float32", "gpu": "h100-sxm", "model": "m", "tp": 1},
            "repeats": 1, "warmup": 0,
            "items": [{"kind": "faulty", "op": "attn_decode"}, {"kind": "gemm", "op": "qkv_proj", "k": 4, "n": 4, "tokens": [1]}]}
    seen = []
    rows, meta = torch_runner.run_plan(plan, "cuda", lambda rows, meta: seen.append(len(rows)))
    assert [r["op"] for r in rows] == ["attn_decode"] and seen == [1]
    assert [f["point"] for f in meta["failed_points"]] == ["second"]
    assert "device was lost" in meta["failed_items"][0]["error"] and "illegal memory access" in meta["failed_items"][0]["error"]
    assert meta["items_done"] == 0 and not meta["complete"]


def test_fused_kernels_are_planned_and_timed(tmp_path, repo_root):
    """`--fused`: MLA decode through seersim's Triton kernel (checked against float32
    attention before it is timed) and the routed experts as grouped GEMMs. On a CPU
    Triton's interpreter runs the kernel, in float32 (its bfloat16 is not exact)."""
    pytest.importorskip("triton", reason="triton not installed (CUDA builds of torch bring it); fused MLA test skipped")
    import os
    import subprocess
    import sys

    from seersim.profile.torch_ops import ProfileGrid, plan_model
    from seersim.specs import get_model

    grid = ProfileGrid(tokens=(1, 8), decode_batches=(1, 2), decode_contexts=(64,), decode_widths=(1, 3), repeats=1, warmup=0)
    plan = plan_model(get_model("moonlight-16b-a3b"), 1, grid, {"attn_decode", "moe_experts"}, "float32", "h100-sxm", fused=True)
    moe = next(i for i in plan["items"] if i["kind"] == "moe")
    assert moe["fused"] and next(i for i in plan["items"] if i["kind"] == "attn_decode")["fused"] and plan["meta"]["fused"]
    moe.update(hidden=64, width=32)  # (Moonlight's experts at full size in float32 would take seconds to fill)
    path, out = tmp_path / "plan.json", tmp_path / "t.csv"
    path.write_text(json.dumps(plan))
    res = subprocess.run([sys.executable, "-m", "seersim.profile.torch_runner", str(path), "--out", str(out), "--device", "cpu"],
                         capture_output=True, text=True, env={**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(repo_root)})
    assert res.returncode == 0, res.stderr
    table = read_profile_table(out)
    assert table.meta["complete"] and table.meta["fused"] and "triton" in table.meta
    decode = table.rows[table.rows["op"] == "attn_decode"]
    assert sorted(zip(decode["batch_size"], decode["num_tokens"])) == [(1, 1), (1, 3), (2, 2), (2, 6)]
    assert list(table.rows.loc[table.rows["op"] == "moe_experts", "num_tokens"]) == [1, 8]
    assert (table.rows["time_s"] > 0).all()


_KERNEL_CHECK = """
import sys, torch
from seersim.profile.triton_mla import check, mla_decode
rows, context, pieces = map(int, sys.argv[1:])
gen = torch.Generator().manual_seed(rows + context)
q = torch.randn(2, rows, 576, generator=gen)
latent = torch.randn(2, context, 576, generator=gen)
got = mla_decode(torch, q, latent, 512, 0.07, pieces)
want = torch.softmax(q @ latent.transpose(1, 2) * 0.07, -1) @ latent[..., :512]
print(float((got - want).abs().max()), check(torch, "cpu", torch.float32, rows, 576, 512, 0.07))
"""


@pytest.mark.parametrize("rows, context, pieces", [(16, 64, 1), (48, 100, 4), (32, 300, 3)])
def test_the_fused_mla_kernel_is_attention(repo_root, rows, context, pieces):
    """The Triton kernel equals softmax(q·latentᵀ·scale)·latent[:, :512] however the
    context is cut into pieces (the last one short included). (Its own process:
    Triton reads TRITON_INTERPRET when it is imported.)"""
    pytest.importorskip("triton", reason="triton not installed (CUDA builds of torch bring it); fused MLA test skipped")
    import os
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", _KERNEL_CHECK, str(rows), str(context), str(pieces)], capture_output=True,
                         text=True, env={**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(repo_root)})
    assert res.returncode == 0, res.stderr
    error, checked = map(float, res.stdout.split())
    assert error < 1e-4 and checked < 1e-4


def test_fp8_experts_are_planned_for_an_fp8_checkpoint_and_quantized_per_row():
    """`--fused` times an fp8 checkpoint's experts (Kimi-K2's) in fp8, each input row
    quantized with its own scale; a bf16 model's stay bf16; fp8 is never timed unfused."""
    from seersim.profile.torch_ops import ProfileGrid, plan_model
    from seersim.profile.torch_runner import _moe, _quantize_rows
    from seersim.specs import get_model

    grid = ProfileGrid(tokens=(1,), repeats=1, warmup=0)
    weights = {m: next(i for i in plan_model(get_model(m), 1, grid, {"moe_experts"}, fused=f)["items"])["weights"]
               for m, f in (("kimi-k2", True), ("moonlight-16b-a3b", True))}
    assert weights == {"kimi-k2": "float8_e4m3fn", "moonlight-16b-a3b": "bfloat16"}
    assert next(iter(plan_model(get_model("kimi-k2"), 1, grid, {"moe_experts"})["items"]))["weights"] == "bfloat16"
    a = torch.randn(5, 64) * torch.tensor([1e-3, 1.0, 10.0, 300.0, 1e4])[:, None]
    q, scale = _quantize_rows(torch, a)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (5,)
    back = q.float() * scale[:, None]
    assert torch.allclose(back, a, rtol=0.07, atol=0) and float(q.float().abs().max()) <= 448.0
    with pytest.raises(ValueError, match="fused"):
        _moe(torch, {"experts": 2, "hidden": 8, "width": 8, "points": [], "weights": "float8_e4m3fn"}, "cpu", torch.float32, None)


def test_an_fp8_checkpoints_gemms_are_timed_in_fp8_but_its_lm_head():
    """`--fused` on Kimi-K2: every projection in fp8 through `torch._scaled_mm` (the
    input quantized per row in the timed call), the lm_head in bf16 as the checkpoint
    ships it."""
    from seersim.profile.torch_ops import ProfileGrid, plan_model
    from seersim.profile.torch_runner import run_plan
    from seersim.specs import get_model

    grid = ProfileGrid(tokens=(1, 4), repeats=1, warmup=0)
    plan = plan_model(get_model("kimi-k2"), 1, grid, {"q_a_proj", "kv_b_proj", "lm_head"}, "float32", fused=True)
    assert {i["op"]: i.get("weights") for i in plan["items"]} == {
        "q_a_proj": "float8_e4m3fn", "kv_b_proj": "float8_e4m3fn", "lm_head": None}
    plan["items"] = [dict(plan["items"][0], k=64, n=32)]  # (Kimi-K2's shapes take seconds on a CPU)
    rows, meta = run_plan(plan, "cpu")
    assert [r["num_tokens"] for r in rows] == [1, 4] and meta["complete"], meta["failed_points"]


def test_the_autotuner_sees_the_context_cut_as_the_timed_points_cut_it(monkeypatch):
    """On a GPU the fused MLA item first lets Triton's autotuner pick a tile per row count
    on a batch of 32 at 8K context, cut into the pieces `kv_splits` gives that shape (16
    on an H100's 132 multiprocessors), as the timed points' contexts are cut."""
    pytest.importorskip("triton", reason="triton not installed (CUDA builds of torch bring it); fused MLA test skipped")
    from seersim.profile import torch_runner, triton_mla

    tuned = []
    monkeypatch.setattr(triton_mla, "check", lambda *a: 0.0)
    monkeypatch.setattr(triton_mla, "tune", lambda torch_, device, dt, rows, width, lora, scale, pieces: tuned.append((rows, pieces)))
    item = {"heads": 16, "width": 576, "lora": 512, "scale": 0.07, "points": [(32, 8192, 1), (32, 8192, 5), (8, 1024, 5)]}
    points = torch_runner._mla_fused(torch, item, "cuda", torch.bfloat16, None, sms=132)
    assert tuned == [(16, 16), (80, 16)] and torch_runner.kv_splits(32, 1, 8192, 132) == 16
    assert len(points) == 3  # (timed later, each cut by kv_splits of its own shape)
