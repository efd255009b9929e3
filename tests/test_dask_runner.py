"""The nightly flow on prefect-dask's DaskTaskRunner (a real 2-worker LocalCluster) gives the
same recommendations as in-process, with training and user ranges run on the workers."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import write_days
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.nightly import nightly_retrain
from flows.params import NightlyParams
from tasks.warehouse.schema import warehouse

pytestmark = [pytest.mark.slow, pytest.mark.integration]

# One dataset with both model kinds: a ranking and a rating branch on the workers (the listens
# would only repeat the ranking branch, at a third of the test's time).
PARAMS = {
    "datasets": ["sample-ratings"],
    # A smaller GAT-BPR than the nightly default: these tests check the flow, not quality.
    "gat_bpr": {"epochs": 3, "batch_size": 4096, "embedding_dim": 32, "num_layers": 1},
    "rating": {"epochs": 3},
    "validation": {"min_users": 5, "min_items": 5},
}
DASK = {"kind": "dask", "workers": 2, "threads_per_worker": 1, "scoring_parts": 3}


@pytest.fixture(autouse=True)
def prefect_server(prefect_api):
    """Flows here run against the session's Prefect server (conftest)."""


def recommendations(home) -> list[tuple]:
    with warehouse(home.warehouse) as con:
        return con.execute(
            """SELECT dataset, model_kind, user_id, rank, item_id, source, score
               FROM recommendations ORDER BY ALL"""
        ).fetchall()


def night(home, monkeypatch, runner: dict | None) -> dict:
    """One nightly run on `home`, in-process or on the given task runner."""
    monkeypatch.setenv("ENCORE_HOME", str(home.root))
    params = NightlyParams.model_validate({**PARAMS, **({"task_runner": runner} if runner else {})})
    state = nightly_retrain(params, return_state=True)
    assert state.is_completed(), state.message
    return {"night": state.result(), "run_id": state.state_details.flow_run_id}


def test_dask_runner_gives_the_in_process_recommendations(flow_home, tmp_path, monkeypatch):
    write_days(flow_home, range(3))
    twin = tmp_path / "twin"
    shutil.copytree(flow_home.root, twin)  # the same landing files and sources, untouched
    from tasks.home import EncoreHome

    # Dask's nanny starts workers with OMP_NUM_THREADS=1; torch's multi-threaded reductions
    # round differently, so the in-process run uses one thread too, for an exact comparison.
    # onnxruntime too (OMP_NUM_THREADS, as open_session reads it): both sides score with the
    # same thread count, as ranks are compared exactly.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with monkeypatch.context() as env:
            env.setenv("OMP_NUM_THREADS", "1")
            night(flow_home, monkeypatch, None)
    finally:
        torch.set_num_threads(threads)
    on_dask = night(EncoreHome(twin), monkeypatch, DASK)

    expected, got = recommendations(flow_home), recommendations(EncoreHome(twin))
    users = {row[2] for row in expected}
    assert len(users) > 40 and len(expected) == 10 * len(users)  # ten items for every user
    assert [row[:-1] for row in got] == [row[:-1] for row in expected]  # same items, same ranks
    assert [row[-1] for row in got] == pytest.approx([row[-1] for row in expected], abs=1e-5)
    for outcome in on_dask["night"]["outcomes"]:
        assert outcome["status"] in ("promoted", "baseline")
        if outcome["model"] == "gat-bpr":
            assert outcome["scoring"]["parts"] == 3
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[on_dask["run_id"]]))
        )
    by_name = {run.name: run for run in runs}
    ranges = [name for name in by_name if name.startswith("score sample-ratings users")]
    assert len(ranges) == 3
    assert "train rating on sample-ratings snapshot 1" in by_name
    assert "fit baselines beside gat-bpr on sample-ratings snapshot 1" in by_name

    # The batch-score flow on the cluster re-scores the same champions to the same rows.
    from flows.batch_score import batch_score

    results = batch_score(task_runner={**DASK, "scoring_parts": 5})
    assert {r["parts"] for r in results} == {5}
    rescored = recommendations(EncoreHome(twin))
    assert [row[:-1] for row in rescored] == [row[:-1] for row in expected]
