"""The CLI on bad input: exit code 2, exactly one `seersim: error:` line on stderr that
names the field or file, and never a traceback. Plus the happy path (--json, --out)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import REPO_ROOT, SMALL_YAML
from seersim.cli import app

SMALL = str(SMALL_YAML)


def invoke(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result


def assert_clean_error(result, *must_name: str) -> str:
    """Exit 2, one stderr line starting 'seersim: error:', naming each of `must_name`."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    # typer.Exit -> SystemExit; anything else escaped the CLI's error handling
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    stderr = result.stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected exactly one stderr line, got {lines!r}"
    line = lines[0]
    assert line.startswith("seersim: error: "), line
    for word in must_name:
        assert word in line, f"{word!r} not named in {line!r}"
    assert "Traceback" not in result.output and "Traceback" not in stderr
    assert result.stdout == "", f"nothing should go to stdout on error, got {result.stdout!r}"
    return line


def write_scenario(tmp_path: Path, workload: str, name: str = "sc.yaml") -> Path:
    p = tmp_path / name
    p.write_text(
        "name: t\nmodel: qwen2.5-7b\ngpu: h100-sxm\ncluster: {instances: 2}\n"
        f"workload: {workload}\n"
    )
    return p


# --------------------------------------------------------------------------- scenario errors
def test_missing_scenario_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert_clean_error(invoke("run", missing), str(missing))


def test_malformed_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: [qwen2.5-7b\ngpu: h100-sxm\n")
    line = assert_clean_error(invoke("run", bad), str(bad))
    assert "YAML" in line and "line" in line


def test_yaml_that_is_not_a_mapping(tmp_path):
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    assert_clean_error(invoke("run", bad), str(bad))


def test_unknown_model():
    line = assert_clean_error(invoke("run", SMALL, "--set", "model=gpt-17"), "model", "gpt-17")
    assert "qwen2.5-7b" in line  # lists what is known


def test_unknown_gpu():
    assert_clean_error(invoke("run", SMALL, "--set", "gpu=b900"), "gpu", "b900")


def test_unknown_policy():
    assert_clean_error(invoke("run", SMALL, "--policy", "fancy"), "policy", "fancy")


def test_unknown_policy_in_scenario():
    assert_clean_error(invoke("run", SMALL, "--set", "policy.name=fancy"), "policy", "fancy")


@pytest.mark.parametrize(
    "setting, field",
    [
        ("cluster.instances=0", "cluster.instances"),
        ("cluster.instances=-1", "cluster.instances"),
        ("workload.prompts=-3", "workload.prompts"),
        ("workload.prompts=0", "workload.prompts"),
        ("workload.group_size=0", "workload.group_size"),
        ("workload.max_tokens=0", "workload.max_tokens"),
        ("engine.max_num_seqs=0", "engine.max_num_seqs"),
        ("policy.chunk_tokens=0", "policy.chunk_tokens"),
        ("cluster.parallelism.tp=0", "cluster.parallelism.tp"),
        ("engine.gpu_memory_utilization=1.5", "engine.gpu_memory_utilization"),
        ("cluster.instances=many", "cluster.instances"),
        ("policy.continuation_order=bogus", "policy.continuation_order"),
    ],
)
def test_bad_sizes(setting, field):
    assert_clean_error(invoke("run", SMALL, "--set", setting), field)


def test_malformed_override():
    assert_clean_error(invoke("run", SMALL, "--set", "cluster.instances"), "cluster.instances")


@pytest.mark.parametrize(
    "settings, model",
    [
        (["model=kimi-k2", "gpu=a100-80gb", "cluster.parallelism.tp=1", "engine.kv_capacity_tokens=null"], "kimi-k2"),
        (["model=qwen2-vl-72b", "cluster.parallelism.tp=1", "engine.kv_capacity_tokens=null"], "qwen2-vl-72b"),
    ],
)
def test_model_that_does_not_fit_gpu_memory(settings, model):
    args = [a for s in settings for a in ("--set", s)]
    line = assert_clean_error(invoke("run", SMALL, *args), model)
    assert "does not fit" in line


def test_model_that_does_not_fit_even_with_kv_capacity_override():
    line = assert_clean_error(
        invoke(
            "run", SMALL, "--set", "workload.prompts=2",
            "--set", "model=kimi-k2", "--set", "gpu=a100-80gb", "--set", "cluster.parallelism.tp=1",
        ),
        "kimi-k2",
    )
    assert "does not fit" in line


def test_request_longer_than_kv_capacity():
    assert_clean_error(
        invoke("run", SMALL, "--set", "engine.kv_capacity_tokens=4000", "--set", "workload.prompts=2"),
        "workload.max_tokens",
    )


def test_unknown_field_with_suggestion():
    line = assert_clean_error(invoke("run", SMALL, "--set", "cluster.instancs=3"), "instancs")
    assert "did you mean 'instances'" in line


def test_unknown_field_in_yaml_file(tmp_path):
    p = tmp_path / "typo.yaml"
    p.write_text(SMALL_YAML.read_text().replace("max_num_seqs:", "max_num_seq:"))
    line = assert_clean_error(invoke("run", p), "engine.max_num_seq", str(p))
    assert "did you mean 'max_num_seqs'" in line


def test_unknown_replay_field_suggests_replay_field(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("group_id,input_tokens,output_tokens\n0,10,20\n")
    sc = write_scenario(tmp_path, f"{{kind: replay, path: {csv}, format: csv, limt: 5}}")
    line = assert_clean_error(invoke("run", sc), "workload.limt")
    assert "did you mean 'limit'" in line


def test_suggestion_never_repeats_the_rejected_name(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("group_id,input_tokens,output_tokens\n0,10,20\n")
    result = invoke("run", SMALL, "--set", "workload.kind=replay", "--set", f"workload.path={csv}")
    line = assert_clean_error(result, "workload.prompts")
    assert "did you mean 'prompts'" not in line


@pytest.mark.parametrize("how", ["option", "field"])
def test_negative_seed(how):
    args = ["--seed", "-1"] if how == "option" else ["--set", "seed=-1"]
    assert_clean_error(invoke("run", SMALL, "--set", "workload.prompts=2", *args), "seed")


def test_out_is_an_existing_file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    assert_clean_error(invoke("run", SMALL, "--set", "workload.prompts=2", "--out", f), str(f))


# --------------------------------------------------------------------------- trace errors
def test_missing_replay_csv(tmp_path):
    missing = tmp_path / "missing.csv"
    sc = write_scenario(tmp_path, f"{{kind: replay, path: {missing}, format: csv}}")
    assert_clean_error(invoke("run", sc), str(missing))


def test_missing_replay_csv_relative_path(tmp_path):
    sc = write_scenario(tmp_path, "{kind: replay, path: traces/none.csv, format: csv}")
    assert_clean_error(invoke("run", sc), str(tmp_path / "traces" / "none.csv"))


@pytest.mark.parametrize(
    "body, column",
    [
        # cut in the middle of the last line: a missing field
        ("group_id,input_tokens,output_tokens\n0,100,200\n0,100,300\n1,50", "output_tokens"),
        ("group_id,input_tokens,output_tokens\n0,100,200\n0,100,300\n1,", "input_tokens"),
        # a non-numeric value
        ("group_id,input_tokens,output_tokens\n0,100,200\n0,100,abc\n", "output_tokens"),
        ("group_id,input_tokens,output_tokens\n0,1x0,200\n", "input_tokens"),
        # negative / fractional
        ("group_id,input_tokens,output_tokens\n0,100,-5\n", "output_tokens"),
        ("group_id,input_tokens,output_tokens\n0,100,2.5\n", "output_tokens"),
    ],
)
def test_truncated_or_corrupt_replay_csv(tmp_path, body, column):
    csv = tmp_path / "trace.csv"
    csv.write_text(body)
    sc = write_scenario(tmp_path, f"{{kind: replay, path: {csv}, format: csv}}")
    assert_clean_error(invoke("run", sc), str(csv), column)


def test_replay_csv_missing_columns(tmp_path):
    csv = tmp_path / "trace.csv"
    csv.write_text("group,input,output\n0,1,2\n")
    sc = write_scenario(tmp_path, f"{{kind: replay, path: {csv}, format: csv}}")
    assert_clean_error(invoke("run", sc), str(csv), "output_tokens")


def test_empty_replay_csv(tmp_path):
    csv = tmp_path / "trace.csv"
    csv.write_text("")
    sc = write_scenario(tmp_path, f"{{kind: replay, path: {csv}, format: csv}}")
    assert_clean_error(invoke("run", sc), str(csv))


def test_truncated_mooncake_jsonl(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"input_length": 10, "output_length": 5}\n{"input_length": 12, "outp')
    sc = write_scenario(tmp_path, f"{{kind: replay, path: {trace}, format: mooncake}}")
    assert_clean_error(invoke("run", sc), str(trace))


# --------------------------------------------------------------------------- real entry point
def _python_m(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "seersim.cli", *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120
    )


def test_subprocess_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    proc = _python_m("run", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("seersim: error: ")
    assert str(bad) in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_subprocess_happy_json():
    proc = _python_m("run", SMALL, "--json", "--set", "workload.prompts=4")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["requests"] == 4 * 8


# --------------------------------------------------------------------------- happy path
SUMMARY_KEYS = {"makespan_s", "throughput_tokens_per_s", "tail_s", "output_tokens", "requests", "preemptions", "policy", "seed"}


def test_run_json_prints_one_object():
    result = invoke("run", SMALL, "--json")
    assert result.exit_code == 0, (result.output, result.exception)
    lines = [l for l in result.stdout.splitlines() if l.strip()]
    assert len(lines) == 1, lines
    summary = json.loads(lines[0])
    assert isinstance(summary, dict)
    assert SUMMARY_KEYS <= summary.keys()
    assert summary["policy"] == "baseline" and summary["seed"] == 0
    assert summary["makespan_s"] > 0 and summary["tail_s"] >= 0
    assert summary["output_tokens"] > 0
    assert summary["throughput_tokens_per_s"] == pytest.approx(summary["output_tokens"] / summary["makespan_s"])
    assert "Traceback" not in result.output


def test_run_json_policy_and_seed_options():
    result = invoke("run", SMALL, "--json", "--policy", "divided", "--seed", "7", "--set", "workload.prompts=8")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["policy"] == "divided" and summary["seed"] == 7 and summary["requests"] == 64


def test_run_out_writes_records(tmp_path):
    out = tmp_path / "run1"
    result = invoke("run", SMALL, "--set", "workload.prompts=8", "--out", out)
    assert result.exit_code == 0, (result.output, result.exception)
    for name in ("requests.parquet", "instances.parquet", "timeline.parquet", "summary.json", "timeline.png"):
        f = out / name
        assert f.is_file(), f"{name} not written"
        assert f.stat().st_size > 0, f"{name} is empty"
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    req = pd.read_parquet(out / "requests.parquet")
    assert len(req) == 64 and not req["finish_s"].isna().any()
    inst = pd.read_parquet(out / "instances.parquet")
    assert len(inst) == 4 and "kv_blocks" in inst.columns
    tl = pd.read_parquet(out / "timeline.parquet")
    assert {"instance", "time_s", "running", "kv_used_blocks"} <= set(tl.columns)
    saved = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= saved["summary"].keys()
    assert saved["summary"]["requests"] == 64
    # no stray temporary files from the atomic writes
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_specs_and_policies_commands():
    r = invoke("specs")
    assert r.exit_code == 0 and "kimi-k2" in r.stdout and "h100-sxm" in r.stdout
    assert any(row.split()[0] == "llama-2-7b" and row.split()[-1] == "mha" for row in r.stdout.splitlines())
    r = invoke("policies")
    assert r.exit_code == 0
    for name in ("baseline", "divided", "context_aware", "seer", "oracle_lpt"):
        assert name in r.stdout


# --------------------------------------------------------------------------- profile plans
def test_profile_needs_a_table_or_a_plan_to_write():
    assert_clean_error(invoke("profile", "--model", "qwen2.5-7b"), "--out", "--plan-out")


def test_a_profile_plan_names_its_gpu(tmp_path):
    assert_clean_error(invoke("profile", "--model", "qwen2.5-7b", "--plan-out", tmp_path / "p.json"), "--gpu")
    assert not (tmp_path / "p.json").exists()


def test_profile_verify_widths_are_bounded(tmp_path):
    line = assert_clean_error(
        invoke("profile", "--model", "qwen2.5-7b", "--gpu", "h100-sxm", "--widths", "1,12", "--plan-out", tmp_path / "p.json"),
        "--widths",
    )
    assert "1..9" in line


@pytest.mark.parametrize(
    "option, named",
    [
        (("--batches=-1",), ("--batches", "'-1'")),
        (("--contexts", "abc"), ("--contexts", "'abc'")),
        (("--tokens", ""), ("--tokens", "empty")),
        (("--tp", "0"), ("--tp 0",)),
        (("--tp", "3"), ("--tp 3", "28 attention heads", "1, 2, 4")),
        (("--ops", "nonsense,qkv_proj"), ("--ops", "nonsense", "attn_decode")),
    ],
)
def test_profile_grid_options_are_checked(tmp_path, option, named):
    plan = tmp_path / "p.json"
    assert_clean_error(invoke("profile", "--model", "qwen2.5-7b", "--gpu", "h100-sxm", *option, "--plan-out", plan), *named)
    assert not plan.exists()


@pytest.mark.parametrize("backend", ["torch", "vllm"])
def test_profile_repeats_at_least_one(tmp_path, backend):
    r = invoke("profile", "--backend", backend, "--model", "qwen2.5-7b", "--gpu", "h100-sxm", "--repeats", "0",
               "--plan-out", tmp_path / "p.json", "--url", "http://127.0.0.1:9", "--out", tmp_path / "t.csv")
    assert r.exit_code == 2 and "--repeats" in r.output and not (tmp_path / "p.json").exists()


@pytest.mark.parametrize(
    "args, named",
    [
        (("serve-local", "--cores", "x"), ("--cores", "'x'")),
        (("serve-local", "--instances", "2", "--cores", "0"), ("--cores", "1 core(s) for 2 server(s)")),
        (("profile", "--backend", "vllm", "--url", "", "--out", "t.csv"), ("--url is empty",)),
    ],
)
def test_live_list_options_name_themselves(args, named):
    assert_clean_error(invoke(*args), *named)


def test_a_multi_line_library_message_is_one_error_line(capsys):
    """An HTTP client's error text carries a line break ("For more information check: ...")."""
    import typer

    from seersim.cli_common import cli_errors
    from seersim.errors import BackendError

    with pytest.raises(typer.Exit):
        with cli_errors():
            raise BackendError("server x is not reachable (Client error '404'\nFor more information check: url); fix --url")
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["seersim: error: server x is not reachable (Client error '404' For more information check: url); fix --url"]
