"""The study commands of `seersim` (compare, regress, reproduce, sweep, plan): a thin
layer over seersim.studies; registered on the main app by seersim/cli.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from seersim.cli_common import (
    EXIT_BAD_INPUT,
    EXIT_CHECK_FAILED,
    EXIT_STALE_BASELINE,
    JobsOpt,
    JsonOpt,
    OutOpt,
    OverwriteOpt,
    SetOpt,
    cli_errors,
    echo_json,
    err,
    load,
    split_csv,
)
from seersim.progress import progress

PANEL = "Studies (many runs)"
app = typer.Typer()

PoliciesOpt = Annotated[Optional[str], typer.Option("--policies", help="comma-separated policy names")]
SeedsOpt = Annotated[int, typer.Option("--seeds", min=1, help="number of seeds (scenario seed, +1, ...)")]
GridOpt = Annotated[
    Optional[list[str]],
    typer.Option("--grid", "-g", help="dotted.key=v1,v2,... (repeatable; the same keys as --set)"),
]
ExecutorOpt = Annotated[str, typer.Option("--executor", help="local (processes) or ray")]
AddressOpt = Annotated[Optional[str], typer.Option("--address", help="Ray cluster address (default: start a local Ray)")]
ResumeOverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="discard the finished points in --out and start over (default: resume)")
]


@app.command("compare", rich_help_panel=PANEL)
def compare_cmd(
    scenario: Annotated[Path, typer.Argument(help="scenario YAML file")],
    policies: Annotated[
        Optional[str], typer.Option("--policies", help="comma-separated policies (default baseline,divided,context_aware,seer)")
    ] = None,
    seeds: SeedsOpt = 1,
    jobs: JobsOpt = 1,
    set_: SetOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Run every policy on identical work and compare makespan, throughput and tail."""
    from seersim.io import clear_results, prepare_out_dir, write_frame, write_json
    from seersim.report import save_figure
    from seersim.studies.compare import DEFAULT_POLICIES, compare, plot_comparison

    with cli_errors():
        sc = load(scenario, set_)
        names = split_csv(policies) or DEFAULT_POLICIES
        if out is not None:
            prepare_out_dir(out, overwrite)
        with progress(not json_, f"comparing on {sc.name}") as on_progress:
            cmp = compare(sc, names, seeds=seeds, jobs=jobs, progress=on_progress)
        if out is not None:
            clear_results(out)
            write_json(out / "compare.json", cmp.to_json())
            write_frame(out / "runs", cmp.runs)
            for name, fig in plot_comparison(cmp).items():
                save_figure(fig, out / name)
        if json_:
            echo_json(cmp.to_json())
            return
        _print_compare(cmp)
        if out is not None:
            typer.echo(f"results and plots written to {out}/")


def _tail_change(reduction: float, std: float | None = None) -> str:
    """The tail against the baseline's, as a signed change (± its spread over seeds when
    given); n/a where the baseline has none."""
    if reduction != reduction:  # (NaN: undefined)
        return "n/a"
    change = f"{0.0 - reduction:+.0%}"  # (0.0 - x: the baseline's own 0 prints +0%, not -0%)
    return change if std is None else f"{change} ± {std:.0%}"


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
            _tail_change(r["tail_reduction_vs_baseline"], r["tail_reduction_vs_baseline_std"] if spread else None),
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
    if spread:
        n = len(cmp.seeds)
        notes.append(
            f"±: standard deviation over the {n} seeds (how much one RL step varies); the means' standard "
            f"error is that / √{n}"
        )
    elif len(recs) > 1 and cmp.scenario.workload.kind != "replay":
        notes.append(
            "one seed is one RL step: its few longest groups set each makespan, so a speedup moves by about "
            "±0.1–0.2 between seeds on the paper scenarios (docs/reproduction.md); rank close policies with "
            "--seeds 5 or more"
        )
    if any(_tail_change(r["tail_reduction_vs_baseline"]) == "n/a" for r in recs):
        notes.append("n/a: the baseline's last 10% of requests finish together (no tail), so a change of it is undefined")
    print_table(f"{cmp.scenario.name}: {len(cmp.seeds)} seed(s), vs {cmp.baseline}", cols, rows, notes=notes)


@app.command(rich_help_panel=PANEL)
def regress(
    baseline: Annotated[Path, typer.Option("--baseline", "-b", help="stored baseline JSON")] = Path(
        "scenarios/regress-baseline.json"
    ),
    update: Annotated[bool, typer.Option("--update", help="rewrite the baseline with the current results")] = False,
    scenarios: Annotated[Optional[str], typer.Option("--scenarios", help="with --update: comma-separated scenario files")] = None,
    policies: Annotated[Optional[str], typer.Option("--policies", help="with --update --scenarios: policies")] = None,
    tolerance: Annotated[Optional[float], typer.Option("--tolerance", min=0.0, help="relative tolerance (default: the file's)")] = None,
    jobs: JobsOpt = 1,
    json_: JsonOpt = False,
) -> None:
    """Check policies against a stored baseline.

    Exit codes: 0 every metric within the tolerance; 1 a metric got worse
    (regression); 3 no regression but a metric improved beyond the tolerance
    (stale baseline: run `seersim regress --update` so its slack cannot hide
    a later regression); 2 bad input (e.g. a stored entry lacks a metric).
    """
    from seersim.studies import regress as rg

    with cli_errors():
        if update:
            scenario_files = split_csv(scenarios, "--scenarios", "scenarios/small.yaml")
            entries = rg.update(baseline, scenario_files, split_csv(policies), tolerance, jobs=jobs)
            typer.echo(f"baseline {baseline} updated: {len(entries)} entries")
            return
        if scenarios or policies:
            err("--scenarios/--policies only go with --update")
            raise typer.Exit(EXIT_BAD_INPUT)
        df = rg.check(baseline, tolerance, jobs=jobs)
    worse = df[df["status"] == rg.WORSE]
    stale = df[df["status"] == rg.STALE]
    if json_:
        echo_json({"passed": worse.empty and stale.empty, "stale": not stale.empty, "rows": df.to_dict(orient="records")})
    else:
        from seersim.tables import Column, print_table

        recs = df.to_dict(orient="records")
        cols = [Column(c, "left", whole=True) for c in ("scenario", "policy", "metric")]
        cols += [Column(c) for c in ("stored", "now", "change")] + [Column("status", "left", whole=True)]
        rows = [
            [r["scenario"], r["policy"], r["metric"], f"{r['stored']:,.2f}", f"{r['now']:,.2f}", f"{r['change']:+.2%}", r["status"]]
            for r in recs
        ]
        styles = [{rg.WORSE: "bold red", rg.STALE: "yellow"}.get(r["status"], "") for r in recs]
        print_table(f"regression check against {baseline}", cols, rows, styles=styles)
        if len(worse):
            typer.echo(f"{len(worse)} metric(s) worse than the baseline")
        elif len(stale):
            typer.echo(
                f"stale baseline: {len(stale)} metric(s) improved beyond the tolerance; "
                f"run `seersim regress --update --baseline {baseline}` to record them"
            )
        else:
            typer.echo("no regression")
    if len(worse):
        raise typer.Exit(EXIT_CHECK_FAILED)
    if len(stale):
        raise typer.Exit(EXIT_STALE_BASELINE)


@app.command(rich_help_panel=PANEL)
def reproduce(
    scenarios_dir: Annotated[Path, typer.Option("--scenarios-dir", help="folder with the paper scenarios")] = Path("scenarios"),
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="write the markdown table here")] = None,
    seeds: SeedsOpt = 10,  # reproduce.DEFAULT_SEEDS (a module-level import would load pandas for --help)
    jobs: JobsOpt = 1,
    chunks: Annotated[bool, typer.Option("--chunks/--no-chunks", help="add the 2K/8K/32K chunk-size table")] = True,
    sensitivity: Annotated[
        bool,
        typer.Option("--sensitivity", help="add Table 4 under each assumption the paper does not give, changed one at a time (6x the Table 4 runs)"),
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing --out file")] = False,
    json_: JsonOpt = False,
) -> None:
    """Reproduce the Seer paper's Table 4 ablation on the shipped paper scenarios."""
    from seersim.io import atomic_write, refuse_existing_file
    from seersim.studies.reproduce import chunk_markdown, sensitivity_markdown, to_markdown
    from seersim.studies.reproduce import reproduce as run_repro

    with cli_errors():
        if out is not None:
            refuse_existing_file(out, overwrite)
        with progress(not json_, "reproducing Table 4") as on_progress:
            rep = run_repro(scenarios_dir, seeds=seeds, jobs=jobs, progress=on_progress, chunks=chunks, sensitivity=sensitivity)
    md = to_markdown(rep.table4)
    if rep.chunks is not None:
        md += (
            "\n## Chunk size\n\nSpeedup over the baseline (and tail change) of the chunked policies with "
            "2K / 8K / 32K-token chunks (same seeds as Table 4; DESIGN §6; the paper gives no chunk size, seersim's default is 8K):\n\n"
            + chunk_markdown(rep.chunks)
        )
    if rep.sensitivity is not None:
        md += (
            "\n## Assumptions\n\nTable 4 with one assumption of the paper scenarios changed at a time (same seeds; "
            "each is marked \"assumed\" in its scenario file, the paper does not give it): how much of the gap to "
            "the paper can rest on each.\n\n" + sensitivity_markdown(rep.sensitivity)
        )
    if out is not None:
        header = (
            "# Seer paper reproduction\n\nGenerated by `seersim reproduce --out "
            f"{out} --seeds {seeds}{'' if chunks else ' --no-chunks'}{' --sensitivity' if sensitivity else ''}`. Paper: arXiv 2511.14617 v3, Table 4 (speedups are rollout-throughput ratios "
            "over the baseline; tail reduction is 1 - tail/baseline tail). Assumptions: see each scenario file.\n\n"
        )
        atomic_write(out, lambda p: p.write_text(header + md))
    if json_:
        payload = {"table4": rep.table4.to_dict(orient="records")}
        if rep.chunks is not None:
            payload["chunks"] = rep.chunks.to_dict(orient="records")
        if rep.sensitivity is not None:
            payload["sensitivity"] = rep.sensitivity.to_dict(orient="records")
        echo_json(payload)
    else:
        typer.echo(md)


@app.command("sweep", rich_help_panel=PANEL)
def sweep_cmd(
    scenario: Annotated[Path, typer.Argument(help="scenario YAML file")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder: results.parquet, one file per finished point")],
    grid: GridOpt = None,
    policies: PoliciesOpt = None,
    seeds: SeedsOpt = 1,
    jobs: JobsOpt = 1,
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
    set_: SetOpt = None,
    overwrite: ResumeOverwriteOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Run the cartesian product of --grid values × policies × seeds into one table.

    Resumable: re-run with the same arguments and it skips the points already in --out.
    """
    from seersim.studies.sweep import parse_grid, sweep

    with cli_errors():
        sc = load(scenario, set_)
        g = parse_grid(list(grid or []))
        with progress(not json_, f"sweep of {sc.name}") as on_progress:
            res = sweep(
                sc, g, split_csv(policies), seeds, jobs=jobs, executor=executor, address=address,  # type: ignore[arg-type]
                out=out, overwrite=overwrite, progress=on_progress,
            )
    table_path = next(out.glob("results.*"))
    if json_:
        echo_json({"points": res.points, "simulated": res.simulated, "resumed": res.resumed, "table": str(table_path)})
        return
    if res.resumed:
        typer.echo(f"resumed: {res.resumed} of {res.points} points were already in {out}/")
    failed = int(res.table["error"].notna().sum())
    typer.echo(f"{res.points} points ({res.simulated} simulated now{f', {failed} infeasible' if failed else ''}) -> {table_path}")
    _print_top(res.table, list(g))


def _print_top(table, keys: list[str], n: int = 10) -> None:
    from seersim.tables import Column, print_table

    ok = table[table["error"].isna()].sort_values("rl_step_s").head(n)
    names = [*keys, "policy"]
    cols = [*names, "seed", "rl_step_s", "gpu_hours", "cost_usd"]
    rows = [[f"{r[c]:,.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols] for r in ok.to_dict(orient="records")]
    print_table(
        f"fastest {len(ok)} points", [Column(c, "left", whole=True) if c in names else Column(c) for c in cols], rows
    )


@app.command("plan", rich_help_panel=PANEL)
def plan_cmd(
    scenario: Annotated[Path, typer.Argument(help="scenario YAML file")],
    target_step_s: Annotated[float, typer.Option("--target-step-s", help="RL step time to meet (rollout + training_s)")],
    grid: GridOpt = None,
    space: Annotated[Optional[Path], typer.Option("--space", help="YAML file: dotted.key: [values] (instead of --grid)")] = None,
    policies: PoliciesOpt = None,
    gpus: Annotated[Optional[str], typer.Option("--gpus", help="GPU types to try, e.g. h100-sxm,h800")] = None,
    budget_usd: Annotated[Optional[float], typer.Option("--budget-usd", min=0.0, help="most $ per RL step")] = None,
    objective: Annotated[str, typer.Option("--objective", help="cost_usd or gpu_hours (per RL step)")] = "cost_usd",
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="RL steps (seeds: scenario seed, +1, ...) each point runs")] = 1,
    stat: Annotated[str, typer.Option("--stat", help="a point's step time over its seeds: mean, median, p90 or max")] = "mean",
    jobs: JobsOpt = 1,
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
    set_: SetOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="folder: plan.json, points, pareto.png, best.yaml")] = None,
    overwrite: OverwriteOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Find the cheapest configuration whose RL step meets --target-step-s.

    Searches the grid (instances, parallelism, GPU type, chunk size, ...)
    × policies, pruning with memory, roofline and instance-count bounds.
    With --seeds N each point runs N RL steps and is judged on --stat of
    their times (mean: long-run time and cost per step; p90 or max: sized
    for the slow steps). Exit codes: 0 a configuration meets the target
    (and budget); 1 none does (the fastest found is shown); 2 bad input.
    """
    from seersim.io import clear_results, prepare_out_dir
    from seersim.studies.plan import parse_space_args, plan, write_plan

    with cli_errors():
        sc = load(scenario, set_)
        search_space = parse_space_args(list(grid or []), space, split_csv(gpus, "--gpus", "h100-sxm,a100-80gb"))
        if out is not None:
            prepare_out_dir(out, overwrite)
        with progress(not json_, f"planning {sc.name}") as on_progress:
            result = plan(
                sc, target_step_s, search_space, split_csv(policies), objective=objective,  # type: ignore[arg-type]
                budget_usd=budget_usd, seeds=seeds, stat=stat, jobs=jobs, executor=executor, address=address,  # type: ignore[arg-type]
                progress=on_progress,
            )
        if out is not None:
            clear_results(out)
            write_plan(out, result, sc.name)
    if json_:
        echo_json(result.to_json())
    else:
        _print_plan(result, out)
    if result.best is None:
        raise typer.Exit(EXIT_CHECK_FAILED)


def _print_plan(result, out: Path | None) -> None:
    from seersim.tables import Column, print_table

    typer.echo(
        f"simulated {result.evaluated} of {result.space} points; pruned: "
        + (", ".join(f"{v} by {k}" for k, v in result.pruned.items() if v) or "none")
    )
    several = result.several_seeds

    def step_s(r: dict) -> str:
        return f"{r['rl_step_s']:,.1f}" + (f" ± {r['rl_step_s_std']:,.1f}" if several else "")

    rows, styles = [], []
    for r in result.frontier.to_dict(orient="records"):
        rows.append([
            ", ".join(f"{k}={v}" for k, v in r["overrides"].items()),
            step_s(r), f"{r['gpu_hours']:,.4f}", f"${r['cost_usd']:,.4f}", f"{r['gpu_hour_usd']:g}",
            "yes" if r["rl_step_s"] <= result.target_step_s else "no",
        ])
        styles.append("" if r["rl_step_s"] <= result.target_step_s else "dim")
    cols = [Column("configuration", "left", whole=True)] + [
        Column(c) for c in ("rl_step_s", "gpu_hours", "cost_usd", "$/GPU-hour", "meets target")
    ]
    notes = [
        f"rl_step_s, gpu_hours, cost_usd: {result.describe_stat()} (each point runs the same seeds); "
        "± is the standard deviation of rl_step_s over them"
    ] if several else []
    print_table(
        f"Pareto frontier (step time vs {result.objective}) among simulated points", cols, rows, styles=styles, notes=notes
    )
    b = result.best
    if b is None:
        f = result.fastest
        typer.echo(f"nothing meets the target of {result.target_step_s:g} s" + (
            f"; the fastest found: {', '.join(f'{k}={v}' for k, v in f['overrides'].items())} at {step_s(f)} s"
            if f else "; no configuration fits in memory"
        ))
    else:
        typer.echo(
            f"best: {', '.join(f'{k}={v}' for k, v in b['overrides'].items())}: rl_step_s={step_s(b)} s "
            f"(target {result.target_step_s:g} s{', ' + result.describe_stat() if several else ''}), {b['gpu_hours']:.4f} GPU-hours, ${b['cost_usd']:.4f} per RL step "
            f"at ${b['gpu_hour_usd']:g}/GPU-hour for {b['gpu_type']} ({(b['gpu_hour_usd_source'] or 'no source given').split('. ')[0]})"
        )
    if out is not None:
        typer.echo(f"plan, Pareto plot{' and best.yaml' if b else ''} written to {out}/")
