"""Reading `seersim-profile/1` tables (the schema and the writer: `schema.py`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from seersim.errors import TraceError
from seersim.io import read_csv_table
from seersim.profile.schema import COLUMNS, SCHEMA, meta_path


@dataclass
class ProfileTable:
    rows: pd.DataFrame
    meta: dict = field(default_factory=dict)
    path: str = ""

    @property
    def is_iteration(self) -> bool:
        return bool((self.rows["op"] == "iteration").all())


def read_profile_table(path: str | Path) -> ProfileTable:
    """Read a `seersim-profile/1` CSV and its sidecar; errors name the file and the fix."""
    p = Path(path)
    rows = read_csv_table(p, "profiling table", COLUMNS, f"a {SCHEMA} table has {COLUMNS} (see traces/README.md)")
    if (rows["time_s"] <= 0).any() or rows["time_s"].isna().any():
        raise TraceError(f"{p}: time_s must be a positive number of seconds in every row")
    meta: dict = {}
    mp = meta_path(p)
    if mp.is_file():
        try:
            meta = json.loads(mp.read_text())
        except ValueError as exc:  # malformed JSON, or not text at all
            raise TraceError(f"{mp}: malformed JSON ({exc})") from None
        if meta.get("schema", SCHEMA) != SCHEMA:
            raise TraceError(f"{mp}: schema {meta.get('schema')!r}, expected {SCHEMA!r}")
    return ProfileTable(rows, meta, str(p))
