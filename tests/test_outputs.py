"""Outputs a team can read (issue 15): file permissions, --out that never silently
overwrites or mixes results, tables that keep names whole, per-step results with a
labelled mean, progress off a terminal, readable plots, clear skip reasons."""

from __future__ import annotations

import io
import json
import os
import re
import tomllib
from pathlib import Path

import pytest

import seersim
from conftest import REPO_ROOT, SMALL_YAML, shared_skip_reason
from seersim import progress as progress_mod
from seersim.tables import Column, print_table
from test_cli_errors import assert_clean_error, invoke

SMALL = str(SMALL_YAML)
FAST = ("--set", "workload.prompts=8")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


# --------------------------------------------------------------------------- files
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        r = invoke("run", SMALL, *FAST, "--out", tmp_path / "o")
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.output
    files = list((tmp_path / "o").iterdir())
    assert len(files) == 5
    for f in files:
        assert f.stat().st_mode & 0o777 == mode, (f.name, oct(f.stat().st_mode))


def test_out_refuses_a_folder_with_results_unless_overwrite(tmp_path):
    out = tmp_path / "o"
    assert invoke("run", SMALL, *FAST, "--out", out).exit_code == 0
    before = (out / "summary.json").read_bytes()
    line = assert_clean_error(invoke("run", SMALL, *FAST, "--seed", "3", "--out", out), str(out), "--overwrite")
    assert "summary.json" in line
    assert (out / "summary.json").read_bytes() == before  # untouched
    # compare into the run's folder: refused too, so the two never mix silently
    assert_clean_error(invoke("compare", SMALL, *FAST, "--policies", "baseline", "--out", out), "--overwrite")
    # with --overwrite the run's files go, the comparison's come, a user's own file stays
    (out / "notes.txt").write_text("mine")
    r = invoke("compare", SMALL, *FAST, "--policies", "baseline,divided", "--out", out, "--overwrite")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == [
        "compare.json", "finish_cdf.png", "notes.txt", "runs.parquet", "throughput.png", "timelines.png",
    ]


def test_reproduce_refuses_an_existing_file(tmp_path):
    f = tmp_path / "repro.md"
    f.write_text("earlier results")
    assert_clean_error(invoke("reproduce", "--out", f), str(f), "--overwrite")
    assert f.read_text() == "earlier results"


def test_parquet_engine_is_a_core_dependency():
    """The README's first command (`pip install -e .`) must give the .parquet files it promises."""
    meta = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert any(d.startswith("pyarrow") for d in meta["project"]["dependencies"])
    assert "requests.parquet" in (REPO_ROOT / "README.md").read_text()


# --------------------------------------------------------------------------- tables
COMPARE_POLICIES = "baseline,context_aware,partial_rollout"


def test_compare_table_keeps_names_whole_when_piped():
    r = invoke("compare", SMALL, *FAST, "--policies", COMPARE_POLICIES)
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "…" not in out
    for word in ("baseline", "context_aware", "partial_rollout", "makespan", "throughput", "tail vs baseline"):
        assert word in out
    assert max(len(line) for line in out.splitlines()) > 80  # not cut at a terminal's width


def test_compare_table_gives_the_tail_change_with_its_spread_over_seeds():
    args = ("compare", SMALL, *FAST, "--policies", "baseline,divided", "--seeds", "2")
    rows = {line.split()[0]: line for line in invoke(*args).stdout.splitlines() if line.startswith(("baseline ", "divided "))}
    data = json.loads(invoke(*args, "--json").stdout)
    divided = next(r for r in data["results"] if r["policy"] == "divided")
    change = f"{-divided['tail_reduction_vs_baseline']:+.0%} ± {divided['tail_reduction_vs_baseline_std']:.0%}"
    assert divided["tail_reduction_vs_baseline_std"] > 0 and change in rows["divided"]
    assert "+0% ± 0%" in rows["baseline"]  # the baseline against itself (was "-0%")
    assert "±: standard deviation over the 2 seeds" in invoke(*args).stdout
    assert "one seed is one RL step" not in invoke(*args).stdout


def test_compare_on_one_seed_says_how_far_one_step_is_from_the_mean():
    one = invoke("compare", SMALL, *FAST, "--policies", "baseline,divided").stdout
    assert "one seed is one RL step" in one and "--seeds 5 or more" in one
    # a replayed trace is the same work whatever the seed: nothing to say
    replay = invoke("compare", str(REPO_ROOT / "scenarios" / "small-replay.yaml"), "--policies", "baseline,divided").stdout
    assert "divided" in replay and "one seed is one RL step" not in replay


def test_rich_table_on_a_narrow_terminal_keeps_names_whole(monkeypatch):
    monkeypatch.setenv("COLUMNS", "50")
    cols = [Column("policy", "left", whole=True)] + [Column(h) for h in ("makespan", "throughput", "speedup")]
    rows = [["partial_rollout", "1,234.5 s", "12,345 tok/s", "1.88x (+88%)"], ["context_aware", "1 s", "2 tok/s", "1x"]]
    buf = _Tty()
    print_table("t", cols, rows, file=buf)
    text = re.sub(r"\x1b\[[0-9;]*m", "", buf.getvalue())
    assert "partial_rollout" in text and "context_aware" in text and "…" not in text


def test_regress_and_policies_are_not_cut():
    r = invoke("policies")
    assert r.exit_code == 0
    for line in r.stdout.splitlines()[2:]:
        name, doc = line.split(None, 1)
        from seersim.policies import REGISTRY

        assert name in REGISTRY and doc.strip() and "…" not in doc
    r = invoke("regress")
    assert "…" not in r.stdout and "policy" in r.stdout and "status" in r.stdout


# --------------------------------------------------------------------------- steps
def test_multi_step_shows_each_step_and_labels_the_mean():
    r = invoke("run", SMALL, *FAST, "-p", "partial_rollout", "--set", "steps=3")
    assert r.exit_code == 0, r.output
    header = next(line for line in r.stdout.splitlines() if line.startswith("metric"))
    assert re.search(r"step 1\s+step 2\s+step 3\s+mean of 3 steps", header), header
    j = json.loads(invoke("run", SMALL, *FAST, "-p", "partial_rollout", "--set", "steps=3", "--json").stdout)
    assert j["aggregate"] == "mean of 3 steps" and j["steps"] == 3 and "step" not in j
    assert [s["step"] for s in j["per_step"]] == [0, 1, 2]
    assert all(isinstance(s["requests"], int) for s in j["per_step"])
    assert j["requests"] == pytest.approx(sum(s["requests"] for s in j["per_step"]) / 3)
    one = json.loads(invoke("run", SMALL, *FAST, "--json").stdout)
    assert "per_step" not in one and "aggregate" not in one and one["step"] == 0


def test_timeline_png_says_which_step(tmp_path, monkeypatch):
    from seersim import report

    titles = []
    real = report.save_figure

    def capture(fig, path):
        titles.append(fig.axes[0].get_title())
        real(fig, path)

    monkeypatch.setattr(report, "save_figure", capture)
    sc = seersim.load_scenario(SMALL_YAML, **{"workload.prompts": 8, "steps": 2})
    res = seersim.simulate(sc, policy="partial_rollout", seed=5)
    report.write_run(tmp_path, res)
    assert titles == ["small: partial_rollout, seed 5, 4 instances, step 2 of 2"]


def test_compare_says_how_many_requests_finished_in_a_partial_step():
    r = invoke("compare", SMALL, *FAST, "--policies", "baseline,partial_rollout")
    assert r.exit_code == 0, r.output
    j = json.loads(invoke("compare", SMALL, *FAST, "--policies", "baseline,partial_rollout", "--json").stdout)
    pr = next(x for x in j["results"] if x["policy"] == "partial_rollout")
    assert pr["finished_requests"] < pr["requests"]
    row = next(line for line in r.stdout.splitlines() if line.startswith("partial_rollout"))
    assert f"{pr['finished_requests']:,.0f} of {pr['requests']:,.0f} *" in row
    assert "carries the rest into the next step" in r.stdout


# --------------------------------------------------------------------------- progress
def test_plain_progress_lines_off_a_terminal(monkeypatch):
    monkeypatch.setattr(progress_mod, "PLAIN_QUIET_S", 0.0)
    buf = io.StringIO()
    with progress_mod.progress(True, "simulating x", stream=buf) as update:
        for done in range(0, 101):
            update(done, 100)
        for done in range(0, 51):  # the next step starts again at 0
            update(done, 50)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 20 and all(line.startswith("seersim: simulating x: ") for line in lines)
    assert "100% (100/100)" in lines[9] and " 10% (5/50)" in lines[10]


def test_short_runs_print_no_progress_lines():
    buf = io.StringIO()
    with progress_mod.progress(True, "x", stream=buf) as update:
        update(100, 100)
    assert buf.getvalue() == ""


def test_terminal_progress_has_an_eta():
    buf = _Tty()
    with progress_mod.progress(True, "simulating x", stream=buf) as update:
        update(50, 100)
    assert "eta" in buf.getvalue()


# --------------------------------------------------------------------------- plots
@pytest.fixture(scope="module")
def comparison():
    from seersim.studies.compare import compare

    sc = seersim.load_scenario(SMALL_YAML, **{"workload.prompts": 16, "cluster.instances": 16})
    return compare(sc, ["baseline", "divided", "partial_rollout"], seeds=2)


def test_timeline_plot_has_bands_slowest_instance_waiting_and_legend(comparison):
    from seersim.report import plot_timeline, run_title

    res = comparison.examples["baseline"]
    step = res.steps[0]
    fig = plot_timeline(step.timeline, int(step.instances["kv_blocks"].iloc[0]), run_title(res, 0))
    assert [ax.get_ylabel() for ax in fig.axes] == ["running requests", "waiting requests", "KV used (fraction)"]
    assert fig.axes[0].get_title() == "small: baseline, seed 0, 16 instances"
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["min-max", "10-90th pct", "median of 16 instances", "slowest instance (last to go idle)"]
    # 2 lines per panel (median, slowest), not one per instance
    assert all(len(ax.get_lines()) == 2 for ax in fig.axes)


def test_compare_plots_are_labelled(comparison):
    from seersim.studies.compare import plot_comparison

    figs = plot_comparison(comparison)
    cdf = figs["finish_cdf.png"].axes[0]
    assert "finish times" in cdf.get_title()
    assert any("90%" in t.get_text() for t in cdf.texts)
    bar = figs["throughput.png"].axes[0]
    t = comparison.table.set_index("policy")
    for text in bar.texts:
        speed = float(text.get_text().split("x")[0])
        pol = t.index[(t["speedup_vs_baseline"].round(2) == speed)][0]
        low = t.loc[pol, "throughput_tokens_per_s"] - t.loc[pol, "throughput_tokens_per_s_std"]
        assert text.get_position()[1] < low  # below the error bar's lower whisker
    assert any("finished" in x.get_text() for x in bar.texts)  # partial_rollout's count
    assert "seed 0" in figs["timelines.png"]._suptitle.get_text()


# --------------------------------------------------------------------------- skips
def test_shared_skip_reason_says_what_and_that_it_is_expected():
    reason = shared_skip_reason(Path("/x/shared/traces"), "public serving traces")
    assert "public serving traces" in reason and "/x/shared/traces" in reason
    assert "CI" in reason and "expected" in reason


def test_overwrite_keeps_earlier_results_when_the_new_run_fails(tmp_path):
    out = tmp_path / "o"
    assert invoke("run", SMALL, *FAST, "--out", out).exit_code == 0
    before = sorted(p.name for p in out.iterdir())
    assert_clean_error(
        invoke("run", SMALL, *FAST, "--set", "limits.max_requests=1", "--out", out, "--overwrite"), "limits.max_requests"
    )
    assert sorted(p.name for p in out.iterdir()) == before


def test_plan_out_refuses_results_unless_overwrite_and_never_mixes(tmp_path):
    out = tmp_path / "o"
    assert invoke("run", SMALL, *FAST, "--out", out).exit_code == 0
    plan = ("plan", SMALL, *FAST, "--target-step-s", "1e6", "--grid", "cluster.instances=4", "--policies", "baseline")
    assert_clean_error(invoke(*plan, "--out", out), str(out), "--overwrite")
    r = invoke(*plan, "--out", out, "--overwrite")
    assert r.exit_code == 0, r.output
    names = {p.name for p in out.iterdir()}
    assert "plan.json" in names and not names & {"summary.json", "requests.parquet", "timeline.png"}


def _strict(text: str):
    """json.loads that refuses NaN and Infinity, as jq and JavaScript do."""
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_json_output_and_files_are_strict_json_with_null_for_undefined(tmp_path):
    """With 2 groups of 2 the baseline's tail (its last 10% of requests) is one request
    long, so a tail reduction against it is undefined: null, not NaN."""
    sets = ["--set", "workload.prompts=2", "--set", "workload.group_size=2", "--policies", "baseline,divided"]
    res = invoke("compare", SMALL_YAML, *sets, "--json")
    assert res.exit_code == 0, res.output
    rows = _strict(res.stdout)["results"]
    assert any(r["tail_reduction_vs_baseline"] is None for r in rows), rows
    out = tmp_path / "cmp"
    assert invoke("compare", SMALL_YAML, *sets, "--out", out).exit_code == 0
    for f in out.glob("*.json"):
        _strict(f.read_text())
    assert invoke("report", out).exit_code == 0


def test_compare_table_says_na_for_an_undefined_tail_change():
    res = invoke("compare", SMALL_YAML, "--set", "workload.prompts=2", "--set", "workload.group_size=2",
                 "--policies", "baseline,divided")
    assert res.exit_code == 0, res.output
    assert "nan" not in res.stdout.lower() and "n/a" in res.stdout and "no tail" in res.stdout
