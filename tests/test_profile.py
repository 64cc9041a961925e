"""`seersim profile`: torch operator timings in the `seersim-profile/1` schema, read back
by `seersim calibrate cost`. Runs on CPU with a tiny grid; skipped where torch is absent
(CI installs `.[test]`, which has no torch: the `[gpu]` extra brings it)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from seersim.cli import app
from seersim.profile.table import COLUMNS, read_profile_table

torch = pytest.importorskip("torch", reason="torch not installed (pip install 'seersim[gpu]'); profile tests skipped")

TINY = ["--device", "cpu", "--tokens", "1,4", "--batches", "1,2", "--contexts", "16,64", "--prefill", "16", "--repeats", "2"]


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
    assert len(rows) == 2 * 2 + 2 * 2 + 1
    assert (rows["time_s"] > 0).all() and (rows["repeats"] == 2).all()
    decode = rows[rows["op"] == "attn_decode"]
    assert sorted(decode["context_tokens"]) == [16, 32, 64, 128]  # batch x context
    meta = json.loads(out.with_name(out.name + ".meta.json").read_text())
    assert meta["schema"] == "seersim-profile/1" and meta["model"] == "qwen2.5-7b" and meta["torch"] == torch.__version__
    assert {"date", "device", "dtype", "tp", "command"} <= set(meta)


def test_profile_mla_decode_attends_over_the_latent(tmp_path):
    from seersim.profile.torch_ops import ProfileGrid, profile_model
    from seersim.specs import get_model

    grid = ProfileGrid(tokens=(1,), decode_batches=(1,), decode_contexts=(32,), prefill_tokens=(8,), repeats=1, warmup=0)
    rows = profile_model(get_model("moonlight-16b-a3b"), 1, "cpu", "bfloat16", grid, {"kv_a_proj", "attn_decode", "attn_prefill"})
    assert set(rows["op"]) == {"kv_a_proj", "attn_decode", "attn_prefill"}


def test_profile_on_cuda_needs_the_gpu_name(tmp_path):
    res = CliRunner().invoke(app, ["profile", "--model", "qwen2.5-7b", "--device", "cuda", "--out", str(tmp_path / "x.csv")])
    assert res.exit_code == 2 and "--gpu" in res.output


def test_profile_unknown_model(tmp_path):
    res = CliRunner().invoke(app, ["profile", "--model", "qwen9", "--device", "cpu", "--out", str(tmp_path / "x.csv")])
    assert res.exit_code == 2 and "unknown model" in res.output
