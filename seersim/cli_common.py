"""What every `seersim` command shares: exit codes, the one-line error wrapper, common
options, scenario loading with `--set`, and progress display.

Kept apart from cli.py so command modules (e.g. seersim/studies/cli.py) can use it
without importing the app that registers them. Imports stay light: `seersim --help`
must start fast.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Callable, Iterator, Optional

import typer

from seersim.errors import SeersimError

EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_STALE_BASELINE = 3  # `regress`: metrics improved beyond the tolerance; run `seersim regress --update`
EXIT_INTERRUPTED = 130

PolicyOpt = Annotated[Optional[str], typer.Option("--policy", "-p", help="policy name (overrides policy.name)")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="random seed >= 0 (overrides the scenario's)")]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="override a scenario field: dotted.key=value (repeatable)"),
]
OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="folder for records, summary.json and plots")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the summary as one JSON object on stdout")]
JobsOpt = Annotated[int, typer.Option("--jobs", "-j", min=1, help="parallel processes (or Ray CPUs)")]


def err(msg: str) -> None:
    typer.echo(f"seersim: error: {msg}", err=True)


@contextmanager
def cli_errors() -> Iterator[None]:
    """Typed library errors become one `seersim: error: ...` line and exit 2."""
    try:
        yield
    except SeersimError as exc:
        err(str(exc))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except KeyboardInterrupt:
        err("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def load(scenario: Path, set_: list[str] | None):
    from seersim.config import load_scenario

    return load_scenario(scenario, overrides=list(set_ or []))


def split_csv(csv: str | None) -> list[str] | None:
    return [x.strip() for x in csv.split(",") if x.strip()] if csv else None


PLAIN_EVERY_S = 5.0  # off a terminal: a line per 10% of the work, and one at least this often while work finishes


@contextmanager
def progress(enabled: bool, label: str, lines: bool = False) -> Iterator[Callable[[int, int], None] | None]:
    """Yields a callback(done, total): a rich progress bar on a terminal; off a
    terminal (logs, CI), plain `label: done/total (pct)` lines on stderr when `lines`
    (long studies), else nothing."""
    if not enabled:
        yield None
        return
    if not sys.stderr.isatty():
        yield _plain_lines(label) if lines else None
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


def _plain_lines(label: str) -> Callable[[int, int], None]:
    start = time.monotonic()
    state = {"tenth": -1, "at": start}

    def update(done: int, total: int) -> None:
        now = time.monotonic()
        tenth = 10 * done // max(total, 1)
        if tenth > state["tenth"] or now - state["at"] >= PLAIN_EVERY_S or done == total:
            state["tenth"], state["at"] = tenth, now
            typer.echo(f"{label}: {done}/{total} ({done / max(total, 1):.0%}), {now - start:.1f} s", err=True)

    return update
