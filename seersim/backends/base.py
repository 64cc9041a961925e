"""The backend protocol: what the rollout driver needs from whatever executes chunks.

The driver (`seersim/driver.py`) owns every piece of bookkeeping a rollout needs —
the request table, dispatch validation, KV reservations, chunk accounting, group
progress, the policies' read-only view, multi-step runs. A backend only *executes*:
it runs chunks on its instances, keeps the clock and the event loop, and reports
back. Two kinds implement it:

- the simulator (`seersim.engine.cluster.SimBackend`): simpy, simulated seconds;
- live servers (one OpenAI-compatible vLLM server = one instance; wall-clock
  seconds; asyncio). A chunk is one completion request whose prompt is the request's
  prompt plus the tokens generated so far and whose `max_tokens` is the chunk's
  `tokens`; prefix caching makes a continuation on the same server cheap.

Life of one RL step::

    backend.begin_step(table, groups, driver)   # fresh clock at 0, the step's requests
    backend.call_soon(driver.scheduling_pass)   # the first pass, run first thing in run()
    backend.run()        # drives the loop; inside it the driver's callbacks call
                         # submit(...) and the backend calls driver.chunk_done(...)
                         # until the driver calls stop()
    records = backend.end_step(abort=...)       # per-instance rows and the timeline

Threading model: single-threaded. Every call into the driver (`chunk_done`, a
`call_soon` callback) happens inside `run()`, on the backend's loop; the driver calls
`submit`, `stop` and the observation methods only from those callbacks. An asyncio
backend therefore schedules the HTTP request in `submit` (e.g. `loop.create_task`)
and calls `chunk_done` from the task's completion, never from another thread.

Column ownership of the `RequestTable` handed to `begin_step`: the driver writes the
dispatch columns (state, instance, chunks, migrations, dispatch time), `generated`
when a chunk returns, and `finish_s`. A backend writes what only the engine sees:
`first_token_s`, `preemptions`, `pulled_bytes`; it may also advance `generated`
mid-chunk where the engine parks a request's progress (the simulator does at a
preemption). `output_tokens` is the workload's true length: a backend may read it to
force live outputs to the simulated lengths (`ignore_eos`), never to schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Protocol

if TYPE_CHECKING:
    import numpy as np

    from seersim.requests import GroupProgress, RequestTable

#: Columns of the timeline a backend returns, one row per batch-changing event per instance.
TIMELINE_COLUMNS = ("instance", "time_s", "running", "waiting", "kv_used_blocks", "kv_cached_blocks")

#: Keys of each per-instance row a backend returns (metrics.py reads them; a live
#: backend reports 0 for a counter it cannot observe and says so in its docs).
INSTANCE_COLUMNS = (
    "instance",
    "gpus",
    "busy_s",  # seconds the instance was computing
    "iterations",  # engine iterations (forward passes)
    "preemptions",
    "prefill_tokens",
    "emitted_tokens",  # output tokens produced
    "verified_tokens",  # tokens the forward passes computed for decoding (incl. drafts)
    "decode_seq_steps",  # Σ over decode iterations of sequences decoding
    "decode_emitted_tokens",
    "kv_blocks",  # KV capacity in blocks
)


class BackendStalled(Exception):
    """`run()` has nothing left to do (no chunk running, in transit or due) but `stop()`
    was never called. Only this condition may raise it; the driver turns it into "the
    policy stopped dispatching". Any other failure inside the loop propagates as is."""


@dataclass
class BackendRecords:
    """What a backend observed during one step (the driver adds the request table)."""

    instances: list[dict] = field(default_factory=list)  # one row per instance, keys INSTANCE_COLUMNS
    timeline: list[tuple] = field(default_factory=list)  # rows of TIMELINE_COLUMNS
    pool: dict = field(default_factory=dict)  # global KV pool summary ({} without a pool)


class BackendListener(Protocol):
    """What a backend reports to the driver (implemented by `seersim.driver.Driver`)."""

    def chunk_done(self, instance_id: int, request_id: int, generated_tokens: int, finished: bool) -> None:
        """A submitted chunk ended on `instance_id`, at `now_s`.

        `generated_tokens`: the request's output tokens so far in total (earlier chunks
        and carried-over steps included). `finished`: the request's output ended (EOS,
        or its true length when lengths are forced); otherwise the chunk reached the
        `tokens` it was submitted with and the request waits for its next dispatch.
        """
        ...


class Backend(Protocol):
    """A fleet of inference instances that runs chunks for a driver.

    Capacity and clock
    ------------------
    Capacity is fixed for the backend's life: `num_instances`, `block_size` (tokens
    per KV block), `max_num_seqs` (sequences one instance runs at once) and
    `kv_total_blocks` (per instance, split evenly among its `dp_ranks` attention
    ranks, each with its own KV cache). `now_s` is seconds since the current step
    began: simulated for the simulator, wall-clock for live servers.
    """

    @property
    def num_instances(self) -> int: ...

    @property
    def block_size(self) -> int: ...

    @property
    def max_num_seqs(self) -> int: ...

    @property
    def kv_total_blocks(self) -> "np.ndarray":
        """KV capacity of each instance in blocks (int64, read-only)."""
        ...

    @property
    def dp_ranks(self) -> int:
        """Data-parallel attention ranks per instance (1 without DP attention)."""
        ...

    @property
    def now_s(self) -> float: ...

    # ------------------------------------------------------------------ step life
    def begin_step(self, table: "RequestTable", groups: "GroupProgress", listener: BackendListener) -> None:
        """Start an RL step over `table`'s requests with the clock at 0.

        Raises `SpecError` when a request of the table can never fit an instance (the
        simulator checks prompt + max_tokens, plus the speculative look-ahead).
        `groups` is the driver's read-only group progress (finished siblings, probes),
        which speculative decoding reads.
        """
        ...

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run `callback` once, at the current time, after every event already due now
        (so all chunks ending at one instant are reported before the driver's next
        scheduling pass). May be called before `run()`: it then runs first in `run()`."""
        ...

    def run(self) -> None:
        """Drive the event loop until `stop()` is called; raise `BackendStalled` when
        nothing is running or due and `stop()` was not called."""
        ...

    def stop(self) -> None:
        """End `run()` once the events already due at the current instant are handled."""
        ...

    def end_step(self, abort: bool) -> BackendRecords:
        """Close the step and return its records. `abort`: the step ended early (partial
        rollout): cancel every running or waiting chunk, keeping the tokens already
        generated in `table.generated` (they carry over to the next step)."""
        ...

    # ------------------------------------------------------------------ work
    def submit(self, instance_id: int, request_id: int, tokens: int, pull_kv: bool, rank: int | None = None) -> None:
        """Run one chunk: generate `tokens` (≥ 1) more tokens of the request on the
        instance, continuing from its prompt plus `table.generated` tokens. `tokens` is
        the dispatch's limit, or fewer where the request's true output ends sooner.
        `pull_kv`: first fetch the request's KV missing on the instance from the global
        KV pool (a backend without a pool ignores it and the instance recomputes).
        `rank`: the DP rank to run it on (as vLLM takes a target data-parallel rank per
        request), chosen by the driver's KV reservations; None lets the instance pick.
        The chunk joins the instance's batch at its next iteration boundary and
        reports through `listener.chunk_done` when it ends."""
        ...

    # ------------------------------------------------------------------ observation
    def kv_used_blocks(self) -> "np.ndarray":
        """KV blocks each instance holds for running sequences now."""
        ...

    def cached_tokens(self, request_id: int, instance_ids: Iterable[int]) -> dict[int, int]:
        """Tokens of the request's prefix cached on each of `instance_ids` (the driver
        passes those the request ran on); instances caching nothing are left out."""
        ...

    def pool_tokens(self, request_id: int) -> int:
        """Tokens of the request's KV held in the global KV pool (0 without a pool)."""
        ...
