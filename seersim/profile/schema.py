"""The profiling table schema `seersim-profile/1` (documented in traces/README.md) and
its atomic writer, with the standard library only: `torch_runner.py` writes tables on a
GPU machine that has torch but not seersim's other dependencies.

CSV, one row per measured point; times are medians in seconds. Provenance (GPU,
driver, library versions, date, model, tp, dtype, command) lives in a sidecar
`<file>.meta.json`. An optional `tp` column overrides the meta's tp per row.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

SCHEMA = "seersim-profile/1"
COLUMNS = [
    "op",
    "num_tokens",
    "batch_size",
    "context_tokens",
    "prefill_tokens",
    "decode_tokens",
    "time_s",
    "time_s_std",
    "repeats",
]


def meta_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(p.name + ".meta.json")


def write_profile_table(rows: Iterable[Mapping], path: str | Path, meta: dict) -> None:
    """Write the table (rows as mappings, or a DataFrame) and its `.meta.json`, each
    atomically: the schema's columns first, then any extra ones in order of appearance."""
    records = rows.to_dict("records") if hasattr(rows, "to_dict") else [dict(r) for r in rows]
    extra: list[str] = []
    for r in records:
        extra += [c for c in r if c not in COLUMNS and c not in extra]
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS + extra, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
    tmp.replace(p)
    mp = meta_path(p)
    tmp_meta = mp.with_name(mp.name + ".tmp")
    tmp_meta.write_text(json.dumps({"schema": SCHEMA, **meta}, indent=2, sort_keys=True))
    tmp_meta.replace(mp)
