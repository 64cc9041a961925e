"""vLLM's per-step log (`--enable-logging-iteration-details`) → engine steps → a
`seersim-profile/1` table of `iteration` rows.

Each engine step logs one line (vLLM 0.32, `v1/metrics/loggers.py`)::

    (APIServer pid=..) INFO 11-26 19:00:14.661 [loggers.py:199] Engine 000: Iteration(2):
    0 context requests, 0 context tokens, 16 generation requests, 16 generation tokens,
    iteration elapsed time: 9.55 ms, CPU KV cache usage: 91.4%

"Context" requests are those with no output token yet (new requests, prefill chunks);
"generation" requests have output, so a request resumed after a preemption recomputes
its prompt and output as *generation tokens*: generation tokens beyond one per
generation request are recomputed tokens (no speculative decoding here).

What a step costs. The logged elapsed time covers only the forward pass (`EngineCore.
step` times `future.result()`); scheduling, output processing and the API server's
work — on the same core for a pinned CPU server — come on top (measured on the tiny
model: 5.7 ms forward of a 6.9 ms step period at 4 sequences, 7.1 of 8.9 ms at 16). A
makespan is made of step *periods*, so a step's time here is the time between its log
line and the previous one; that needs millisecond timestamps (vLLM's default format
has whole seconds: `seersim serve-local` servers log with milliseconds), and only
periods in a busy stretch count: the step after one that left nothing running (KV
usage 0) follows an idle wait, not a step.

Context. The log has no attended-context count; the KV usage after the step gives the
blocks the running sequences hold (vLLM's usage is a fraction of the usable blocks:
all but its null block), and each sequence's last block is on average half
full: context ≈ blocks × block_size − sequences × block_size / 2 (never below the
step's tokens). Shared prompt blocks count once, so a batch of siblings reads more
than this; profiling runs send distinct prompts.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import pandas as pd

from seersim.errors import TraceError

STEP_LINE = re.compile(
    r"(?P<stamp>\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) .*?Iteration\((?P<iteration>\d+)\): "
    r"(?P<ctx_reqs>\d+) context requests, (?P<ctx_tokens>\d+) context tokens, "
    r"(?P<gen_reqs>\d+) generation requests, (?P<gen_tokens>\d+) generation tokens, "
    r"iteration elapsed time: (?P<elapsed_ms>[\d.]+) ms(?P<dummy> \(dummy\))?, .*?KV cache usage: (?P<kv_pct>[\d.]+)%"
)
KV_SIZE_LINE = re.compile(r"KV cache size: (?P<tokens>[\d,]+) tokens")

#: columns of `read_step_log`: one row per engine step
STEP_COLUMNS = (
    "iteration", "time_s", "context_requests", "context_tokens", "generation_requests",
    "generation_tokens", "forward_s", "kv_usage", "period_s",
)


def _stamp_s(stamp: str, year: int) -> float:
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in stamp else "%Y-%m-%d %H:%M:%S"
    return dt.datetime.strptime(f"{year}-{stamp}", fmt).timestamp()


def read_step_log(path: str | Path, offset_bytes: int = 0, year: int = 2000) -> pd.DataFrame:
    """The engine steps a vLLM log records from byte `offset_bytes` on (one row each,
    columns STEP_COLUMNS). `time_s`: the log timestamp (seconds; the year is only a
    placeholder, timestamps have none); `period_s`: seconds since the previous step's
    line within a busy stretch, NaN otherwise (first step, after an idle server, a gap
    in the iteration numbers, or timestamps without milliseconds)."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            fh.seek(offset_bytes)
            text = fh.read().decode("utf-8", errors="replace")
    except OSError as exc:
        raise TraceError(f"vLLM server log '{p}': {exc.strerror or exc}") from None
    rows = []
    for m in STEP_LINE.finditer(text):
        if m["dummy"]:
            continue
        rows.append((
            int(m["iteration"]), _stamp_s(m["stamp"], year), int(m["ctx_reqs"]), int(m["ctx_tokens"]),
            int(m["gen_reqs"]), int(m["gen_tokens"]), float(m["elapsed_ms"]) / 1e3, float(m["kv_pct"]) / 100.0,
            "." in m["stamp"],
        ))
    if not rows:
        return pd.DataFrame(columns=list(STEP_COLUMNS))
    d = pd.DataFrame(rows, columns=[*STEP_COLUMNS[:-1], "_ms"])
    it, t = d["iteration"].to_numpy(), d["time_s"].to_numpy()
    busy = np.r_[False, (np.diff(it) == 1) & (d["kv_usage"].to_numpy()[:-1] > 0)]
    busy &= d["_ms"].to_numpy() & np.r_[False, d["_ms"].to_numpy()[:-1]]
    d["period_s"] = np.where(busy, np.r_[np.nan, np.diff(t)], np.nan)
    return d.drop(columns="_ms")


def usable_kv_tokens(logged_tokens: int, block_size: int) -> int:
    """The KV a server can allocate: its logged size less vLLM V1's null block (the
    first block, never allocated; vllm/v1/core/block_pool.py)."""
    return logged_tokens - block_size


def kv_capacity_tokens(path: str | Path) -> int | None:
    """The KV size the server logged at start ("CPU/GPU KV cache size: N tokens", the
    null block included: `usable_kv_tokens`)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        raise TraceError(f"vLLM server log '{path}': {exc.strerror or exc}") from None
    m = KV_SIZE_LINE.search(text)
    return int(m["tokens"].replace(",", "")) if m else None


def step_composition(steps: pd.DataFrame, block_size: int, kv_tokens: int) -> pd.DataFrame:
    """The project's view of each step: tokens, sequences, prefill (new prompts and
    recomputation) and decode tokens, estimated attended context. `kv_tokens`: the
    server's usable KV (`usable_kv_tokens`)."""
    gen_reqs = steps["generation_requests"].to_numpy(dtype=np.int64)
    tokens = (steps["context_tokens"] + steps["generation_tokens"]).to_numpy(dtype=np.int64)
    batch = (steps["context_requests"] + steps["generation_requests"]).to_numpy(dtype=np.int64)
    blocks = np.rint(steps["kv_usage"].to_numpy(dtype=np.float64) * (kv_tokens // block_size))
    context = np.maximum(blocks * block_size - batch * (block_size // 2), tokens).astype(np.int64)
    return pd.DataFrame(
        {
            "num_tokens": tokens,
            "batch_size": batch,
            "context_tokens": context,
            "prefill_tokens": tokens - gen_reqs,
            "decode_tokens": gen_reqs,
            "recomputed_tokens": steps["generation_tokens"].to_numpy(dtype=np.int64) - gen_reqs,
        },
        index=steps.index,
    )


def iteration_rows(steps: pd.DataFrame, block_size: int, kv_tokens: int) -> pd.DataFrame:
    """Profiling-table rows from logged steps: the steps with a period, grouped by
    composition; `time_s` is the *mean* period of a group (periods are read at
    millisecond resolution: a median would round), `repeats` its step count,
    `forward_s` the mean logged forward time."""
    comp = step_composition(steps, block_size, kv_tokens)
    comp["time_s"] = steps["period_s"]
    comp["forward_s"] = steps["forward_s"]
    comp = comp[comp["time_s"].notna() & (comp["num_tokens"] > 0)]
    if comp.empty:
        return pd.DataFrame()
    keys = ["num_tokens", "batch_size", "context_tokens", "prefill_tokens", "decode_tokens"]
    g = comp.groupby(keys, sort=True)
    rows = g.agg(time_s=("time_s", "mean"), time_s_std=("time_s", "std"), repeats=("time_s", "size"),
                 forward_s=("forward_s", "mean")).reset_index()
    rows["time_s_std"] = rows["time_s_std"].fillna(0.0)
    # a step logged in the same millisecond as the previous one has period 0: its
    # group's mean stays positive unless the group is that one step
    rows = rows[rows["time_s"] > 0]
    rows.insert(0, "op", "iteration")
    return rows.reset_index(drop=True)


def step_summary(steps: pd.DataFrame, block_size: int, kv_tokens: int) -> dict:
    """Totals of a window of steps (one live run on one server): what the simulator's
    per-instance records count, for comparing the two."""
    comp = step_composition(steps, block_size, kv_tokens)
    period = steps["period_s"]
    return {
        "steps": int(len(steps)),
        "prefill_tokens": int(comp["prefill_tokens"].sum()),  # recomputation included, as the simulator counts
        "recomputed_tokens": int(comp["recomputed_tokens"].sum()),
        "decode_tokens": int(comp["decode_tokens"].sum()),
        "forward_s": float(steps["forward_s"].sum()),
        "busy_s": float(period.sum()),  # the steps with a period (busy stretches)
        "mean_period_s": float(period.mean()) if period.notna().any() else float("nan"),
        "mean_batch": float(comp["batch_size"].mean()) if len(comp) else 0.0,
    }


def pool_rows(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Profiling rows of several servers or passes as one table: a point measured more
    than once gets the mean (and standard deviation) over all its measurements; a
    `forward_s` column (logged rows) is pooled alike."""
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame()
    d = pd.concat(frames, ignore_index=True)
    keys = ["op", "num_tokens", "batch_size", "context_tokens", "prefill_tokens", "decode_tokens"]
    means = ["time_s"] + (["forward_s"] if "forward_s" in d.columns else [])
    n_each = d["repeats"]
    d["_sq"] = d["time_s_std"] ** 2 * (n_each - 1) + d["time_s"] ** 2 * n_each  # Σ time² of the row's measurements
    for c in means:
        d[c] = d[c] * n_each  # Σ time
    g = d.groupby(keys, sort=True)[[*means, "_sq", "repeats"]].sum().reset_index()
    n = g["repeats"]
    for c in means:
        g[c] = g[c] / n
    var = (g["_sq"] - n * g["time_s"] ** 2) / (n - 1).where(n > 1)
    g["time_s_std"] = np.sqrt(var.clip(lower=0)).fillna(0.0)
    return g[keys + ["time_s", "time_s_std", "repeats"] + means[1:]]


def profile_from_logs(paths: list[Path], block_size: int, offsets: list[int] | None = None) -> pd.DataFrame:
    """Profiling rows of whole server logs (or from byte `offsets` on), pooled; each
    log's KV capacity is read from its start-up line."""
    frames = []
    for i, p in enumerate(paths):
        kv = kv_capacity_tokens(p)
        if kv is None:
            raise TraceError(f"vLLM server log '{p}' has no 'KV cache size: N tokens' line: give the whole log, from the server's start")
        steps = read_step_log(p, offsets[i] if offsets else 0)
        frames.append(iteration_rows(steps, block_size, usable_kv_tokens(kv, block_size)))
    return pool_rows(frames)
