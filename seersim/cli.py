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

from seersim.errors import SeersimError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Simulate the rollout phase of synchronous RL training of LLMs (Seer-style scheduling).",
    pretty_exceptions_enable=False,
)

EXIT_BAD_INPUT = 2
EXIT_CHECK_FAILED = 1

PolicyOpt = Annotated[Optional[str], typer.Option("--policy", "-p", help="policy name (overrides policy.name)")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="random seed (overrides the scenario's)")]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="override a scenario field: dotted.key=value (repeatable)"),
]
OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="folder for records, summary.json and plots")]
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


@contextmanager
def _progress(enabled: bool, label: str):
    """A rich progress bar on stderr, only for a TTY; yields a callback(done, total)."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)
        state = {"last": 0}

        def update(done: int, total: int) -> None:
            if done - state["last"] >= max(1, total // 200) or done == total:
                state["last"] = done
                bar.update(task, completed=done, total=total)

        yield update


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
    from seersim.config import load_scenario
    from seersim.report import summary_table, write_run

    with _cli_errors():
        sc = load_scenario(scenario, overrides=list(set_ or []))
        with _progress(not json_, f"simulating {sc.name}") as progress:
            result = simulate(sc, policy=policy, seed=seed, progress=progress)
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
    for col in ("name", "memory (GB)", "HBM (TB/s)", "bf16 (TFLOPS)", "NVLink (GB/s/dir)"):
        g.add_column(col)
    for s in GPUS.values():
        g.add_row(
            s.name,
            f"{s.memory_bytes / 1e9:.0f}",
            f"{s.hbm_bandwidth_bytes_per_s / 1e12:.2f}",
            f"{s.peak_flops / 1e12:.0f}",
            f"{s.nvlink_bandwidth_bytes_per_s / 1e9:.0f}",
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
