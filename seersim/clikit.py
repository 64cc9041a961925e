"""What every `seersim` command shares: the one-line error and the exit codes.

Library code raises typed `SeersimError`s; commands run inside `cli_errors()`, which
turns them into one `seersim: error: ...` line and exit 2 (130 when interrupted).
Sub-apps (calibrate/, studies/, backends/) import this module, never `seersim.cli`,
so the command tree has no import cycle.
"""

from __future__ import annotations

from contextlib import contextmanager

import typer

from seersim.errors import SeersimError

EXIT_BAD_INPUT = 2
EXIT_CHECK_FAILED = 1
EXIT_INTERRUPTED = 130


def err(msg: str) -> None:
    typer.echo(f"seersim: error: {msg}", err=True)


@contextmanager
def cli_errors():
    try:
        yield
    except SeersimError as exc:
        err(str(exc))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except KeyboardInterrupt:
        err("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None
