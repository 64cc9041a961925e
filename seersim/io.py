"""Result files: atomic writes that honour the umask, and `--out` folders that never
silently mix or overwrite earlier results."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from seersim.errors import OutputError, TraceError, plain

# What seersim's commands write into an --out folder (run: records, summary and
# timeline; compare: its table, runs and plots; plan: its table, frontier and best
# scenario; `seersim report`: the HTML). `--overwrite` clears all of them, so one
# command's files never sit beside another's results. (A sweep folder is resumable
# and keeps its own rules: seersim/studies/sweep.py.)
RESULT_GLOBS = (
    "requests.*", "instances.*", "timeline.*", "summary.json",
    "compare.json", "runs.*", "timelines.png", "finish_cdf.png", "throughput.png",
    "plan.json", "points.*", "pareto.png", "best.yaml", "report.html",
)


def _umask() -> int:
    """The process's umask: read from /proc where Linux shows it (setting it, the only
    portable way to read it, races with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, then rename over `path`.

    mkstemp creates files 0600; the result gets the mode any other new file would get
    (0666 minus the umask), so teammates and CI artifact readers can open it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write '{path}': {exc.strerror or exc}; choose another --out folder") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def prepare_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse an --out folder that already holds files unless `overwrite` (checked before
    a command runs, so a refusal costs nothing)."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out '{out}' is an existing file; name a folder")
    if not out.is_dir():
        return
    present = sorted(p.name for p in out.iterdir())
    if not present:
        return
    if not overwrite:
        shown = ", ".join(present[:4]) + (f" and {len(present) - 4} more" if len(present) > 4 else "")
        raise OutputError(
            f"--out '{out}' already holds {shown}; pass --overwrite to replace seersim's results there, "
            "or choose a new folder"
        )


def clear_results(out: Path) -> None:
    """Remove the results any seersim command wrote to `out` (other files stay): called
    once new results exist, so a failed run leaves the earlier ones in place."""
    for pattern in RESULT_GLOBS:
        for old in out.glob(pattern):
            if old.is_file():
                old.unlink()


def refuse_existing_file(path: Path, overwrite: bool) -> None:
    """An --out that names a file: refuse to replace an existing one unless `overwrite`."""
    if path.is_dir():
        raise OutputError(f"--out '{path}' is a folder; name a file")
    if path.exists() and not overwrite:
        raise OutputError(f"--out '{path}' already exists; pass --overwrite to replace it, or name a new file")


def json_text(obj: Any, indent: int | None = None) -> str:
    """Strict JSON (RFC 8259) of seersim's results: an undefined metric (NaN, ±inf: a
    tail reduction against a baseline without a tail) is null, as jq, JavaScript and
    strict parsers require, and numpy scalars are plain numbers."""
    return json.dumps(_finite(obj), indent=indent, default=json_default, allow_nan=False)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda p: p.write_text(json_text(obj, indent=2) + "\n"))


def json_default(o: Any):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_frame(path_stem: Path, df: pd.DataFrame) -> Path:
    """Parquet (pyarrow is a core dependency); CSV where it is missing. Returns the path written."""
    try:
        import pyarrow  # noqa: F401

        path = path_stem.with_suffix(".parquet")
        atomic_write(path, lambda p: df.to_parquet(p, index=False))
    except ImportError:
        path = path_stem.with_suffix(".csv")
        atomic_write(path, lambda p: df.to_csv(p, index=False))
    return path


def int_column(
    df: pd.DataFrame, col: str, path: str | Path, minimum: int, maximum: int, unit: str, records: bool = False
) -> np.ndarray:
    """A column of integers in [minimum, maximum], as int64; an error names the first bad
    row (CSV: its line number, the header being line 1; jsonl: the record's number) and
    shows the value as written (an empty cell is what a truncated file leaves)."""
    values = pd.to_numeric(df[col], errors="coerce")
    bad = values.isna() | (values < minimum) | (values > maximum) | (values != np.floor(values))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        where = f"record {row + 1}" if records else f"row {row + 2}"
        raw = df[col].iloc[row]
        raise TraceError(
            f"{path}: {where}, column '{col}' must be an integer in [{minimum}, {maximum:,}]{' ' + unit if unit else ''}, "
            f"got {'an empty cell' if pd.isna(raw) else plain(raw)} (truncated or corrupt trace?)"
        )
    return values.to_numpy(dtype=np.int64)


def read_csv_table(
    path: str | Path, kind: str, columns: list[str], hint: str, integers: dict[str, tuple[int, int, str]] | None = None
) -> pd.DataFrame:
    """A measurement CSV (rollout log, profiling table, verify-step log) that must have
    `columns` and at least one row; a missing file, an unreadable one, a missing column
    or an empty table is one TraceError naming the file, and `hint` says what the table
    holds. `integers`: column -> (minimum, maximum, unit) of the columns that hold
    integers, checked row by row (`int_column`) and returned as int64."""
    p = Path(path)
    if not p.is_file():
        raise TraceError(f"{kind} '{p}' not found")
    try:
        d = pd.read_csv(p)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise TraceError(f"{p}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    missing = [c for c in columns if c not in d.columns]
    if missing:
        raise TraceError(f"{p}: missing columns {missing}; {hint}")
    if d.empty:
        raise TraceError(f"{p}: no rows; {hint}")
    for col, (minimum, maximum, unit) in (integers or {}).items():
        if col in d.columns:
            d[col] = int_column(d, col, p, minimum, maximum, unit)
    return d
