"""Where the night's heavy tasks run: in this process, or on a Dask cluster.

Training and the scoring of user ranges read and write files only, so they can run anywhere
that sees the data home; everything that touches the warehouse stays in the flow's process
(DuckDB has one writer). The runner is chosen per run (NightlyParams.task_runner), not per
deployment, so a team can try Dask from the run form before changing anything else.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.params import TaskRunnerParams


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

    In-process, one task at a time: torch and onnxruntime already use every core, so two models
    training side by side in one process would only contend for them.
    """
    runner = (
        dask_task_runner(settings)
        if settings.kind == "dask"
        else ThreadPoolTaskRunner(max_workers=1)
    )
    with runner:
        yield runner


def scoring_parts(settings: TaskRunnerParams) -> int:
    """User ranges per dataset: 2 per Dask worker (a slow range does not idle the others)."""
    if settings.scoring_parts:
        return settings.scoring_parts
    return 1 if settings.kind == "in-process" else 2 * settings.workers
