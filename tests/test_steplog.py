"""vLLM per-step log → engine steps → profiling rows, on an excerpt of a real log
(`tests/data/vllm-steplog-excerpt.log`: a `seersim serve-local` server, vLLM 0.32.0
CPU, 4,608 KV tokens in blocks of 128; three busy stretches cut from one run, the
second with a preempted request resumed, the third after an idle wait)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from seersim.calibrate.costfit import fit_iteration
from seersim.calibrate.tables import read_cost_data
from seersim.profile.steplog import (
    iteration_rows, kv_capacity_tokens, pool_rows, read_step_log, step_composition, step_summary, usable_kv_tokens,
)
from seersim.profile.schema import COLUMNS, write_profile_table
from seersim.profile.table import read_profile_table

LOG = Path(__file__).parent / "data" / "vllm-steplog-excerpt.log"
BLOCK, LOGGED_KV = 128, 4608
KV = LOGGED_KV - BLOCK  # usable: all but vLLM's null block


def test_every_step_line_is_read_with_its_composition():
    s = read_step_log(LOG)
    assert list(s["iteration"][:3]) == [0, 1, 2] and len(s) == 23
    first = s.iloc[1]  # Iteration(1): 15 context requests, 1920 tokens, 1 generation request
    assert (first["context_requests"], first["context_tokens"], first["generation_requests"], first["generation_tokens"]) == (15, 1920, 1, 1)
    assert first["forward_s"] == pytest.approx(0.08175) and first["kv_usage"] == pytest.approx(0.486)
    assert kv_capacity_tokens(LOG) == LOGGED_KV and usable_kv_tokens(LOGGED_KV, BLOCK) == KV


def test_periods_only_inside_busy_stretches():
    s = read_step_log(LOG).set_index("iteration")
    # 14.648 -> 14.661: a step period, at millisecond resolution
    assert s.loc[2, "period_s"] == pytest.approx(0.013, abs=1e-6)
    assert np.isnan(s.loc[0, "period_s"])  # first line
    assert np.isnan(s.loc[148, "period_s"])  # a gap in the iteration numbers (cut from the excerpt)
    assert np.isnan(s.loc[172, "period_s"])  # after step 171 left nothing running (KV usage 0): an idle wait
    assert s.loc[173, "period_s"] == pytest.approx(0.057, abs=1e-6)


def test_whole_second_timestamps_give_no_periods(tmp_path):
    coarse = tmp_path / "coarse.log"
    coarse.write_text(re.sub(r"(\d\d:\d\d:\d\d)\.\d{3}", r"\1", LOG.read_text()))  # vLLM's default format
    s = read_step_log(coarse)
    assert len(s) == 23 and s["period_s"].isna().all()


def test_resumed_requests_recompute_as_generation_tokens():
    s = read_step_log(LOG)
    comp = step_composition(s, BLOCK, KV).set_index(s["iteration"])
    # Iteration(151): 5 generation requests, 1029 tokens: 4 decode, one resumed request recomputes 1024 (+1 sampled)
    row = comp.loc[151]
    assert row["recomputed_tokens"] == 1024 and row["decode_tokens"] == 5 and row["prefill_tokens"] == 1024
    # 16 decodes at 91.4% of the 35 usable blocks: 32 blocks, half a block short per sequence
    assert comp.loc[2, "context_tokens"] == 32 * BLOCK - 16 * BLOCK // 2
    assert comp.loc[1, "context_tokens"] == 1921  # 17 blocks (48.6% of 35) less half-blocks is below the step's tokens
    summary = step_summary(s, BLOCK, KV)
    assert summary["recomputed_tokens"] == 1024 and summary["steps"] == 23
    assert summary["busy_s"] == pytest.approx(s["period_s"].sum())


def test_rows_are_mean_periods_per_composition_and_fit(tmp_path):
    s = read_step_log(LOG)
    rows = iteration_rows(s, BLOCK, KV)
    assert set(COLUMNS) <= set(rows.columns) and (rows["op"] == "iteration").all()
    assert rows["repeats"].sum() == s["period_s"].notna().sum()
    d16 = rows[(rows["batch_size"] == 16) & (rows["decode_tokens"] == 16) & (rows["context_tokens"] == 32 * BLOCK - 8 * BLOCK)]
    steps = s[(s["generation_requests"] == 16) & (s["kv_usage"] == 0.914) & s["period_s"].notna()]
    assert d16["time_s"].iloc[0] == pytest.approx(steps["period_s"].mean())
    assert d16["repeats"].iloc[0] == len(steps)
    # the table round-trips through the profiling schema and an iteration fit accepts it
    path = tmp_path / "steps.csv"
    write_profile_table(rows, path, {"gpu": "cpu-core", "model": "tiny-llama"})
    assert len(read_profile_table(path).rows) == len(rows)
    if len(rows) >= 8:
        fit = fit_iteration(read_cost_data(path))
        assert fit.calibration.kind == "iteration"


def test_pooling_two_passes_is_the_mean_over_all_steps():
    s = read_step_log(LOG)
    half = len(s) // 2
    parts = [iteration_rows(s.iloc[:half], BLOCK, KV), iteration_rows(s.iloc[half:], BLOCK, KV)]
    pooled = pool_rows(parts).set_index(["num_tokens", "batch_size", "context_tokens"])
    whole = iteration_rows(s, BLOCK, KV).set_index(["num_tokens", "batch_size", "context_tokens"])
    assert pooled["repeats"].sum() == whole["repeats"].sum()
    np.testing.assert_allclose(pooled.loc[whole.index, "time_s"], whole["time_s"])
    np.testing.assert_allclose(pooled.loc[whole.index, "time_s_std"], whole["time_s_std"], atol=1e-12)
    np.testing.assert_allclose(pooled.loc[whole.index, "forward_s"], whole["forward_s"])


def test_cli_turns_a_written_log_into_a_table(tmp_path):
    from typer.testing import CliRunner

    from seersim.cli import app

    out = tmp_path / "steps.csv"
    args = ["profile", "--backend", "vllm", "--server-logs", str(LOG), "--out", str(out), "--model", "tiny-llama"]
    missing = CliRunner().invoke(app, args)
    assert missing.exit_code == 2 and "--block-size" in missing.output
    ok = CliRunner().invoke(app, args + ["--block-size", str(BLOCK)])
    assert ok.exit_code == 0, ok.output
    table = read_profile_table(out)
    assert table.meta["model"] == "tiny-llama" and table.is_iteration
    assert table.rows["repeats"].sum() == read_step_log(LOG)["period_s"].notna().sum()
