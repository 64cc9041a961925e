"""`seersim` command line: a thin layer over the Python API.

Library code raises typed `SeersimError`s; only this module turns them into one-line
messages and exit codes (2 = bad input, 1 = a check failed, 130 = interrupted).
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from seersim.errors import BadOption, SeersimError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Simulate the rollout phase of synchronous RL training of LLMs (Seer-style scheduling).",
    pretty_exceptions_enable=False,
)

EXIT_BAD_INPUT = 2
EXIT_CHECK_FAILED = 1

PolicyOpt = Annotated[Optional[str], typer.Option("--policy", "-p", help="policy name (overrides policy.name)")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="random seed >= 0 (overrides the scenario's)")]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="override a scenario field: dotted.key=value (repeatable)"),
]
OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="folder for records, summary.json and plots")]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="replace seersim's earlier results in a non-empty --out folder")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the summary as one JSON object on stdout")]


def _err(msg: str) -> None:
    typer.echo(f"seersim: error: {msg}", err=True)


@contextmanager
def _cli_errors():
    try:
        yield
    except SeersimError as exc:
        _err(str(exc))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except KeyboardInterrupt:
        _err("interrupted")
        raise typer.Exit(130) from None


def _load(scenario: Path, set_: list[str] | None):
    from seersim.config import load_scenario

    return load_scenario(scenario, overrides=list(set_ or []))


def _progress(enabled: bool, label: str):
    from seersim.progress import progress

    return progress(enabled, label)


@app.command()
def run(
    scenario: Annotated[Path, typer.Argument(help="scenario YAML file")],
    policy: PolicyOpt = None,
    seed: SeedOpt = None,
    set_: SetOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Simulate one scenario's RL rollout step(s) and print a summary (per step when
    there are several, with their mean)."""
    from seersim.api import simulate
    from seersim.io import clear_results, prepare_out_dir
    from seersim.report import print_summary, write_run

    with _cli_errors():
        sc = _load(scenario, set_)
        if out is not None:
            prepare_out_dir(out, overwrite)
        with _progress(not json_, f"simulating {sc.name}") as progress:
            result = simulate(sc, policy=policy, seed=seed, progress=progress)
        if out is not None:
            clear_results(out)
        written = write_run(out, result) if out is not None else []
        if json_:
            typer.echo(json.dumps(result.to_json(), default=float))
            return
        print_summary(result, f"{sc.name}: policy {result.policy}, seed {result.seed}")
        if out is not None:
            typer.echo(f"written to {out}/: {', '.join(p.name for p in written)}")


def _split(csv: str | None, option: str = "--policies") -> list[str] | None:
    """A comma-separated option; None when not given, an error when given but empty."""
    if csv is None:
        return None
    names = [x.strip() for x in csv.split(",") if x.strip()]
    if not names:
        raise BadOption(f"{option} is empty; name at least one, e.g. {option} baseline,divided")
    return names


@app.command("compare")
def compare_cmd(
    scenario: Annotated[Path, typer.Argument(help="scenario YAML file")],
    policies: Annotated[
        Optional[str], typer.Option("--policies", help="comma-separated policies (default baseline,divided,context_aware,seer)")
    ] = None,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="number of seeds (scenario seed, +1, ...)")] = 1,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="parallel processes")] = 1,
    set_: SetOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Run every policy on identical work and compare makespan, throughput and tail."""
    from seersim.compare import DEFAULT_POLICIES, compare, plot_comparison
    from seersim.io import clear_results, prepare_out_dir
    from seersim.report import save_figure, write_frame, write_json

    with _cli_errors():
        sc = _load(scenario, set_)
        names = _split(policies) or DEFAULT_POLICIES
        if out is not None:
            prepare_out_dir(out, overwrite)
        with _progress(not json_, f"comparing on {sc.name}") as progress:
            cmp = compare(sc, names, seeds=seeds, jobs=jobs, progress=progress)
        if out is not None:
            clear_results(out)
            write_json(out / "compare.json", cmp.to_json())
            write_frame(out / "runs", cmp.runs)
            for name, fig in plot_comparison(cmp).items():
                save_figure(fig, out / name)
        if json_:
            typer.echo(json.dumps(cmp.to_json(), default=float))
            return
        _print_compare(cmp)
        if out is not None:
            typer.echo(f"results and plots written to {out}/")


def _print_compare(cmp) -> None:
    from seersim.tables import Column, print_table

    spread = len(cmp.seeds) > 1
    recs = cmp.table.to_dict(orient="records")
    partial = any(r["finished_requests"] < r["requests"] for r in recs)
    heads = ["makespan", "throughput", "tail", "speedup", "tail vs baseline", "preemptions", "migrations"]
    cols = [Column("policy", "left", whole=True)] + [Column(h) for h in heads]
    if partial:
        cols.append(Column("finished in step"))

    def pm(v, sd, fmt):
        return fmt.format(v) + (f" ± {fmt.format(sd)}" if spread else "")

    rows = []
    for r in recs:
        row = [
            r["policy"],
            pm(r["makespan_s"], r["makespan_s_std"], "{:,.1f}") + " s",
            pm(r["throughput_tokens_per_s"], r["throughput_tokens_per_s_std"], "{:,.0f}") + " tok/s",
            pm(r["tail_s"], r["tail_s_std"], "{:,.1f}") + " s",
            pm(r["speedup_vs_baseline"], r["speedup_vs_baseline_std"], "{:.2f}") + f"x ({r['speedup_vs_baseline'] - 1:+.0%})",
            f"{-r['tail_reduction_vs_baseline']:+.0%}",
            f"{r.get('preemptions', 0):,.0f}",
            f"{r.get('migrations', 0):,.0f}",
        ]
        if partial:
            done = f"{r['finished_requests']:,.0f} of {r['requests']:,.0f}"
            row.append(done + (" *" if r["finished_requests"] < r["requests"] else ""))
        rows.append(row)
    notes = (
        ["* the step ended before all its issued requests finished (partial rollout carries the rest into the "
         "next step): its tail is measured over the requests that finished, its throughput over every token "
         "generated in the step"]
        if partial else []
    )
    print_table(f"{cmp.scenario.name}: {len(cmp.seeds)} seed(s), vs {cmp.baseline}", cols, rows, notes=notes)


@app.command()
def regress(
    baseline: Annotated[Path, typer.Option("--baseline", "-b", help="stored baseline JSON")] = Path(
        "scenarios/regress-baseline.json"
    ),
    update: Annotated[bool, typer.Option("--update", help="rewrite the baseline with the current results")] = False,
    scenarios: Annotated[Optional[str], typer.Option("--scenarios", help="with --update: comma-separated scenario files")] = None,
    policies: Annotated[Optional[str], typer.Option("--policies", help="with --update --scenarios: policies")] = None,
    tolerance: Annotated[Optional[float], typer.Option("--tolerance", min=0.0, help="relative tolerance (default: the file's)")] = None,
    json_: JsonOpt = False,
) -> None:
    """Check policies against a stored baseline; exit 1 when a metric got worse."""
    from seersim import regress as rg

    with _cli_errors():
        if update:
            entries = rg.update(baseline, _split(scenarios, "--scenarios"), _split(policies), tolerance)
            typer.echo(f"baseline {baseline} updated: {len(entries)} entries")
            return
        if scenarios or policies:
            raise_bad = "--scenarios/--policies only go with --update"
            _err(raise_bad)
            raise typer.Exit(EXIT_BAD_INPUT)
        df = rg.check(baseline, tolerance)
    worse = df[df["status"] == "WORSE"]
    if json_:
        typer.echo(json.dumps({"passed": worse.empty, "rows": df.to_dict(orient="records")}, default=float))
    else:
        from seersim.tables import Column, print_table

        recs = df.to_dict(orient="records")
        cols = [Column(c, "left", whole=True) for c in ("scenario", "policy", "metric")]
        cols += [Column(c) for c in ("stored", "now", "change")] + [Column("status", "left", whole=True)]
        rows = [
            [r["scenario"], r["policy"], r["metric"], f"{r['stored']:,.2f}", f"{r['now']:,.2f}", f"{r['change']:+.2%}", r["status"]]
            for r in recs
        ]
        styles = ["bold red" if r["status"] == "WORSE" else "" for r in recs]
        print_table(f"regression check against {baseline}", cols, rows, styles=styles)
        typer.echo(f"{len(worse)} metric(s) worse than the baseline" if len(worse) else "no regression")
    if len(worse):
        raise typer.Exit(EXIT_CHECK_FAILED)


@app.command()
def reproduce(
    scenarios_dir: Annotated[Path, typer.Option("--scenarios-dir", help="folder with the paper scenarios")] = Path("scenarios"),
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="write the markdown table here")] = None,
    seeds: Annotated[int, typer.Option("--seeds", min=1)] = 1,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1)] = 1,
    chunks: Annotated[bool, typer.Option("--chunks/--no-chunks", help="add the 2K/8K/32K chunk-size table")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing --out file")] = False,
    json_: JsonOpt = False,
) -> None:
    """Reproduce the Seer paper's Table 4 ablation on the shipped paper scenarios."""
    from seersim.io import atomic_write, refuse_existing_file
    from seersim.reproduce import chunk_markdown, chunk_sensitivity, to_markdown
    from seersim.reproduce import reproduce as run_repro

    with _cli_errors():
        if out is not None:
            refuse_existing_file(out, overwrite)
        with _progress(not json_, "reproducing Table 4") as progress:
            df = run_repro(scenarios_dir, seeds=seeds, jobs=jobs, progress=progress)
        chunk_df = chunk_sensitivity(scenarios_dir, jobs=jobs) if chunks else None
    md = to_markdown(df)
    if chunk_df is not None:
        md += (
            "\n## Chunk size\n\nSpeedup over the baseline (and tail change) of the chunked policies with "
            "2K / 8K / 32K-token chunks (DESIGN §6; the paper gives no chunk size, seersim's default is 8K):\n\n"
            + chunk_markdown(chunk_df)
        )
    if out is not None:
        header = (
            "# Seer paper reproduction\n\nGenerated by `seersim reproduce --out "
            f"{out}` (seeds: {seeds}). Paper: arXiv 2511.14617 v3, Table 4 (speedups are rollout-throughput ratios "
            "over the baseline; tail reduction is 1 - tail/baseline tail). Assumptions: see each scenario file.\n\n"
        )
        atomic_write(out, lambda p: p.write_text(header + md))
    if json_:
        payload = {"table4": df.to_dict(orient="records")}
        if chunk_df is not None:
            payload["chunks"] = chunk_df.to_dict(orient="records")
        typer.echo(json.dumps(payload, default=float))
    else:
        typer.echo(md)


@app.command()
def specs() -> None:
    """List the model and GPU catalogs (names usable in a scenario)."""
    from seersim.specs import GPUS, MODELS
    from seersim.tables import Column, print_table

    heads = ("params (B)", "active (B)", "weights (GB)", "KV/token (KB)", "attention")
    print_table(
        "models",
        [Column("name", "left", whole=True)] + [Column(h) for h in heads],
        [
            [m.name, f"{m.total_params / 1e9:.1f}", f"{m.active_params / 1e9:.1f}", f"{m.weight_bytes / 1e9:.0f}",
             f"{m.kv_bytes_per_token / 1e3:.1f}", m.attention]
            for m in MODELS.values()
        ],
    )
    heads = ("memory (GB)", "HBM (TB/s)", "bf16 (TFLOPS)", "NVLink (GB/s/dir)")
    print_table(
        "GPUs",
        [Column("name", "left", whole=True)] + [Column(h) for h in heads],
        [
            [g.name, f"{g.memory_bytes / 1e9:.0f}", f"{g.hbm_bandwidth_bytes_per_s / 1e12:.2f}",
             f"{g.peak_flops / 1e12:.0f}", f"{g.nvlink_bandwidth_bytes_per_s / 1e9:.0f}"]
            for g in GPUS.values()
        ],
    )


@app.command()
def policies() -> None:
    """List the scheduling policies."""
    from seersim.policies import REGISTRY
    from seersim.tables import Column, print_table

    rows = []
    for name, cls in REGISTRY.items():
        doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        rows.append([name, doc])
    print_table("", [Column("policy", "left", whole=True), Column("what it does", "left")], rows)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
