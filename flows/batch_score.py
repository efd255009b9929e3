"""The `batch_score` flow: the champions' ONNX scorers over every user, into DuckDB and Parquet.

Scoring is three steps so it can spread over workers: plan (checks the champion and writes the
inputs, in the flow's process), score user ranges into Parquet parts (on the task runner:
in-process, or Dask workers), and load every part in one transaction (in the flow's process:
DuckDB has one writer, and readers see the old set or the new one, never a mix).
"""

from __future__ import annotations

import time

from prefect import flow
from prefect.runtime import flow_run
from prefect.states import Failed
from prefect.task_runners import TaskRunner

from flows.params import TaskRunnerParams
from flows.runners import night_task_runner, scoring_parts
from tasks.faults import crash_point
from tasks.home import EncoreHome
from tasks.lock import WRITER_LOCK, LockHeld, exclusive_lock
from tasks.score.tasks import (
    list_champions_task,
    load_scores_task,
    plan_scoring_task,
    score_range_task,
)


def score_champion(
    runner: TaskRunner, parts: int, warehouse_path: str, dataset: str, exports_dir: str
) -> dict:
    """Every user of `dataset` scored by what serves for its ranking champion, `parts` user
    ranges on `runner`."""
    started = time.perf_counter()
    plan = plan_scoring_task(warehouse_path, dataset, exports_dir)
    ranges_started = time.perf_counter()
    futures = [
        runner.submit(score_range_task, {"plan": plan, "start": start, "stop": stop})
        for start, stop in plan.ranges(parts)
    ]
    scored = [future.result() for future in futures]
    ranges_seconds = time.perf_counter() - ranges_started
    crash_point("scored")
    loaded = load_scores_task(
        warehouse_path, plan, scored, exports_dir, time.perf_counter() - started
    )
    return {**loaded, "ranges_wall_seconds": ranges_seconds}


def _run_name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters
    return f"batch-score {p.get('dataset') or 'all datasets'}"


@flow(name="batch-score", flow_run_name=_run_name)
def batch_score(
    dataset: str | None = None,
    task_runner: TaskRunnerParams = TaskRunnerParams(),  # noqa: B008 - frozen pydantic model
    lock_wait_seconds: float = 600,
) -> list[dict]:
    """Replace the `recommendations` with the current ranking champions' top-K.

    Args:
        dataset: only this dataset (default: every dataset with a ranking champion).
        task_runner: where user ranges are scored (in-process, or a Dask cluster).
        lock_wait_seconds: how long to wait for another writer of the data home (a night,
            `encore promote`) before failing; scoring writes the lists and the exports.
    """
    home = EncoreHome.from_env().ensure()
    owner = f"batch-score flow run {flow_run.id or 'local'}"
    try:
        with exclusive_lock(home.root / WRITER_LOCK, owner, lock_wait_seconds):
            return _score_all(home, dataset, task_runner)
    except LockHeld as held:
        return Failed(message=f"not scored: the data home is busy ({held})")


def _score_all(home: EncoreHome, dataset: str | None, task_runner: TaskRunnerParams) -> list[dict]:
    warehouse_path, exports_dir = str(home.warehouse), str(home.root / "exports")
    datasets = list_champions_task(warehouse_path, dataset)
    with night_task_runner(task_runner) as runner:
        return [
            score_champion(runner, scoring_parts(task_runner), warehouse_path, name, exports_dir)
            for name in datasets
        ]
