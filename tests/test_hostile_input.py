"""Hostile input (issue 15): every number is checked, work is bounded before anything is
allocated, and each bad input ends in exactly one `seersim: error:` line, exit 2, no
traceback (the style of test_cli_errors.py)."""

from __future__ import annotations

import types
import typing
import warnings
from pathlib import Path

import pytest
from pydantic import BaseModel

import seersim
from conftest import SHARED, SMALL_YAML, load_small
from seersim.config import Scenario, tp_divides_heads
from seersim.errors import ScenarioError
from seersim.limits import BYTES_PER_REQUEST, estimate_work
from seersim.specs import get_model
from test_cli_errors import assert_clean_error, invoke, write_scenario

SMALL = str(SMALL_YAML)


# --------------------------------------------------------------------------- every numeric field
def _leaves(ann) -> list:
    """The types (or Literal/tuple forms) an annotation can take, Optional/Annotated unwrapped."""
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        return _leaves(typing.get_args(ann)[0])
    if origin in (typing.Union, types.UnionType):
        return [leaf for a in typing.get_args(ann) for leaf in _leaves(a)]
    return [ann]


def _numeric_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted paths of every int/float field of the schema (tuples of models: item 0)."""
    out = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        for a in _leaves(field.annotation):
            origin = typing.get_origin(a)
            if origin is tuple:
                out += _numeric_fields(typing.get_args(a)[0], f"{path}.0.")
            elif origin is typing.Literal:
                if all(isinstance(v, int) and not isinstance(v, bool) for v in typing.get_args(a)):
                    out.append(path)
            elif isinstance(a, type) and issubclass(a, BaseModel):
                out += _numeric_fields(a, f"{path}.")
            elif a in (int, float):
                out.append(path)
    return sorted(set(out))


NUMERIC = [
    f for f in _numeric_fields(Scenario)
    # the replay workload's fields when small.yaml's workload is synthetic: tested below with a replay
    if not f.startswith("workload.") or f.split(".")[1] in ("prompts", "max_tokens", "group_size", "input_tokens", "output_tokens")
]


def test_the_sweep_sees_every_section():
    sections = {f.split(".")[0] for f in NUMERIC}
    assert {"model", "gpu", "cluster", "engine", "workload", "policy", "kv_pool", "limits", "seed", "training_s"} <= sections
    assert "kv_pool.tiers.0.bandwidth_bytes_per_s" in NUMERIC and "engine.speculation.paths" in NUMERIC
    assert len(NUMERIC) > 60


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 1e30, -1e30, True, False])
def test_every_numeric_field_rejects_non_finite_absurd_and_bool(value):
    """One line naming the field, for each numeric field of the schema (models and GPUs included)."""
    for field in NUMERIC:
        with pytest.raises(ScenarioError) as exc:
            seersim.load_scenario(SMALL_YAML, **{field: value})
        msg = str(exc.value)
        assert "\n" not in msg and field in msg, (field, value, msg)


def test_replay_numeric_fields_are_checked_too(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("group_id,input_tokens,output_tokens\n0,10,20\n")
    sc = write_scenario(tmp_path, f"{{kind: replay, path: {csv}, group_size: 1}}")
    for field in ("workload.max_tokens", "workload.group_size", "workload.limit"):
        for value in (float("inf"), 1e30, True, -1):
            with pytest.raises(ScenarioError, match=field.replace(".", r"\.")):
                seersim.load_scenario(sc, **{field: value})


# --------------------------------------------------------------------------- the issue's cases
@pytest.mark.parametrize(
    "settings, field",
    [
        (["workload.output_tokens.sigma=.inf"], "workload.output_tokens.sigma"),
        (["workload.output_tokens.sigma=50"], "workload.output_tokens.sigma"),
        (["-p", "partial_rollout", "policy.over_issue_factor=.inf"], "policy.over_issue_factor"),
        (["-p", "partial_rollout", "policy.over_issue_factor=1e6"], "policy.over_issue_factor"),
        (["cluster.instances=true"], "cluster.instances"),
        (["training_s=.inf"], "training_s"),
        (["engine.block_size_tokens=1000000"], "engine.block_size_tokens"),
        (["seed=.nan"], "seed"),
        (["kv_pool.tiers.1.latency_s=-.inf"], "kv_pool.tiers.1.latency_s"),
        (["engine.speculation.acceptance_table={0: .inf}"], "engine.speculation.acceptance_table.0"),
    ],
)
def test_issue_cases_are_one_line(settings, field):
    args = []
    for s in settings:
        args += [s] if s.startswith("-") or s == "partial_rollout" else ["--set", s]
    assert_clean_error(invoke("run", SMALL, *args), field)


def test_bool_count_is_not_one_instance():
    line = assert_clean_error(invoke("run", SMALL, "--set", "cluster.instances=true"), "cluster.instances")
    assert "true" in line and "True" not in line


def test_largest_allowed_values_run_or_refuse_cleanly():
    """The upper ends of the ranges do not crash the sampler (sigma) or hang (over-issue)."""
    for args in (
        ["--set", "workload.output_tokens.sigma=10"],
        ["--set", "workload.input_tokens.sigma=10"],
        ["-p", "partial_rollout", "--set", "policy.over_issue_factor=10"],
    ):
        r = invoke("run", SMALL, "--json", "--set", "workload.prompts=4", *args)
        assert r.exit_code == 0, (args, r.output, r.exception)


def test_tp_must_divide_heads_as_vllm_requires():
    line = assert_clean_error(invoke("run", SMALL, "--set", "cluster.parallelism.tp=3"), "cluster.parallelism.tp=3")
    assert "28 attention heads" in line and "4 KV heads" in line and "1, 2, 4, 28" in line
    q = get_model("qwen2.5-7b")  # 28 heads, 4 KV heads
    assert [t for t in range(1, 33) if tp_divides_heads(q, t)[0]] == [1, 2, 4, 28]  # 28: KV heads replicated 7x
    big = get_model("qwen2-vl-72b")  # 64 heads, 8 KV heads: 16 replicates each KV head twice
    assert all(tp_divides_heads(big, t)[0] for t in (1, 2, 4, 8, 16, 32, 64))
    assert not tp_divides_heads(big, 12)[0]
    kimi = get_model("kimi-k2")  # MLA: only the attention heads count
    assert tp_divides_heads(kimi, 16)[0] and not tp_divides_heads(kimi, 3)[0]


def test_block_size_named_as_the_cause_when_one_block_does_not_fit():
    line = assert_clean_error(
        invoke(
            "run", SMALL, "--set", "engine.block_size_tokens=65536", "--set", "gpu.memory_bytes=2e10",
            "--set", "engine.kv_capacity_tokens=null", "--set", "workload.prompts=2",
        ),
        "engine.block_size_tokens=65536",
    )
    assert "does not fit" not in line


def test_messages_show_plain_numbers(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("group_id,input_tokens,output_tokens\n0,10,-5\n")
    sc = write_scenario(tmp_path, f"{{kind: replay, path: {csv}}}")
    line = assert_clean_error(invoke("run", sc), "row 2", "output_tokens", "got -5")
    assert "np." not in line and "int64" not in line
    line = assert_clean_error(invoke("run", SMALL, "--set", "workload.prompts=-3"), "workload.prompts", "got -3")


def test_unknown_workload_kind_does_not_dump_the_workload():
    line = assert_clean_error(invoke("run", SMALL, "--set", "workload.kind=foo"), "workload", "'foo'", "synthetic")
    assert "prompts" not in line and "group_size" not in line and len(line) < 200


def test_list_items_are_addressable_by_set():
    sc = seersim.load_scenario(SMALL_YAML, overrides=["kv_pool.tiers.0.bandwidth_bytes_per_s=1e9"])
    assert sc.kv_pool.tiers[0].bandwidth_bytes_per_s == 1e9
    assert sc.kv_pool.tiers[1] == Scenario.model_fields["kv_pool"].default.tiers[1]  # the rest keep their defaults
    r = invoke("run", SMALL, "--json", "-p", "divided", "--set", "workload.prompts=8",
               "--set", "kv_pool.tiers.0.bandwidth_bytes_per_s=1e9")
    assert r.exit_code == 0, r.output
    assert_clean_error(invoke("run", SMALL, "--set", "kv_pool.tiers.7.name=x"), "kv_pool.tiers.7", "0..1")
    assert_clean_error(invoke("run", SMALL, "--set", "kv_pool.tiers.x.name=x"), "kv_pool.tiers.x")


@pytest.mark.parametrize("value", ["", " , "])
def test_empty_policies_is_an_error(value):
    assert_clean_error(invoke("compare", SMALL, "--policies", value), "--policies")


# --------------------------------------------------------------------------- work bounds
def test_billion_prompts_refused_before_allocating():
    line = assert_clean_error(
        invoke("run", SMALL, "--set", "workload.prompts=1000000000"),
        "workload.prompts=1,000,000,000", "limits.max_requests", "--set limits.max_requests=8000000000",
    )
    assert "TB of memory" in line


@pytest.mark.parametrize(
    "settings, named",
    [
        (["limits.max_requests=100"], "limits.max_requests"),
        (["limits.max_output_tokens=1e5"], "limits.max_output_tokens"),
        (["limits.max_memory_bytes=1e6"], "limits.max_memory_bytes"),
        (["policy.chunk_tokens=16", "limits.max_chunks=10000"], "limits.max_chunks"),
    ],
)
def test_each_limit_refuses_and_names_how_to_raise_it(settings, named):
    args = [a for s in settings for a in ("--set", s)]
    line = assert_clean_error(invoke("run", SMALL, "-p", "divided", *args), named, f"--set {named}=")


def test_raising_a_limit_lets_the_run_through():
    r = invoke("run", SMALL, "--json", "--set", "workload.prompts=4", "--set", "limits.max_requests=32")
    assert r.exit_code == 0, r.output
    assert_clean_error(invoke("run", SMALL, "--set", "workload.prompts=4", "--set", "limits.max_requests=31"),
                       "limits.max_requests=31")


def test_compare_bounds_the_whole_study():
    line = assert_clean_error(
        invoke("compare", SMALL, "--seeds", "10000", "--policies", "baseline,divided"),
        "2 policies x 10000 seed(s)", "10,240,000 requests", "limits.max_requests", "--seeds",
    )
    assert "memory" not in line


def test_seed_beyond_int64_is_refused():
    assert_clean_error(invoke("run", SMALL, "--seed", "99999999999999999999999"), "seed")


def test_estimate_counts_over_issue_steps_and_chunks(tmp_path):
    sc = seersim.load_scenario(SMALL_YAML, **{"policy.name": "partial_rollout", "steps": 3})
    est = estimate_work(sc)
    assert est.requests == 2 * 512 * 3  # over_issue_factor 2
    assert est.output_tokens == est.requests * 2500
    assert est.chunks == est.requests + est.output_tokens / 2048
    assert est.memory_bytes >= est.requests * BYTES_PER_REQUEST
    base = estimate_work(seersim.load_scenario(SMALL_YAML))
    assert base.chunks == base.requests == 512  # the baseline dispatches whole requests
    csv = tmp_path / "t.csv"
    csv.write_text("group_id,input_tokens,output_tokens\n" + "".join(f"{i},10,20\n" for i in range(7)))
    replay = seersim.load_scenario(write_scenario(tmp_path, f"{{kind: replay, path: {csv}, max_tokens: 50}}"))
    assert estimate_work(replay).requests == 7 and estimate_work(replay).output_tokens == 7 * 50


@pytest.mark.parametrize("fmt", ["csv", "mooncake"])
def test_trace_with_huge_value_names_row_and_column(tmp_path, fmt):
    if fmt == "csv":
        trace = tmp_path / "t.csv"
        trace.write_text("group_id,input_tokens,output_tokens\n0,10,20\n0,10,99999999999999999999\n")
        column, row = "output_tokens", "row 3"  # the file's line 3 (line 1 is the header)
    else:
        trace = tmp_path / "t.jsonl"
        trace.write_text('{"input_length": 10, "output_length": 5}\n{"input_length": 99999999999999999999, "output_length": 5}\n')
        column, row = "input_length", "record 2"
    sc = write_scenario(tmp_path, f"{{kind: replay, path: {trace}, format: {fmt}}}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no pandas overflow warning on the way
        line = assert_clean_error(invoke("run", sc), str(trace), row, column, "99999999999999999999")
    assert "-9223372036854775808" not in line


def test_estimate_of_a_missing_trace_leaves_the_error_to_the_reader(tmp_path):
    sc = write_scenario(tmp_path, "{kind: replay, path: none.csv}")
    assert_clean_error(invoke("run", sc), str(Path(tmp_path) / "none.csv"))


# --------------------------------------------------------------------------- the ends of every range
def _field(path: str):
    """The pydantic FieldInfo at a dotted path of the schema."""
    model: type[BaseModel] = Scenario
    parts = path.split(".")
    for part in parts[:-1]:
        if part.isdigit():
            continue
        for leaf in _leaves(model.model_fields[part].annotation):
            if typing.get_origin(leaf) is tuple:
                leaf = typing.get_args(leaf)[0]
            if isinstance(leaf, type) and issubclass(leaf, BaseModel):
                model = leaf
                break
    return model.model_fields[parts[-1]]


def _range_ends(path: str) -> list[float]:
    """The smallest and largest values a field accepts."""
    field = _field(path)
    constraints = list(field.metadata)
    for leaf in typing.get_args(field.annotation):  # Optional[Annotated[...]]
        for m in getattr(leaf, "__metadata__", ()):
            constraints += getattr(m, "metadata", [m])
    lo = hi = None
    for c in constraints:
        if getattr(c, "ge", None) is not None:
            lo = c.ge
        if getattr(c, "gt", None) is not None:
            lo = c.gt * (1 + 1e-6) + 1e-9 if isinstance(c.gt, float) else c.gt + 1
        if getattr(c, "le", None) is not None:
            hi = c.le
    literal = [a for a in _leaves(field.annotation) if typing.get_origin(a) is typing.Literal]
    if literal:
        return [min(typing.get_args(literal[0])), max(typing.get_args(literal[0]))]
    return [v for v in (lo, hi) if v is not None]


def test_every_range_has_two_ends():
    for field in NUMERIC:
        assert len(_range_ends(field)) == 2, field


@pytest.mark.slow
def test_the_ends_of_every_range_run_or_refuse_cleanly():
    """At each end of each numeric field's range, a small run with every engine feature on
    (seer: chunks, speculation, the pool) finishes or raises a SeersimError: no other
    exception (overflow, a root finder's NaN) and no hang."""
    from seersim.errors import SeersimError

    for field in NUMERIC:
        for value in _range_ends(field):
            try:
                sc = seersim.load_scenario(
                    SMALL_YAML, **{field: value, "workload.prompts": 1, "workload.group_size": 2}
                )
                seersim.simulate(sc, policy="seer")
            except SeersimError:
                pass


def test_kv_capacity_override_takes_a_whole_dp_instance():
    """A 32-GPU Kimi-K2 instance holds ~12M tokens of KV (more than any one sequence's
    10M-token bound): the what-if override must accept it, and still refuse a typo."""
    sc = seersim.load_scenario(SMALL_YAML, **{"engine.kv_capacity_tokens": 24_198_144})
    assert sc.engine.kv_capacity_tokens == 24_198_144
    with pytest.raises(ScenarioError, match=r"engine\.kv_capacity_tokens"):
        seersim.load_scenario(SMALL_YAML, **{"engine.kv_capacity_tokens": 10**11})


# measurement tables read by `calibrate`: a truncated last row, a non-integer, no rows
LENGTHS_HEADER = "group_id,input_tokens,output_tokens\n"
ACCEPTANCE_HEADER = "draft_tokens,accepted_tokens,references\n"


@pytest.mark.parametrize(
    "command, text, named",
    [
        (("calibrate", "lengths"), LENGTHS_HEADER + "0,10,5\n0,10,", ("row 3", "output_tokens", "an empty cell")),
        (("calibrate", "lengths"), LENGTHS_HEADER + "0,10,5\n0,10,7.5\n", ("row 3", "output_tokens", "7.5")),
        (("calibrate", "lengths"), LENGTHS_HEADER + "x,10,5\n", ("row 2", "group_id", "'x'")),
        (("calibrate", "lengths"), LENGTHS_HEADER, ("no rows",)),
        (("calibrate", "lengths"), LENGTHS_HEADER + "0,10,5\n", ("1 of its 1 responses", "at least 10")),
        (("calibrate", "lengths"), LENGTHS_HEADER + "0,10,100\n" * 12, ("0 of its 12 responses", "max_tokens")),
        (("calibrate", "lengths"), LENGTHS_HEADER + "0,10,50\n" * 12, ("all of one length",)),
        (("calibrate", "acceptance"), ACCEPTANCE_HEADER + "4,2,1\n4,x,1\n", ("row 3", "accepted_tokens", "'x'")),
        (("calibrate", "acceptance"), ACCEPTANCE_HEADER + "4,2,\n", ("row 2", "references", "an empty cell")),
    ],
)
def test_calibration_logs_name_the_bad_row_and_column(tmp_path, command, text, named):
    log = tmp_path / "log.csv"
    log.write_text(text)
    extra = ("--max-tokens", "100") if command[1] == "lengths" else ()
    assert_clean_error(invoke(*command, log, *extra, "--out", tmp_path / "out.yaml"), str(log), *named)
    assert not (tmp_path / "out.yaml").exists()


NOT_TEXT = bytes(range(128, 256)) * 2  # no UTF-8 decoder reads this


def _not_text_cases(tmp_path: Path) -> dict[str, tuple[tuple, Path]]:
    """command -> (its arguments, the non-text file it must name)."""
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(NOT_TEXT)
    ok = write_scenario(tmp_path, "{kind: synthetic, prompts: 2, group_size: 2, max_tokens: 64, "
                                  "input_tokens: {dist: constant, mean: 16}, output_tokens: {dist: constant, mean: 8}}")
    report = tmp_path / "run"
    report.mkdir()
    (report / "summary.json").write_bytes(NOT_TEXT)
    table = tmp_path / "profile.csv"
    table.write_text("op,num_tokens,batch_size,context_tokens,prefill_tokens,decode_tokens,time_s,time_s_std,repeats\n"
                     "iteration,1,1,1,0,1,0.007,0.001,9\n")
    meta = tmp_path / "profile.csv.meta.json"
    meta.write_bytes(NOT_TEXT)
    kv_meta = tmp_path / "kv.meta.json"
    kv_meta.write_text("{not json")
    return {
        "scenario": (("run", bad), bad),
        "cost.file": (("run", ok, "--set", f"cost.file={bad}"), bad),
        "report": (("report", report), report / "summary.json"),
        "profile meta": (("calibrate", "cost", table), meta),
        "kv meta": (("calibrate", "kv", kv_meta, "--scenario", ok), kv_meta),
    }


@pytest.mark.parametrize("case", ["scenario", "cost.file", "report", "profile meta", "kv meta"])
def test_a_file_that_is_not_text_or_not_json_is_one_error(tmp_path, case):
    args, named = _not_text_cases(tmp_path)[case]
    assert_clean_error(invoke(*args), str(named))


def test_a_truncated_vidur_table_names_its_row(tmp_path):
    src = SHARED / "profiling" / "vidur" / "compute" / "h100" / "meta-llama" / "Llama-2-7b-hf" / "mlp.csv"
    if not src.is_file():
        pytest.skip(f"public Vidur tables not found at {src}")
    folder = tmp_path / "compute" / "h100" / "org" / "model"
    folder.mkdir(parents=True)
    lines = src.read_text().splitlines()
    (folder / "mlp.csv").write_text("\n".join(lines[:3]) + "\n" + lines[3][: len(lines[3]) // 2] + "\n")
    assert_clean_error(invoke("calibrate", "cost", folder), "mlp.csv", "row 4")
    (folder / "mlp.csv").write_text("a,b\n")
    assert_clean_error(invoke("calibrate", "cost", folder), "mlp.csv", "missing columns", "n_embd")


def test_server_logs_need_the_vllm_backend(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("INFO no step lines here\n")
    assert_clean_error(invoke("profile", "--server-logs", log, "--block-size", "16", "--out", tmp_path / "t.csv"),
                       "--server-logs", "--backend vllm")


@pytest.mark.parametrize("line", ["[1, 2]", "7", '"text"', '{"input_length": 10'])
def test_a_mooncake_line_that_is_not_an_object_names_its_line(tmp_path, line):
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"input_length": 10, "output_length": 5}\n' + line + "\n")
    sc = write_scenario(tmp_path, f"{{kind: replay, path: {trace}, format: mooncake}}")
    assert_clean_error(invoke("run", sc), f"{trace}:2", "not a JSON object")


# the Python API (notebooks): a path is a scenario; anything else is a typed error
def test_simulate_takes_a_scenario_path():
    by_path = seersim.simulate(SMALL_YAML, policy="baseline", **{"workload.prompts": 4})
    loaded = seersim.simulate(seersim.load_scenario(SMALL_YAML), policy="baseline", **{"workload.prompts": 4})
    assert by_path.summary == loaded.summary


@pytest.mark.parametrize("scenario, seed, named", [(["x"], None, "scenario: a Scenario"), (None, "a", "seed"), (None, True, "seed")])
def test_simulate_refuses_what_is_not_a_scenario_or_a_seed(scenario, seed, named):
    with pytest.raises(ScenarioError, match=named):
        seersim.simulate(scenario if scenario is not None else seersim.load_scenario(SMALL_YAML), seed=seed)


def test_a_key_given_twice_is_named_with_both_lines(tmp_path):
    sc = write_scenario(tmp_path, "{kind: synthetic, prompts: 2, max_tokens: 64, input_tokens: {dist: constant, mean: 8}, "
                                  "output_tokens: {dist: constant, mean: 8}}")
    sc.write_text(sc.read_text() + "cluster: {instances: 8}\n")  # the scenario already set cluster on line 4
    assert_clean_error(invoke("run", sc), "key 'cluster' is given twice", "first at line 4", "line 6")


def test_yaml_merge_keys_may_be_overridden(tmp_path):
    from seersim.yamlfile import read_yaml_mapping

    p = tmp_path / "m.yaml"
    p.write_text("base: &b {x: 1, y: 2}\nderived: {<<: *b, y: 3}\n")
    assert read_yaml_mapping(p, ScenarioError, "file", "", "")["derived"] == {"x": 1, "y": 3}


def test_overrides_never_edit_the_callers_values():
    """A mapping given as one override's value, then edited by a later dotted override of
    the same call, stays as the caller wrote it (it leaked between tests that shared it)."""
    lengths = {"dist": "lognormal", "mean": 900, "sigma": 1.0, "intra_group_corr": 0.8}
    sc = load_small(**{"workload.output_tokens": lengths, "workload.output_tokens.dist": "constant"})
    assert sc.workload.output_tokens.dist == "constant"
    assert lengths == {"dist": "lognormal", "mean": 900, "sigma": 1.0, "intra_group_corr": 0.8}
    assert seersim.with_overrides(sc, **{"workload.output_tokens": lengths}).workload.output_tokens.dist == "lognormal"
