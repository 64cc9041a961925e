"""`seersim` command line: a thin layer over the Python API.

Library code raises typed `SeersimError`s; only this module turns them into one-line
messages and exit codes (2 = bad input, 1 = a check failed, 3 = a stale regression
baseline, 130 = interrupted; seersim/cli_common.py). The study commands (compare,
regress, reproduce, sweep, plan) live in seersim/studies/cli.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from seersim.cli_common import JsonOpt, OutOpt, PolicyOpt, SeedOpt, SetOpt, cli_errors, load, progress
from seersim.backends.cli import app as live_app
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
    json_: JsonOpt = False,
) -> None:
    """Simulate one scenario's RL rollout step(s) and print a summary."""
    from seersim.api import simulate
    from seersim.report import summary_table, write_run

    with cli_errors():
        sc = load(scenario, set_)
        with progress(not json_, f"simulating {sc.name}") as on_progress:
            result = simulate(sc, policy=policy, seed=seed, progress=on_progress)
        summary = result.summary
        if out is not None:
            write_run(out, result, f"{sc.name} — {result.policy}")
        if json_:
            typer.echo(json.dumps(summary, default=float))
            return
        from rich.console import Console

        Console().print(summary_table(summary, f"{sc.name}: policy {result.policy}, seed {result.seed}"))
        if out is not None:
            typer.echo(f"records written to {out}/")


@app.command()
def report(
    folder: Annotated[Path, typer.Argument(help="an output folder of run, compare, sweep or plan")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="HTML file (default FOLDER/report.html)")] = None,
) -> None:
    """Turn an output folder into one self-contained HTML report (tables and plots)."""
    from seersim.report_html import write_report

    with cli_errors():
        path = write_report(folder, out)
    typer.echo(f"report written to {path}")


@app.command()
def specs() -> None:
    """List the model and GPU catalogs (names usable in a scenario)."""
    from rich.console import Console
    from rich.table import Table

    from seersim.specs import GPUS, MODELS

    t = Table(title="models")
    for col in ("name", "params (B)", "active (B)", "weights (GB)", "KV/token (KB)", "attention"):
        t.add_column(col)
    for m in MODELS.values():
        t.add_row(
            m.name,
            f"{m.total_params / 1e9:.1f}",
            f"{m.active_params / 1e9:.1f}",
            f"{m.weight_bytes / 1e9:.0f}",
            f"{m.kv_bytes_per_token / 1e3:.1f}",
            m.attention,
        )
    g = Table(title="GPUs")
    for col in ("name", "memory (GB)", "HBM (TB/s)", "bf16 (TFLOPS)", "NVLink (GB/s/dir)", "$/GPU-hour"):
        g.add_column(col)
    for s in GPUS.values():
        g.add_row(
            s.name,
            f"{s.memory_bytes / 1e9:.0f}",
            f"{s.hbm_bandwidth_bytes_per_s / 1e12:.2f}",
            f"{s.peak_flops / 1e12:.0f}",
            f"{s.nvlink_bandwidth_bytes_per_s / 1e9:.0f}",
            f"{s.gpu_hour_usd:.2f}",
        )
    c = Console()
    c.print(t)
    c.print(g)


@app.command()
def policies() -> None:
    """List the scheduling policies."""
    from seersim.policies import REGISTRY

    for name, cls in REGISTRY.items():
        doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        typer.echo(f"{name:16s} {doc}")


def _register_subapps() -> None:
    from seersim.calibrate.cli import app as calibrate_app, profile_cmd

    app.add_typer(calibrate_app, name="calibrate")
    app.command("profile")(profile_cmd)


_register_subapps()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
