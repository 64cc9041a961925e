"""`seersim` command line: a thin layer over the Python API.

Library code raises typed `SeersimError`s; only this module turns them into one-line
messages and exit codes (2 = bad input, 1 = a check failed, 3 = a stale regression
baseline, 130 = interrupted; seersim/cli_common.py). The study commands (compare,
regress, reproduce, sweep, plan) live in seersim/studies/cli.py.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from seersim.backends.cli import app as live_app
from seersim.cli_common import JsonOpt, OutOpt, OverwriteOpt, PolicyOpt, SeedOpt, SetOpt, cli_errors, echo_json, load
from seersim.studies.cli import app as studies_app

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Simulate the rollout phase of synchronous RL training of LLMs (Seer-style scheduling).",
    pretty_exceptions_enable=False,
)
app.add_typer(studies_app)  # compare, regress, reproduce, sweep, plan
app.add_typer(live_app)  # serve-local, validate (live vLLM servers)


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
    from seersim.progress import progress
    from seersim.report import print_summary, write_run

    with cli_errors():
        sc = load(scenario, set_)
        if out is not None:
            prepare_out_dir(out, overwrite)
        with progress(not json_, f"simulating {sc.name}") as on_progress:
            result = simulate(sc, policy=policy, seed=seed, progress=on_progress)
        if out is not None:
            clear_results(out)
        written = write_run(out, result) if out is not None else []
        if json_:
            echo_json(result.to_json())
            return
        print_summary(result, f"{sc.name}: policy {result.policy}, seed {result.seed}")
        if out is not None:
            typer.echo(f"written to {out}/: {', '.join(p.name for p in written)}")


@app.command()
def report(
    folder: Annotated[Path, typer.Argument(help="an output folder of run, compare, sweep or plan")],
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="HTML file (default FOLDER/report.html, replaced on each call)")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing --out file")] = False,
) -> None:
    """Turn an output folder into one self-contained HTML report (tables and plots)."""
    from seersim.io import refuse_existing_file
    from seersim.report_html import write_report

    with cli_errors():
        if out is not None:
            refuse_existing_file(out, overwrite)
        path = write_report(folder, out)
    typer.echo(f"report written to {path}")


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
             f"{m.kv_bytes_per_token / 1e3:.1f}", m.attention_layout]
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


def _register_subapps() -> None:
    from seersim.calibrate.cli import app as calibrate_app, profile_cmd

    app.add_typer(calibrate_app, name="calibrate")
    app.command("profile")(profile_cmd)


_register_subapps()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
