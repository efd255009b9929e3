"""The in-process task runner runs each task in the flow's own thread (torch's OpenMP then keeps
one team of threads, as when called directly: flows/runners.py), records real task runs, and
reports a task's failure where the flow waits for it."""

from __future__ import annotations

import threading

import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client

from flows.params import TaskRunnerParams
from flows.runners import InProcessTaskRunner, night_task_runner

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def prefect_server(prefect_api):
    """Flows here run against the session's Prefect server (conftest)."""


@task(task_run_name="thread of {label}")
def thread_of(label: str) -> int:
    return threading.get_ident()


@task
def refuse(reason: str) -> None:
    raise ValueError(reason)


def test_in_process_tasks_run_in_the_flows_thread_as_recorded_task_runs():
    @flow
    def two_tasks() -> dict:
        with night_task_runner(TaskRunnerParams()) as runner:
            assert isinstance(runner, InProcessTaskRunner)
            futures = [runner.submit(thread_of, {"label": label}) for label in ("a", "b")]
            return {
                "flow_thread": threading.get_ident(),
                "task_threads": [future.result() for future in futures],
                "task_run_ids": [future.task_run_id for future in futures],
            }

    ran = two_tasks()
    assert ran["task_threads"] == [ran["flow_thread"]] * 2
    with get_client(sync_client=True) as client:
        runs = [client.read_task_run(run_id) for run_id in ran["task_run_ids"]]
    assert [run.name for run in runs] == ["thread of a", "thread of b"]
    assert all(run.state.is_completed() for run in runs)


def test_a_failed_task_raises_where_the_flow_waits_for_it():
    @flow
    def waits_for_a_failure() -> str:
        with night_task_runner(TaskRunnerParams()) as runner:
            future = runner.submit(refuse, {"reason": "bad export"})  # no raise here
            with pytest.raises(ValueError, match="bad export"):
                future.result()
            return "went on"

    assert waits_for_a_failure() == "went on"


def test_an_unstarted_runner_refuses_work():
    with pytest.raises(RuntimeError, match="not started"):
        InProcessTaskRunner().submit(thread_of, {"label": "a"})
