"""Printing tables that stay readable wherever they land.

Piped into a file or a CI log (not a terminal) a table is printed plain: aligned
columns, nothing cut or wrapped whatever its width, so that `grep` and diff work.
On a terminal it is a rich table whose name columns are never cut (the numbers
wrap instead when the terminal is narrow).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal, Sequence, TextIO


@dataclass(frozen=True)
class Column:
    header: str
    justify: Literal["left", "right"] = "right"
    whole: bool = False  # a name column: never cut or wrapped


def print_table(
    title: str,
    columns: Sequence[Column],
    rows: Sequence[Sequence[str]],
    *,
    notes: Sequence[str] = (),
    styles: Sequence[str] | None = None,
    file: TextIO | None = None,
) -> None:
    """Print `rows` (already formatted strings) under `columns`; `notes` follow the table."""
    file = file or sys.stdout
    if file.isatty():
        _print_rich(title, columns, rows, notes, styles, file)
    else:
        file.write(plain_table(title, columns, rows, notes))


def plain_table(title: str, columns: Sequence[Column], rows: Sequence[Sequence[str]], notes: Sequence[str] = ()) -> str:
    widths = [max([len(c.header)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.ljust(w) if col.justify == "left" else cell.rjust(w) for cell, col, w in zip(cells, columns, widths)
        ]
        return "  ".join(parts).rstrip()

    out = [title] if title else []
    out += [line([c.header for c in columns]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    out += list(notes)
    return "\n".join(out) + "\n"


def _print_rich(title, columns, rows, notes, styles, file) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, header_style="bold")
    for i, c in enumerate(columns):
        longest = max([len(c.header)] + [len(r[i]) for r in rows])
        if c.whole:
            table.add_column(c.header, justify=c.justify, no_wrap=True, min_width=longest)
        else:
            table.add_column(c.header, justify=c.justify, overflow="fold")
    for k, r in enumerate(rows):
        table.add_row(*r, style=(styles[k] if styles else None) or None)
    console = Console(file=file)
    console.print(table)
    for note in notes:
        console.print(note, highlight=False, markup=False)
