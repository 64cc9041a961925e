"""Live vLLM backend: one OpenAI-compatible vLLM server = one instance.

It implements `backends.base.Backend`, so the driver and every policy run unchanged
against real servers. A chunk is one `/v1/completions` request:

- the prompt is token ids (`--skip-tokenizer-init` servers take them as is): the
  request's prompt — seeded ids shared by the siblings of a group, so prefix caching
  serves the siblings as it would in RL — plus the tokens it generated so far,
  which the server returns (`return_token_ids`);
- `max_tokens` = the chunk and `ignore_eos`: the output lengths are forced to the
  workload's, so live and simulated runs do identical work;
- continuing on the same server hits its prefix cache; another server re-prefills
  (vLLM has no global KV pool here: `pull_kv` is ignored and `pool_tokens` is 0).

Failures: each request has a timeout; connection errors, timeouts and 5xx answers
are retried with exponential backoff; a request that still fails marks its server
dead. From then on nothing new is sent, the chunks running on healthy servers are
allowed to finish, and `run()` raises `LiveRunError` carrying every failure and the
request records so far: no request is dropped silently.

What a live server cannot report is 0 in the per-instance records (`busy_s`,
`verified_tokens`, `decode_seq_steps`); the timeline samples `/metrics` (running,
waiting, KV use) about once a second.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

from seersim.backends.base import BackendListener, BackendRecords, BackendStalled
from seersim.errors import BackendError, SpecError

if TYPE_CHECKING:
    from seersim.api import RunResult
    from seersim.config import Scenario
    from seersim.requests import GroupProgress, RequestTable
    from seersim.workload import Workload

#: token ids prompts are drawn from: valid in any real vocabulary and in the tiny
#: model's (8,192), clear of the special ids 0/1 the tiny model uses for BOS/EOS
PROMPT_TOKEN_RANGE = (16, 1016)
#: /metrics sampling period of the timeline (s): often enough to see batch changes of
#: multi-second chunks, rare enough not to load a server pinned to one shared core
METRICS_PERIOD_S = 1.0


class LiveRunError(BackendError):
    """A live run lost a server or a request: every failure, the fate of every
    unfinished request, and the request records so far (finished rows have finish_s)."""

    def __init__(self, message: str, failures: list["ChunkFailure"], unfinished: dict[int, str], requests=None) -> None:
        super().__init__(message)
        self.failures = failures
        self.unfinished = unfinished  # request id -> why it did not finish
        self.requests = requests


@dataclass(frozen=True)
class ChunkFailure:
    request_id: int
    instance_id: int
    url: str
    tokens: int
    attempts: int
    error: str

    def describe(self) -> str:
        return (
            f"request {self.request_id} (chunk of {self.tokens} tokens) on instance {self.instance_id} ({self.url}): "
            f"{self.error} after {self.attempts} attempt(s)"
        )


@dataclass(frozen=True)
class RetryPolicy:
    """Per-request timeout and retries with exponential backoff."""

    timeout_s: float = 600.0  # a 4K-token chunk at batch 16 on one shared core takes ~1-3 min
    attempts: int = 4
    backoff_s: float = 0.5  # then 1, 2 s: a restarting or overloaded server gets ~3.5 s

    def delay_s(self, attempt: int) -> float:
        return self.backoff_s * 2**attempt


@dataclass
class ServerInfo:
    """What a server tells about itself (`/v1/models`, `/metrics`)."""

    url: str
    model: str
    max_model_len: int
    block_size: int
    kv_blocks: int  # usable: vLLM V1 keeps one of num_gpu_blocks as its null block


class _Transient(Exception):
    """Worth retrying: connection refused/reset, timeout, 5xx."""


_LABEL = re.compile(r'(\w+)="([^"]*)"')


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {name: value} (labels dropped; series of one name summed)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name = line.split(" ", 1)[0].split("{", 1)[0]
        value = line.rsplit(" ", 1)[-1]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return out


def probe_server(url: str, timeout_s: float = 10.0) -> ServerInfo:
    """Ask a server for its model, max length and KV geometry; BackendError if unreachable."""
    import httpx

    try:
        with httpx.Client(timeout=timeout_s) as c:
            models = c.get(url + "/v1/models").raise_for_status().json()["data"]
            metrics = c.get(url + "/metrics").raise_for_status().text
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        raise BackendError(
            f"vLLM server {url} is not reachable or not an OpenAI-compatible vLLM server ({exc}); "
            "start one (`seersim serve-local`) or fix --url"
        ) from None
    if not models:
        raise BackendError(f"vLLM server {url} serves no model")
    info = next((ln for ln in metrics.splitlines() if ln.startswith("vllm:cache_config_info")), "")
    labels = dict(_LABEL.findall(info))
    try:
        block_size, kv_blocks = int(labels["block_size"]), int(labels["num_gpu_blocks"])
    except (KeyError, ValueError):
        raise BackendError(f"vLLM server {url}: /metrics has no vllm:cache_config_info with block_size and num_gpu_blocks") from None
    # vllm/v1/core/block_pool.py: the first block is the null block, never allocated
    # (its KV usage metric divides by num_gpu_blocks - 1 too)
    return ServerInfo(url, models[0]["id"], int(models[0].get("max_model_len") or 0), block_size, kv_blocks - 1)


#: sampling parameters of every completion request: temperature 1, as RL samples its
#: responses. Greedy decoding gave the siblings of a group identical outputs, hence
#: identical KV blocks, which vLLM's prefix cache then shares between them (a
#: preempted or continued sibling resumed on the others' blocks: live baseline runs
#: recomputed 71 tokens per preemption where sampled ones recompute 140, the
#: simulator 135: traces/validation/README.md). No per-request seed: vLLM 0.32 on
#: CPU kills the engine when a seeded request's prefill is chunked ("CPU Generator
#: does not use offset").
SAMPLING = {"temperature": 1.0}


def prompt_ids(seed: int, group_id: int, length: int, run: int = 0) -> list[int]:
    """Seeded prompt token ids of a group: siblings share them (prefix caching). `run`
    numbers the backend's steps: a server's prefix cache outlives a run, and a repeat of
    the same prompts would hit the blocks the previous run left (the simulator starts
    every run with an empty cache)."""
    rng = np.random.default_rng([seed, run, group_id])
    return rng.integers(*PROMPT_TOKEN_RANGE, size=length).tolist()


class VLLMBackend:
    """N live vLLM servers behind the `Backend` protocol (wall-clock seconds, asyncio)."""

    def __init__(
        self,
        urls: list[str],
        max_num_seqs: int,
        seed: int = 0,
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        if not urls:
            raise BackendError("--url: give at least one server URL (comma-separated)")
        self.servers = [probe_server(u.rstrip("/")) for u in urls]
        sizes = {s.block_size for s in self.servers}
        if len(sizes) != 1:
            raise BackendError(f"servers use different KV block sizes {sorted(sizes)}; start them alike")
        self._block_size = sizes.pop()
        self._kv_total = np.array([s.kv_blocks for s in self.servers], np.int64)
        self._kv_total.flags.writeable = False
        self._max_num_seqs = max_num_seqs
        self.seed = seed
        self.retry = retry
        self.failures: list[ChunkFailure] = []
        self._dead: set[int] = set()
        # steps begun, from a random start: each step gets prompts of its own, also
        # against servers an earlier process ran the same workload on (see prompt_ids)
        self._runs = int.from_bytes(os.urandom(4), "little")

    # ------------------------------------------------------------------ capacity and clock
    @property
    def num_instances(self) -> int:
        return len(self.servers)

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def max_num_seqs(self) -> int:
        return self._max_num_seqs

    @property
    def kv_total_blocks(self) -> np.ndarray:
        return self._kv_total

    @property
    def dp_ranks(self) -> int:
        return 1  # one engine core per server (validation runs dp=1 servers)

    @property
    def now_s(self) -> float:
        return time.monotonic() - self._t0

    # ------------------------------------------------------------------ step life
    def begin_step(self, table: "RequestTable", groups: "GroupProgress", listener: BackendListener) -> None:
        longest = int((table.input_tokens + table.max_tokens).max()) if table.n else 0
        for s in self.servers:
            cap = min(s.max_model_len or longest, s.kv_blocks * s.block_size)
            if longest > cap:
                raise SpecError(
                    f"a request can reach {longest} tokens but server {s.url} holds at most {cap} "
                    "(max_model_len and KV cache): lower workload.max_tokens or the input lengths, or give the servers more KV"
                )
        self.table = table
        self.listener = listener
        self._runs += 1
        self._prompts = [
            prompt_ids(self.seed, int(g), int(n), self._runs) for g, n in zip(table.group_id, table.input_tokens)
        ]
        # carried-over tokens (partial rollout) get seeded ids too: their KV is recomputed anyway
        self._outputs: list[list[int]] = [
            prompt_ids(self.seed + 1, i, int(g), self._runs) for i, g in enumerate(table.generated)
        ]
        self._seq_on: list[dict[int, int]] = [{} for _ in range(table.n)]
        self._running = np.zeros(self.num_instances, np.int64)
        self._callbacks: list[Callable[[], None]] = []
        self._tasks: set[asyncio.Task] = set()
        self._stopped = False
        self._wake: asyncio.Event | None = None
        self._timeline: list[tuple] = []
        self._kv_used = np.zeros(self.num_instances, np.int64)
        self._counters_start = self._scrape_all_sync()
        self._t0 = time.monotonic()

    def call_soon(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)
        if self._wake is not None:
            self._wake.set()

    def stop(self) -> None:
        self._stopped = True
        if self._wake is not None:
            self._wake.set()

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        import httpx

        self._wake = asyncio.Event()
        limits = httpx.Limits(max_connections=4 * self._max_num_seqs * self.num_instances)
        async with httpx.AsyncClient(timeout=self.retry.timeout_s, limits=limits) as client:
            self._client = client
            sampler = asyncio.create_task(self._sample_metrics())
            try:
                while True:
                    while self._callbacks:
                        cb = self._callbacks.pop(0)
                        cb()
                    if self._stopped:
                        break
                    if self.failures and not self._tasks:
                        break
                    if not self._tasks:
                        raise BackendStalled()
                    self._wake.clear()
                    await self._wake.wait()
            finally:
                sampler.cancel()
                for t in list(self._tasks):
                    t.cancel()
                await asyncio.gather(sampler, *self._tasks, return_exceptions=True)
                self._wake = None
        if self.failures:
            unfinished = self._unfinished()
            raise LiveRunError(self._failure_report(unfinished), list(self.failures), unfinished, self.table.to_frame())

    def _unfinished(self) -> dict[int, str]:
        """Why each unfinished request did not finish (none is left out)."""
        t = self.table
        why = {int(r): f"waiting for dispatch after {int(t.chunks[r])} chunk(s)" for r in np.flatnonzero(np.isnan(t.finish_s))}
        for f in self.failures:
            why[f.request_id] = f"failed: {f.describe()}" if f.attempts else "not sent: dispatching stopped after a failure"
        return why

    def _failure_report(self, unfinished: dict[int, str]) -> str:
        t = self.table
        failed = [f for f in self.failures if f.attempts > 0]
        unsent = sum(1 for f in self.failures if not f.attempts)
        waiting = len(unfinished) - len(failed) - unsent
        dead = ", ".join(self.servers[i].url for i in sorted(self._dead)) or "none"
        return (
            f"live run failed: {len(failed)} chunk(s) failed (dead server(s): {dead}); dispatching stopped and the "
            f"chunks running elsewhere were allowed to finish. {t.n - len(unfinished)} of {t.n} requests finished "
            f"(their records are kept); of the {len(unfinished)} unfinished, {len(failed)} failed, {unsent} were not "
            f"sent after the failure, {waiting} were waiting for dispatch. Failed: " + "; ".join(f.describe() for f in failed)
        )

    def end_step(self, abort: bool) -> BackendRecords:
        end = self._scrape_all_sync()
        rows = []
        for i, s in enumerate(self.servers):
            d = {k: end[i].get(k, 0.0) - self._counters_start[i].get(k, 0.0) for k in end[i]}
            prompt = d.get("vllm:prompt_tokens_total", 0.0)
            hits = d.get("vllm:prefix_cache_hits_total", 0.0)
            gen = d.get("vllm:generation_tokens_total", 0.0)
            rows.append(
                {
                    "instance": i,
                    "gpus": 1,
                    "busy_s": 0.0,  # not observable from outside the server
                    "iterations": int(d.get("vllm:iteration_tokens_total_count", 0.0)),
                    "preemptions": int(d.get("vllm:num_preemptions_total", 0.0)),
                    "prefill_tokens": int(max(0.0, prompt - hits)),
                    "emitted_tokens": int(gen),
                    "verified_tokens": 0,
                    "decode_seq_steps": 0,
                    "decode_emitted_tokens": 0,
                    "kv_blocks": int(s.kv_blocks),
                }
            )
        return BackendRecords(instances=rows, timeline=list(self._timeline), pool={})

    # ------------------------------------------------------------------ work
    def submit(self, instance_id: int, request_id: int, tokens: int, pull_kv: bool, rank: int | None = None) -> None:
        # `rank` is always 0 or None here (dp_ranks is 1): a dp=1 server has one rank,
        # so there is no data_parallel_rank to send
        if self.failures:
            # a server died: send nothing new, report the chunk as not sent
            self.failures.append(
                ChunkFailure(request_id, instance_id, self.servers[instance_id].url, tokens, 0, "not sent: an earlier failure stopped the run")
            )
            return
        self._running[instance_id] += 1
        task = asyncio.get_running_loop().create_task(self._chunk(instance_id, request_id, tokens))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if self._wake is not None:
            self._wake.set()

    async def _chunk(self, iid: int, rid: int, tokens: int) -> None:
        t = self.table
        server = self.servers[iid]
        body = {
            "model": server.model,
            "prompt": self._prompts[rid] + self._outputs[rid],
            "max_tokens": tokens,
            "min_tokens": tokens,
            "ignore_eos": True,
            **SAMPLING,
            "return_token_ids": True,
        }
        new_ids, attempts, error = None, 0, ""
        while attempts < self.retry.attempts and iid not in self._dead:
            attempts += 1
            try:
                new_ids = await self._post(server.url, body)
                break
            except _Transient as exc:
                error = str(exc)
                await asyncio.sleep(self.retry.delay_s(attempts - 1))
            except BackendError as exc:
                error = str(exc)
                break
        self._running[iid] -= 1
        if new_ids is None or len(new_ids) != tokens:
            if new_ids is not None:
                error = f"server returned {len(new_ids)} tokens, {tokens} were forced"
            elif iid in self._dead and not error:
                error = "server marked dead by an earlier failure"
            self._dead.add(iid)
            self.failures.append(ChunkFailure(rid, iid, server.url, tokens, attempts, error))
            return
        if t.chunks[rid] == 1 and math.isnan(t.first_token_s[rid]):
            # without streaming the first token is seen with the first chunk's end
            t.first_token_s[rid] = self.now_s
        self._outputs[rid].extend(new_ids)
        generated = int(t.generated[rid]) + tokens
        self._seq_on[rid][iid] = int(t.input_tokens[rid]) + generated
        self.listener.chunk_done(iid, rid, generated, generated >= int(t.output_tokens[rid]))

    async def _post(self, url: str, body: dict) -> list[int]:
        import httpx

        try:
            r = await self._client.post(url + "/v1/completions", json=body)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
        if r.status_code >= 500:
            raise _Transient(f"HTTP {r.status_code}: {r.text[:200]}")
        if r.status_code != 200:
            raise BackendError(f"HTTP {r.status_code}: {r.text[:300]}")
        try:
            return list(r.json()["choices"][0]["token_ids"])
        except (KeyError, IndexError, TypeError, ValueError):
            raise BackendError(f"answer without choices[0].token_ids (needs vLLM >= 0.10.2): {r.text[:200]}") from None

    # ------------------------------------------------------------------ observation
    def kv_used_blocks(self) -> np.ndarray:
        """KV use as of the last `/metrics` sample (at most METRICS_PERIOD_S old)."""
        return self._kv_used.copy()

    def cached_tokens(self, request_id: int, instance_ids: Iterable[int]) -> dict[int, int]:
        """Full blocks of the sequence each instance processed for the request at its
        last chunk there (what prefix caching keeps unless evicted; not observable)."""
        seq = self._seq_on[request_id]
        bs = self._block_size
        return {i: seq[i] // bs * bs for i in instance_ids if seq.get(i, 0) >= bs}

    def pool_tokens(self, request_id: int) -> int:
        return 0

    # ------------------------------------------------------------------ metrics
    async def _sample_metrics(self) -> None:
        while True:
            texts = await asyncio.gather(
                *(self._client.get(s.url + "/metrics", timeout=5.0) for s in self.servers), return_exceptions=True
            )
            now = self.now_s
            for i, r in enumerate(texts):
                if isinstance(r, BaseException) or r.status_code != 200:
                    continue
                m = parse_metrics(r.text)
                used = int(round(m.get("vllm:kv_cache_usage_perc", 0.0) * self.servers[i].kv_blocks))
                self._kv_used[i] = used
                self._timeline.append(
                    (i, now, int(m.get("vllm:num_requests_running", 0)), int(m.get("vllm:num_requests_waiting", 0)), used, 0)
                )
            await asyncio.sleep(METRICS_PERIOD_S)

    def _scrape_all_sync(self) -> list[dict[str, float]]:
        import httpx

        out = []
        with httpx.Client(timeout=10.0) as c:
            for s in self.servers:
                try:
                    out.append(parse_metrics(c.get(s.url + "/metrics").text))
                except httpx.HTTPError:
                    out.append({})
        return out


def run_live(
    scenario: "Scenario",
    backend: VLLMBackend,
    policy: str | None = None,
    seed: int | None = None,
    *,
    workload: "Workload | None" = None,
    progress: Callable[[int, int], None] | None = None,
) -> "RunResult":
    """Run `scenario.steps` rollout steps live, as `seersim.simulate` runs them simulated:
    the same driver, policy objects and metrics; wall-clock seconds."""
    from seersim.api import RunResult, StepResult
    from seersim.config import with_overrides
    from seersim.driver import rollout_steps
    from seersim.metrics import summarize
    from seersim.policies import policy_class

    if policy is not None:
        scenario = with_overrides(scenario, **{"policy.name": policy})
    if policy_class(scenario.policy.name).speculation or scenario.engine.speculation.mode != "none":
        raise BackendError(
            f"policy '{scenario.policy.name}' / engine.speculation: the live vLLM backend runs no speculative decoding; "
            "validate policies without it (baseline, divided, context_aware, oracle_lpt)"
        )
    if scenario.engine.max_num_seqs != backend.max_num_seqs:
        raise BackendError(
            f"engine.max_num_seqs={scenario.engine.max_num_seqs} but the backend was built for {backend.max_num_seqs}: "
            "start the servers with the scenario's --max-num-seqs"
        )
    seed = scenario.seed if seed is None else seed
    backend.seed = seed
    rng = np.random.default_rng(seed)
    result = RunResult(scenario=scenario, policy=scenario.policy.name, seed=seed)
    for step, out in enumerate(rollout_steps(scenario, backend, rng, workload, progress)):
        summary = summarize(out, scenario, scenario.policy.name, seed)
        # preemptions are not observable per request live: the servers' counters
        summary["preemptions"] = int(out.instances["preemptions"].sum())
        summary["step"] = step
        result.steps.append(StepResult(step, summary, out.requests, out.instances, out.timeline))
    return result
