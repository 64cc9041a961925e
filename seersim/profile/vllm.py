"""Live profiling of vLLM servers: a grid of batch sizes × context lengths → a
`seersim-profile/1` table of `iteration` rows that `seersim calibrate cost` fits.

Method (any OpenAI-compatible vLLM server, only its URL needed): for each point,
`batch` concurrent requests with fresh random prompts of `context` tokens generate
`decode_lo` and then `decode_hi` forced tokens; the difference of the two wall times
divided by `decode_hi − decode_lo` is one decode iteration at that batch, with the
context at the midpoint. Prefill rows time one request generating one token. Times
are taken as a client sees them, so they include what the makespan of a live run
includes and an engine log leaves out (the API server's work per step, HTTP).
Every server runs the same grid at once, as they do during a validation run; rows
pool all servers and repeats (median, standard deviation).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import platform
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from seersim.backends.vllm import PROMPT_TOKEN_RANGE, ServerInfo, probe_server
from seersim.errors import BackendError


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
    body = {"model": info.model, "max_tokens": max_tokens, "min_tokens": max_tokens, "ignore_eos": True, "temperature": 0.0}
    t0 = time.monotonic()
    answers = await asyncio.gather(*(client.post(info.url + "/v1/completions", json={**body, "prompt": p}) for p in prompts))
    elapsed = time.monotonic() - t0
    for r in answers:
        if r.status_code != 200:
            raise BackendError(f"profiling request to {info.url} failed: HTTP {r.status_code}: {r.text[:200]}")
    return elapsed


async def _profile(servers: list[ServerInfo], grid: ProfileGrid, seed: int) -> list[dict]:
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
            rows.append(_row(1, length, length, 0, length, times))
        span = grid.decode_hi - grid.decode_lo
        for batch in grid.batch_sizes:
            for length in grid.context_tokens:
                if not all(feasible(s, batch, length + grid.decode_hi) for s in servers):
                    continue
                steps = []
                for _ in range(grid.repeats):
                    lo = await on_all(batch, length, grid.decode_lo)
                    hi = await on_all(batch, length, grid.decode_hi)
                    steps += [(h - l) / span for h, l in zip(hi, lo)]
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
    urls: list[str], grid: ProfileGrid = ProfileGrid(), seed: int = 0, gpu: str = "vllm-server", model: str | None = None
) -> tuple[pd.DataFrame, dict]:
    """Run the grid on every server at once; returns (iteration rows, provenance meta).
    `gpu` labels the hardware for the calibration (a catalog or inline GPU name);
    `model` names the model the fit prices (default: the servers' model id)."""
    if not urls:
        raise BackendError("--url: give at least one vLLM server URL")
    servers = [probe_server(u.rstrip("/")) for u in urls]
    t0 = time.monotonic()
    rows = asyncio.run(_profile(servers, grid, seed))
    if not rows:
        raise BackendError(
            "no grid point fits the servers' KV cache / max_model_len; give smaller --batch-sizes or --contexts"
        )
    meta = {
        "source": "live vLLM servers, client wall-clock differencing (seersim/profile/vllm.py)",
        "servers": [s.url for s in servers],
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
    return pd.DataFrame(rows), meta


def _version(url: str) -> str:
    import httpx

    try:
        return str(httpx.get(url + "/version", timeout=5.0).json().get("version", "unknown"))
    except (httpx.HTTPError, ValueError):
        return "unknown"
