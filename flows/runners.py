"""Where the night's heavy tasks run: in this process, or on a Dask cluster.

Training and the scoring of user ranges read and write files only, so they can run anywhere
that sees the data home; everything that touches the warehouse stays in the flow's process
(DuckDB has one writer). The runner is chosen per run (NightlyParams.task_runner), not per
deployment, so a team can try Dask from the run form before changing anything else.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Self

from prefect import Task
from prefect.futures import PrefectConcurrentFuture, PrefectFuture
from prefect.task_runners import TaskRunner

from flows.params import TaskRunnerParams


class InProcessTaskRunner(TaskRunner[PrefectConcurrentFuture[Any]]):
    """Runs each submitted task at once, in the thread that submits it (the flow's).

    Prefect's ThreadPoolTaskRunner(max_workers=1) would run the same tasks one at a time too,
    but in a thread of its own, and the flow's thread calls torch as well (exports, checks).
    torch's OpenMP runtime (libgomp) keeps a team of threads per calling thread and, once it
    manages more threads than there are cores, its idle threads spin 1,000 rounds instead of
    300,000 before they sleep: every parallel op then wakes them through the kernel. On the
    sample night that was 95,000 sleeps of the training threads against 6,000 called directly,
    and trainings and refits ran 5-14 % slower inside the flow (bench-nightly). Task runs,
    states, retries and results are Prefect's as with any task called in a flow.
    """

    def duplicate(self) -> Self:
        return type(self)()

    def submit(
        self,
        task: Task[Any, Any],
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None = None,
        dependencies: dict[str, Any] | None = None,
    ) -> PrefectConcurrentFuture[Any]:
        """The task's final state, wrapped as a done future: `.result()` returns its value or
        raises its error, as the thread pool's futures do, so a failure is met where the flow
        waits for it, not where it submitted."""
        if not self._started:
            raise RuntimeError("Task runner is not started")
        state = task(**parameters, wait_for=wait_for, return_state=True)
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        done.set_result(state)
        return PrefectConcurrentFuture(
            task_run_id=state.state_details.task_run_id, wrapped_future=done
        )


def dask_task_runner(settings: TaskRunnerParams) -> TaskRunner:
    """prefect-dask's DaskTaskRunner on an existing cluster (`address`), or on a LocalCluster
    of `workers` processes started for this run and closed with it."""
    from prefect_dask import DaskTaskRunner  # imported only when asked for: it starts slowly

    if settings.address:
        return DaskTaskRunner(address=settings.address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": settings.workers,
            "threads_per_worker": settings.threads_per_worker,
            "processes": True,
            "memory_limit": settings.memory_limit,
            # A free port: two runs (or a test next to a run) must not fight over :8787.
            "dashboard_address": ":0",
            "env": {"PREFECT_API_URL": _api_url()},
        }
    )


def _api_url() -> str:
    """The API this flow reports to. Without PREFECT_API_URL (ephemeral mode: `make run`,
    `encore nightly`), each worker would otherwise start a Prefect server of its own: seconds of
    CPU per worker on the cores it is meant to score with."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return str(client.api_url).rstrip("/")


@contextmanager
def night_task_runner(settings: TaskRunnerParams) -> Iterator[TaskRunner]:
    """A started task runner for the night's training and scoring tasks.

    In-process, one task at a time in the flow's thread: torch and onnxruntime already use
    every core, so two models training side by side in one process would only contend for them.
    """
    runner = dask_task_runner(settings) if settings.kind == "dask" else InProcessTaskRunner()
    with runner:
        yield runner


def scoring_parts(settings: TaskRunnerParams) -> int:
    """User ranges per dataset: 2 per Dask worker (a slow range does not idle the others)."""
    if settings.scoring_parts:
        return settings.scoring_parts
    return 1 if settings.kind == "in-process" else 2 * settings.workers
