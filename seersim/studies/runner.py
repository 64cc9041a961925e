"""The one runner of every study: independent, seeded simulations in this process, a
local process pool or a Ray cluster.

A `Task` is plain data — a scenario as a mapping, a policy name, a seed — so it crosses
process and machine boundaries unchanged, and each worker builds everything itself
(workload, cost model, engine) from the scenario. Live objects such as cost models are
never shipped: a custom or calibrated cost model is described in the scenario and
rebuilt by the worker, so results are the same whichever executor runs them.
"""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal

from seersim.api import RunResult, simulate
from seersim.config import Scenario, scenario_from_dict
from seersim.errors import ExecutorError, ScenarioError, SeersimError

Executor = Literal["local", "ray"]
EXECUTORS: tuple[str, ...] = ("local", "ray")
Progress = Callable[[int, int], None]


def seed_list(scenario: Scenario, count: int) -> list[int]:
    """The seeds a study runs: the scenario's, +1, ... (`--seeds count`)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ScenarioError(f"--seeds must be a whole number ≥ 1 (got {count!r})")
    return [scenario.seed + i for i in range(count)]


@dataclass(frozen=True)
class Task:
    """One simulation, as data: `scenario` is `Scenario.model_dump()` (incl. base_dir)."""

    key: str
    scenario: dict
    policy: str
    seed: int
    keep: bool = False  # return the full records (RunResult), not only the summary


@dataclass
class Outcome:
    """What a worker sends back: the summary, the records if asked, or the typed error
    that made the point impossible (a model that does not fit, a bad workload, ...)."""

    key: str
    summary: dict | None
    result: RunResult | None = None
    error: SeersimError | None = None


def make_task(scenario: Scenario, policy: str, seed: int, key: str, keep: bool = False) -> Task:
    return Task(key=key, scenario=scenario.model_dump(), policy=policy, seed=seed, keep=keep)


def execute(task: Task) -> Outcome:
    """Run one task (in whichever process or node it landed on)."""
    try:
        scenario = scenario_from_dict(task.scenario, base_dir=task.scenario.get("base_dir", "."))
        result = simulate(scenario, policy=task.policy, seed=task.seed)
    except SeersimError as exc:
        return Outcome(task.key, None, error=exc)
    return Outcome(task.key, result.summary, result if task.keep else None)


class Runner:
    """Runs tasks on one executor; used as a context manager so that a study running
    several batches (a plan's search rounds) starts its pool or Ray connection once.

    `executor="local"` runs in this process (`jobs` = 1) or in `jobs` processes;
    `executor="ray"` runs on the Ray cluster at `address`, or on a local Ray instance
    with `jobs` CPUs (all of them when jobs = 1) started for this runner.
    """

    def __init__(self, jobs: int = 1, executor: Executor = "local", address: str | None = None) -> None:
        if executor not in EXECUTORS:
            raise ExecutorError(f"--executor '{executor}': choose one of {', '.join(EXECUTORS)}")
        self.jobs, self.executor, self.address = jobs, executor, address
        self._pool: ProcessPoolExecutor | None = None
        self._ray = None
        self._started_ray = False

    def __enter__(self) -> "Runner":
        if self.executor == "ray":
            self._ray, self._started_ray = _connect_ray(self.jobs, self.address)
        elif self.jobs > 1:
            self._pool = ProcessPoolExecutor(max_workers=self.jobs)
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            # an interrupted study (Ctrl-C, a consumer that stops early) drops queued work
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._started_ray:
            self._ray.shutdown()
            self._started_ray = False

    def run(self, tasks: Iterable[Task], progress: Progress | None = None) -> Iterator[Outcome]:
        """Yield each task's outcome as it finishes (completion order; match them by key)."""
        tasks = list(tasks)
        if self._ray is not None:
            outcomes = self._run_ray(tasks)
        elif self._pool is not None and len(tasks) > 1:
            outcomes = self._run_pool(tasks)
        else:
            outcomes = map(execute, tasks)
        for done, outcome in enumerate(outcomes, start=1):
            if progress:
                progress(done, len(tasks))
            yield outcome

    def _run_pool(self, tasks: list[Task]) -> Iterator[Outcome]:
        pending = {self._pool.submit(execute, t) for t in tasks}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield fut.result()
        finally:
            for fut in pending:
                fut.cancel()

    def _run_ray(self, tasks: list[Task]) -> Iterator[Outcome]:
        ray = self._ray
        remote = ray.remote(num_cpus=1, max_retries=0)(execute)
        pending = [remote.remote(t) for t in tasks]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    yield ray.get(ref)
        finally:
            for ref in pending:
                ray.cancel(ref)


def run_tasks(
    tasks: Iterable[Task],
    *,
    jobs: int = 1,
    executor: Executor = "local",
    address: str | None = None,
    progress: Progress | None = None,
) -> Iterator[Outcome]:
    """One batch of tasks on a runner of its own (see `Runner`)."""
    with Runner(jobs, executor, address) as runner:
        yield from runner.run(tasks, progress)


def run_all(
    tasks: Iterable[Task], *, runner: Runner | None = None, progress: Progress | None = None, **runner_opts
) -> dict[str, Outcome]:
    """Every outcome by task key (for studies that need all of them before going on),
    on `runner` when given, else on a runner of its own made from `runner_opts`."""
    if runner is not None:
        return {o.key: o for o in runner.run(tasks, progress)}
    with Runner(**runner_opts) as own:
        return {o.key: o for o in own.run(tasks, progress)}


def _connect_ray(jobs: int, address: str | None):
    """(the ray module, whether this call started it)."""
    try:
        import ray
    except ImportError:
        raise ExecutorError("--executor ray needs Ray: pip install 'seersim[ray]'") from None
    if ray.is_initialized():
        return ray, False
    import seersim

    code_dir = Path(seersim.__file__).parent
    options: dict = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    if address:
        # ship this seersim to the cluster's workers, so they run the driver's code
        options["address"] = address
        options["runtime_env"] = {"py_modules": [str(code_dir)]}
    else:
        # a local instance's workers import seersim from where the driver found it
        path = os.pathsep.join(p for p in (str(code_dir.parent), os.environ.get("PYTHONPATH", "")) if p)
        options["runtime_env"] = {"env_vars": {"PYTHONPATH": path}}
        if jobs > 1:
            options["num_cpus"] = jobs
    try:
        ray.init(**options)
    except Exception as exc:  # Ray raises many types (ConnectionError, RuntimeError, ...)
        where = f"the cluster at --address {address}" if address else "a local Ray instance"
        raise ExecutorError(f"Ray could not start {where}: {exc}") from None
    return ray, True
