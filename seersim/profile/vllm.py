"""Live profiling of vLLM servers: a grid of batch sizes × context lengths → a
`seersim-profile/1` table of `iteration` rows that `seersim calibrate cost` fits.

Every server runs the same grid at once, as they do during a validation run. For each
point, `batch` concurrent requests with fresh random prompts of `context` tokens
generate forced tokens; prefill points send one request generating one token. Two
ways to time it:

- from the servers' per-step logs (`logs`, one per server, written with
  `--enable-logging-iteration-details` and millisecond timestamps, as `seersim
  serve-local` servers are): every engine step of the run becomes a measurement of its
  composition (`profile/steplog.py`); a row is one composition's mean step period.
  This is the accurate way: real engine steps, including the mixed and
  partly-batched steps that arrivals make;
- from the client alone (any OpenAI-compatible vLLM server, only its URL needed):
  each point runs twice, generating `decode_lo` and then `decode_hi` tokens; the
  difference of the wall times over `decode_hi − decode_lo` is one decode step at that
  batch, with the context at the midpoint; prefill rows time one request. Client times
  include HTTP and the API server; rows pool all servers and repeats (median).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import platform
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pathlib import Path

from seersim.backends.vllm import PROMPT_TOKEN_RANGE, SAMPLING, ServerInfo, probe_server
from seersim.errors import BackendError
from seersim.profile.steplog import iteration_rows, pool_rows, read_step_log


@dataclass(frozen=True)
class ProfileGrid:
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16)
    context_tokens: tuple[int, ...] = (128, 512, 1024, 2048)
    # 16 and 80 forced tokens: long enough that the difference spans 64 steps (noise
    # averages out), short enough that one grid point takes seconds on a CPU core
    decode_lo: int = 16
    decode_hi: int = 80
    prefill_tokens: tuple[int, ...] = (128, 512, 1024, 2048)
    repeats: int = 3


def feasible(info: ServerInfo, batch: int, tokens_per_seq: int) -> bool:
    """The batch fits the server at once: max length and KV blocks (no preemption)."""
    blocks = -(-tokens_per_seq // info.block_size) * batch
    return tokens_per_seq <= (info.max_model_len or tokens_per_seq) and blocks <= info.kv_blocks


async def _timed_batch(client, info: ServerInfo, prompts: list[list[int]], max_tokens: int) -> float:
    body = {"model": info.model, "max_tokens": max_tokens, "min_tokens": max_tokens, "ignore_eos": True, **SAMPLING}
    t0 = time.monotonic()
    answers = await asyncio.gather(*(client.post(info.url + "/v1/completions", json={**body, "prompt": p}) for p in prompts))
    elapsed = time.monotonic() - t0
    for r in answers:
        if r.status_code != 200:
            raise BackendError(f"profiling request to {info.url} failed: HTTP {r.status_code}: {r.text[:200]}")
    return elapsed


async def _profile(servers: list[ServerInfo], grid: ProfileGrid, seed: int, differencing: bool = True) -> list[dict]:
    """Run the grid; with `differencing`, return the client-timed rows (else the steps
    are read from the servers' logs and the lower-token runs are skipped)."""
    import httpx

    rng = np.random.default_rng(seed)

    def prompts(n: int, length: int) -> list[list[int]]:
        # fresh ids every time: no prefix-cache hits between points or repeats
        return [rng.integers(*PROMPT_TOKEN_RANGE, size=length).tolist() for _ in range(n)]

    async def on_all(batch: int, length: int, max_tokens: int) -> list[float]:
        return list(await asyncio.gather(*(_timed_batch(client, s, prompts(batch, length), max_tokens) for s in servers)))

    rows: list[dict] = []
    async with httpx.AsyncClient(timeout=600.0) as client:
        await on_all(1, 16, 4)  # warm-up: first requests pay one-off costs
        for length in grid.prefill_tokens:
            if not all(feasible(s, 1, length + 1) for s in servers):
                continue
            times = [t for _ in range(grid.repeats) for t in await on_all(1, length, 1)]
            if differencing:
                rows.append(_row(1, length, length, 0, length, times))
        span = grid.decode_hi - grid.decode_lo
        for batch in grid.batch_sizes:
            for length in grid.context_tokens:
                if not all(feasible(s, batch, length + grid.decode_hi) for s in servers):
                    continue
                steps = []
                for _ in range(grid.repeats):
                    lo = await on_all(batch, length, grid.decode_lo) if differencing else []
                    hi = await on_all(batch, length, grid.decode_hi)
                    steps += [(h - l) / span for h, l in zip(hi, lo)]
                if not differencing:
                    continue  # the logged steps are the measurements
                mid = length + (grid.decode_lo + grid.decode_hi) / 2
                rows.append(_row(batch, batch, int(round(batch * mid)), batch, 0, steps))
    return rows


def _row(batch: int, num_tokens: int, context: int, decode: int, prefill: int, times: list[float]) -> dict:
    t = np.asarray(times)
    return {
        "op": "iteration",
        "num_tokens": num_tokens,
        "batch_size": batch,
        "context_tokens": context,
        "prefill_tokens": prefill,
        "decode_tokens": decode,
        "time_s": float(np.median(t)),
        "time_s_std": float(t.std(ddof=1)) if len(t) > 1 else 0.0,
        "repeats": len(t),
    }


def profile_vllm(
    urls: list[str],
    grid: ProfileGrid = ProfileGrid(),
    seed: int = 0,
    gpu: str = "vllm-server",
    model: str | None = None,
    logs: list[Path] | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Run the grid on every server at once; returns (iteration rows, provenance meta).
    `logs`: the servers' per-step logs (one per URL, same order): rows are then the
    logged engine steps of this run, else client-timed. `gpu` labels the hardware for
    the calibration (a catalog or inline GPU name); `model` names the model the fit
    prices (default: the servers' model id)."""
    if not urls:
        raise BackendError("--url: give at least one vLLM server URL")
    if logs is not None and len(logs) != len(urls):
        raise BackendError(f"--server-logs: give one log per server URL ({len(urls)} URLs, {len(logs)} logs)")
    servers = [probe_server(u.rstrip("/")) for u in urls]
    t0 = time.monotonic()
    offsets = [_size(p) for p in logs] if logs else []
    rows = asyncio.run(_profile(servers, grid, seed, differencing=not logs))
    if logs:
        rows = _logged_rows(servers, logs, offsets)
        source = "vLLM per-step logs (--enable-logging-iteration-details), mean step periods (seersim/profile/steplog.py)"
    else:
        rows = pd.DataFrame(rows)
        source = "live vLLM servers, client wall-clock differencing (seersim/profile/vllm.py)"
    if rows.empty:
        raise BackendError(
            "no grid point fits the servers' KV cache / max_model_len; give smaller --batch-sizes or --contexts"
            if not logs else f"the server logs {[str(p) for p in logs]} have no timed engine steps: start the servers with "
            "--enable-logging-iteration-details and millisecond log timestamps (seersim serve-local does)"
        )
    meta = {
        "source": source,
        "servers": [s.url for s in servers],
        "server_logs": [str(p) for p in logs] if logs else None,
        "server_version": _version(servers[0].url),
        "gpu": gpu,
        # an iteration fit prices only this deployment: scenarios of this model accept it
        "model": model or servers[0].model,
        "block_size_tokens": servers[0].block_size,
        "kv_capacity_tokens": [s.kv_blocks * s.block_size for s in servers],
        "host": platform.processor() or platform.machine(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "grid": {k: list(v) if isinstance(v, tuple) else v for k, v in grid.__dict__.items()},
        "seed": seed,
        "elapsed_s": round(time.monotonic() - t0, 1),
    }
    return rows, meta


def _size(path: Path) -> int:
    try:
        return Path(path).stat().st_size
    except OSError as exc:
        raise BackendError(f"--server-logs: cannot read '{path}' ({exc.strerror or exc})") from None


#: the API server logs a step when it handles its output, a moment after the answer
#: may have left: the logs are read once they stop growing for this long
LOG_SETTLE_S = 0.5


def settle_logs(logs: list[Path], timeout_s: float = 10.0) -> None:
    """Wait until the logs stop growing (the last steps' lines are written)."""
    sizes, deadline = None, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = [_size(p) for p in logs]
        if now == sizes:
            return
        sizes = now
        time.sleep(LOG_SETTLE_S)


def _logged_rows(servers: list[ServerInfo], logs: list[Path], offsets: list[int]) -> pd.DataFrame:
    settle_logs(logs)
    return pool_rows([
        iteration_rows(read_step_log(p, off), s.block_size, s.kv_blocks * s.block_size)
        for s, p, off in zip(servers, logs, offsets)
    ])


def _version(url: str) -> str:
    import httpx

    try:
        return str(httpx.get(url + "/version", timeout=5.0).json().get("version", "unknown"))
    except (httpx.HTTPError, ValueError):
        return "unknown"
