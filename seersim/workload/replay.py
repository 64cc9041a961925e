"""Trace readers: the project's own CSV and public serving traces.

Own CSV: columns group_id, input_tokens, output_tokens (one row per response).
Serving traces (Mooncake jsonl, Azure LLM csv, Vidur-processed csv) have no groups:
`group_size` consecutive rows form a group, all taking the first row's prompt length
(the shared prompt is what prefix caching keys on).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from seersim.config import ReplayWorkload
from seersim.errors import TraceError
from seersim.fields import MAX_COUNT, MAX_TOKENS
from seersim.io import int_column
from seersim.workload.request import Workload

# format -> (input column, output column)
_COLUMNS = {
    "csv": ("input_tokens", "output_tokens"),
    "mooncake": ("input_length", "output_length"),
    "azure": ("ContextTokens", "GeneratedTokens"),
    "vidur": ("num_prefill_tokens", "num_decode_tokens"),
}


def _read_table(path: Path, fmt: str) -> pd.DataFrame:
    if not path.is_file():
        raise TraceError(f"trace '{path}' not found; check workload.path (relative paths start at the scenario's folder)")
    try:
        if fmt == "mooncake":
            rows = []
            with path.open() as fh:
                for lineno, line in enumerate(fh, 1):
                    if line.strip():
                        try:
                            row = json.loads(line)
                        except json.JSONDecodeError:
                            row = None
                        if not isinstance(row, dict):
                            raise TraceError(f"{path}:{lineno}: not a JSON object (truncated trace?)")
                        rows.append(row)
            return pd.DataFrame(rows)
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise TraceError(f"{path}: unreadable {fmt} trace ({str(exc).splitlines()[0]})") from None


def read_trace(path: Path, cfg: ReplayWorkload) -> Workload:
    df = _read_table(path, cfg.format)
    in_col, out_col = _COLUMNS[cfg.format]
    need = [in_col, out_col] + (["group_id"] if cfg.format == "csv" else [])
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise TraceError(f"{path}: missing column(s) {', '.join(missing)}; a {cfg.format} trace needs {', '.join(need)}")
    if cfg.limit:
        df = df.iloc[: cfg.limit]
    if df.empty:
        raise TraceError(f"{path}: the trace has no rows")
    jsonl = cfg.format == "mooncake"
    inputs = int_column(df, in_col, path, 1, MAX_TOKENS, "tokens", jsonl)
    outputs = int_column(df, out_col, path, 1, MAX_TOKENS, "tokens", jsonl)
    if cfg.format == "csv":
        raw_groups = int_column(df, "group_id", path, 0, MAX_COUNT, "(a group number)")
        # renumber groups 0..k-1 in order of first appearance; keep rows of a group together
        _, first_idx, inverse = np.unique(raw_groups, return_index=True, return_inverse=True)
        order_of_group = np.argsort(np.argsort(first_idx))
        group_id = order_of_group[inverse]
        order = np.argsort(group_id, kind="stable")
        group_id, inputs, outputs = group_id[order], inputs[order], outputs[order]
        first = np.r_[0, np.flatnonzero(np.diff(group_id)) + 1]
        inputs = np.repeat(inputs[first], np.diff(np.r_[first, len(group_id)]))
    else:
        group_id = np.arange(len(df)) // cfg.group_size
        first = np.r_[0, np.flatnonzero(np.diff(group_id)) + 1]
        inputs = np.repeat(inputs[first], np.diff(np.r_[first, len(group_id)]))
    max_tokens = cfg.max_tokens or int(outputs.max())
    outputs = np.minimum(outputs, max_tokens)
    return Workload.from_arrays(group_id, inputs, outputs, max_tokens)
