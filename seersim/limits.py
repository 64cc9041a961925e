"""Up-front work bound: estimate a run's requests, output tokens and memory from the
scenario alone and refuse it, naming the field and the limit, before anything is
allocated. A typo such as `workload.prompts=1000000000` must end in one clear line,
not in the kernel's OOM killer an hour later.

The limits live in the scenario's `limits:` section (config.LimitsConfig) so that the
usual `--set limits.max_requests=N` raises them; they never change results.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from seersim.config import ReplayWorkload, Scenario
from seersim.errors import LimitError
from seersim.policies import policy_class

# Measured on scenarios/small.yaml (16 instances, `/usr/bin/time` peak RSS): 7,680 more
# requests added ~13 MB (~1.7 KB each: request table, records, policy state); 78,000
# more chunks (policy.chunk_tokens=64) added ~40 MB (~0.5 KB each: timeline rows and
# simpy events). Rounded up, so the estimate errs on the safe side.
BYTES_PER_REQUEST = 2_000
BYTES_PER_CHUNK = 600


@dataclass(frozen=True)
class WorkEstimate:
    """What a run will build, over all its steps (an upper estimate)."""

    requests: int
    output_tokens: float | None  # None: a replayed trace without workload.max_tokens
    chunks: float
    memory_bytes: float
    why_requests: str  # the fields that make up `requests`, for messages


def default_memory_limit_bytes() -> float:
    """Half of this machine's physical memory (the rest is the OS's and other jobs')."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): 8 GB
        return 8e9


def _trace_rows(path: Path) -> int:
    """Data rows of a trace file, counted without loading it (0 when it is absent:
    the reader then reports the missing file)."""
    if not path.is_file():
        return 0
    with path.open("rb") as fh:
        lines = sum(1 for line in fh if line.strip())
    return max(0, lines - 1) if path.suffix != ".jsonl" else lines


def estimate_work(scenario: Scenario) -> WorkEstimate:
    wl, pol = scenario.workload, scenario.policy
    cls = policy_class(pol.name)
    steps = scenario.steps
    if isinstance(wl, ReplayWorkload):
        path = Path(wl.path) if Path(wl.path).is_absolute() else Path(scenario.base_dir) / wl.path
        per_step = _trace_rows(path)
        if wl.limit:
            per_step = min(per_step, wl.limit)
        mean_out = float(wl.max_tokens) if wl.max_tokens else None
        why = f"{per_step:,} trace rows"
    else:
        per_step = wl.prompts * wl.group_size
        mean_out = min(wl.output_tokens.mean, wl.max_tokens)
        why = f"workload.prompts={wl.prompts:,} x group_size={wl.group_size:,}"
    if cls.over_issue:
        per_step = math.ceil(pol.over_issue_factor * per_step)
        why += f" x policy.over_issue_factor={pol.over_issue_factor:g}"
    requests = per_step * steps
    if steps > 1:
        why += f" x steps={steps:,}"
    tokens = requests * mean_out if mean_out is not None else None
    chunks = float(requests)
    if cls.chunked:
        chunks += (tokens if tokens is not None else 0.0) / pol.chunk_tokens
    memory = requests * BYTES_PER_REQUEST + chunks * BYTES_PER_CHUNK
    return WorkEstimate(requests, tokens, chunks, memory, why)


def study_estimate(scenario: Scenario, policies: Sequence[str], seeds: int, parallel: int) -> WorkEstimate:
    """A study of `policies` x `seeds` runs: requests, tokens and chunks add up (they are
    time); memory is what its `parallel` processes hold at once."""
    ests = [
        estimate_work(scenario.model_copy(update={"policy": scenario.policy.model_copy(update={"name": p})}))
        for p in policies
    ]
    tokens = [e.output_tokens for e in ests]
    return WorkEstimate(
        requests=sum(e.requests for e in ests) * seeds,
        output_tokens=None if None in tokens else sum(tokens) * seeds,
        chunks=sum(e.chunks for e in ests) * seeds,
        memory_bytes=max(e.memory_bytes for e in ests) * min(parallel, len(ests) * seeds),
        why_requests=f"{len(ests)} policies x {seeds} seed(s) of {ests[0].why_requests}",
    )


def check_work(scenario: Scenario, study: WorkEstimate | None = None) -> WorkEstimate:
    """Raise LimitError when the run (or the `study` of several runs) would exceed one of
    `scenario.limits`."""
    est = study or estimate_work(scenario)
    lim = scenario.limits
    lower = "lower the workload" + (" or --seeds" if study else "")
    if est.requests > lim.max_requests:
        memory = f" (about {_gb(est.memory_bytes)} of memory)" if study is None else ""
        raise LimitError(
            f"{est.why_requests} = {est.requests:,} requests exceeds limits.max_requests={lim.max_requests:,}"
            f"{memory}; {lower}, or raise the limit with --set limits.max_requests={est.requests}"
        )
    if est.output_tokens is not None and est.output_tokens > lim.max_output_tokens:
        raise LimitError(
            f"{est.why_requests} requests x ~{est.output_tokens / est.requests:,.0f} output tokens each = "
            f"{est.output_tokens:.3g} tokens exceeds limits.max_output_tokens={lim.max_output_tokens:.3g}; "
            f"{lower}, or raise the limit with --set limits.max_output_tokens={est.output_tokens:.3g}"
        )
    if est.chunks > lim.max_chunks:
        raise LimitError(
            f"{est.requests:,} requests in chunks of policy.chunk_tokens={scenario.policy.chunk_tokens:,} make about "
            f"{est.chunks:,.0f} chunk dispatches, more than limits.max_chunks={lim.max_chunks:,}; raise "
            f"policy.chunk_tokens or {lower}, or raise the limit with --set limits.max_chunks={est.chunks:.0f}"
        )
    mem_limit = lim.max_memory_bytes if lim.max_memory_bytes is not None else default_memory_limit_bytes()
    if est.memory_bytes > mem_limit:
        source = "" if lim.max_memory_bytes is not None else " (default: half of this machine's memory)"
        raise LimitError(
            f"the run needs about {_gb(est.memory_bytes)} of memory ({est.requests:,} requests, {est.chunks:,.0f} "
            f"chunks of policy.chunk_tokens={scenario.policy.chunk_tokens:,}), more than "
            f"limits.max_memory_bytes={_gb(mem_limit)}{source}; lower the workload or raise policy.chunk_tokens, "
            f"or raise the limit with --set limits.max_memory_bytes={est.memory_bytes * 1.1:.2g}"
        )
    return est


def _gb(n: float) -> str:
    if n >= 1e12:
        return f"{n / 1e12:,.1f} TB"
    return f"{n / 1e9:,.1f} GB" if n >= 1e8 else f"{n / 1e6:,.0f} MB"
