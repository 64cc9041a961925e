"""Progress of long commands on stderr: a bar with an ETA on a terminal, plain
lines elsewhere (CI logs must not stay silent for minutes)."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TextIO

Callback = Callable[[int, int], None]

PLAIN_EVERY_PERCENT = 10  # a CI log gets at most ~10 lines per task
PLAIN_QUIET_S = 5.0  # a run shorter than this prints no progress lines


@contextmanager
def progress(enabled: bool, label: str, stream: TextIO | None = None) -> Iterator[Callback | None]:
    """Yields a callback(done, total), or None when disabled. A task whose `done`
    falls back to 0 (the next RL step) starts a new round of lines."""
    stream = stream or sys.stderr
    if not enabled:
        yield None
    elif stream.isatty():
        with _bar(label, stream) as update:
            yield update
    else:
        yield _plain(label, stream)


def _plain(label: str, stream: TextIO) -> Callback:
    state = {"next": PLAIN_EVERY_PERCENT, "start": time.monotonic(), "last": 0}

    def update(done: int, total: int) -> None:
        if done < state["last"]:  # a new round (next step)
            state["next"] = PLAIN_EVERY_PERCENT
        state["last"] = done
        pct = 100 * done / total if total else 100
        elapsed = time.monotonic() - state["start"]
        if pct >= state["next"] and elapsed >= PLAIN_QUIET_S:
            state["next"] = (int(pct) // PLAIN_EVERY_PERCENT + 1) * PLAIN_EVERY_PERCENT
            stream.write(f"seersim: {label}: {pct:3.0f}% ({done:,}/{total:,}) after {elapsed:,.0f} s\n")
            stream.flush()

    return update


@contextmanager
def _bar(label: str, stream: TextIO) -> Iterator[Callback]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        "eta",
        TimeRemainingColumn(),
        console=Console(file=stream),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)
        state = {"last": 0}

        def update(done: int, total: int) -> None:
            if done < state["last"]:  # a new round (next step)
                bar.reset(task, total=total)
                state["last"] = 0
            if done - state["last"] >= max(1, total // 200) or done == total:
                state["last"] = done
                bar.update(task, completed=done, total=total)

        yield update
