"""The profiling table schema `seersim-profile/1` (documented in traces/README.md).

CSV, one row per measured point; times are medians in seconds. Provenance (GPU,
driver, library versions, date, model, tp, dtype, command) lives in a sidecar
`<file>.meta.json`. An optional `tp` column overrides the meta's tp per row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from seersim.errors import TraceError
from seersim.io import read_csv_table

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
# Per-layer operators `seersim profile` times, and `iteration` for one whole engine step.
OPS = (
    "qkv_proj", "attn_out_proj", "q_a_proj", "q_b_proj", "q_proj", "kv_a_proj", "kv_b_proj",
    "mlp_up_gate", "mlp_down", "moe_experts", "attn_prefill", "attn_decode", "lm_head",
    "all_reduce", "layernorm", "add_rmsnorm", "rope", "mlp_act", "add", "embedding", "iteration",
)


@dataclass
class ProfileTable:
    rows: pd.DataFrame
    meta: dict = field(default_factory=dict)
    path: str = ""

    @property
    def is_iteration(self) -> bool:
        return bool((self.rows["op"] == "iteration").all())


def meta_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(p.name + ".meta.json")


def read_profile_table(path: str | Path) -> ProfileTable:
    """Read a `seersim-profile/1` CSV and its sidecar; errors name the file and the fix."""
    p = Path(path)
    rows = read_csv_table(p, "profiling table", COLUMNS, f"a {SCHEMA} table has {COLUMNS} (see traces/README.md)")
    if rows.empty:
        raise TraceError(f"{p}: no rows")
    if (rows["time_s"] <= 0).any() or rows["time_s"].isna().any():
        raise TraceError(f"{p}: time_s must be a positive number of seconds in every row")
    meta: dict = {}
    mp = meta_path(p)
    if mp.is_file():
        try:
            meta = json.loads(mp.read_text())
        except json.JSONDecodeError as exc:
            raise TraceError(f"{mp}: malformed JSON ({exc})") from None
        if meta.get("schema", SCHEMA) != SCHEMA:
            raise TraceError(f"{mp}: schema {meta.get('schema')!r}, expected {SCHEMA!r}")
    return ProfileTable(rows, meta, str(p))


def write_profile_table(rows: pd.DataFrame, path: str | Path, meta: dict) -> None:
    """Write the table and its `.meta.json` atomically."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    extra = [c for c in rows.columns if c not in COLUMNS]
    tmp = p.with_name(p.name + ".tmp")
    rows[COLUMNS + extra].to_csv(tmp, index=False)
    tmp.replace(p)
    mp = meta_path(p)
    tmp_meta = mp.with_name(mp.name + ".tmp")
    tmp_meta.write_text(json.dumps({"schema": SCHEMA, **meta}, indent=2, sort_keys=True))
    tmp_meta.replace(mp)
