"""What every `seersim` command shares: exit codes, the one-line error wrapper, common
options and scenario loading with `--set` (progress display: seersim/progress.py).

Kept apart from cli.py so command modules (e.g. seersim/studies/cli.py) can use it
without importing the app that registers them. Imports stay light: `seersim --help`
must start fast.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer

from seersim.errors import BadOption, SeersimError

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
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="replace seersim's earlier results in a non-empty --out folder")
]
JobsOpt = Annotated[int, typer.Option("--jobs", "-j", min=1, help="parallel processes (or Ray CPUs)")]


def err(msg: str) -> None:
    """One `seersim: error:` line; a message with line breaks (an HTTP client's, say) is
    joined, so scripts and CI logs always get one line per error."""
    one_line = " ".join(part.strip() for part in msg.splitlines() if part.strip())
    typer.echo(f"seersim: error: {one_line}", err=True)


def echo_json(obj) -> None:
    """Print `--json` output: strict JSON, one object (`io.json_text`; imported here, not at
    start-up, as io needs pandas)."""
    from seersim.io import json_text

    typer.echo(json_text(obj))


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


def split_csv(csv: str | None, option: str = "--policies", example: str = "baseline,divided") -> list[str] | None:
    """A comma-separated option: None when not given, an error when given but empty."""
    if csv is None:
        return None
    names = [x.strip() for x in csv.split(",") if x.strip()]
    if not names:
        raise BadOption(f"{option} is empty; name at least one, e.g. {option} {example}")
    return names


def split_urls(csv: str | None) -> list[str]:
    """--url: the live servers, comma-separated (none when not given)."""
    return split_csv(csv, "--url", "http://127.0.0.1:8000,http://127.0.0.1:8001") or []


def split_logs(csv: str | None) -> list[Path] | None:
    """--server-logs: the servers' per-step logs, comma-separated (None when not given)."""
    names = split_csv(csv, "--server-logs", "server-0.log,server-1.log")
    return [Path(x) for x in names] if names is not None else None


def split_ints(csv: str | None, option: str, example: str, minimum: int = 1) -> tuple[int, ...] | None:
    """A comma-separated option of whole numbers >= `minimum`: None when not given, an
    error naming the option when given empty or with anything else."""
    items = split_csv(csv, option, example)
    if items is None:
        return None
    values = []
    for item in items:
        try:
            value: int | None = int(item)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise BadOption(f"{option}: {item!r} is not a whole number >= {minimum}; e.g. {option} {example}")
        values.append(value)
    return tuple(values)
