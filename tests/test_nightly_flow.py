"""The nightly retrain under a real (temporary) Prefect server, on the tiny sample.

Covers the paths a data team meets in its first week: a first night that crowns champions, a
night with nothing new, a bad delivery, a challenger that is not better, a better one the next
night, a misconfigured model next to a healthy one, and two runs at once.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from uuid import UUID

import pytest
from conftest import write_days
from prefect import flow, task
from prefect.artifacts import create_progress_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterTaskRunId,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.context import TaskRunContext
from prefect.testing.utilities import prefect_test_harness

from flows.nightly import NightlyRunFailed, nightly_retrain
from flows.params import DEFAULT_PARAMS, NightlyParams
from models_src.config import tuned_defaults
from tasks.home import EncoreHome
from tasks.lock import LockHeld, exclusive_lock
from tasks.train import TrainingProgress
from tasks.warehouse.schema import warehouse

pytestmark = pytest.mark.slow

# The flow's wiring is under test here, not model quality: a few epochs, and baseline floors
# (MostPopular's Recall@10, the mean predictor's RMSE) low enough that tiny-data models are
# promoted on the first night whatever the last digits of a 3-epoch training.
QUICK = {
    "gat_bpr": {"epochs": 3, "batch_size": 4096},
    "rating": {"epochs": 3},
    "validation": {"min_users": 5, "min_items": 5},
    "gate": {"popularity_margin": -1.0, "baseline_rmse_margin": -1.0},
}


def quick(**overrides) -> NightlyParams:
    values = {**QUICK}
    for name, value in overrides.items():
        values[name] = {**values.get(name, {}), **value} if isinstance(value, dict) else value
    return NightlyParams.model_validate(values)


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture
def night_home(flow_home) -> EncoreHome:
    write_days(flow_home, range(3))
    return flow_home


def registry(home: EncoreHome) -> dict[int, tuple[str, str]]:
    with warehouse(home.warehouse) as con:
        rows = con.execute("SELECT version, kind, status FROM model_versions").fetchall()
    return {version: (kind, status) for version, kind, status in rows}


def champions(home: EncoreHome) -> dict[str, int]:
    return {kind: v for v, (kind, status) in registry(home).items() if status == "champion"}


def served_versions(home: EncoreHome) -> dict[str, set[int]]:
    with warehouse(home.warehouse) as con:
        rows = con.execute(
            "SELECT model_kind, model_version FROM recommendations GROUP BY ALL"
        ).fetchall()
    served: dict[str, set[int]] = {}
    for kind, version in rows:
        served.setdefault(kind, set()).add(version)
    return served


def artifacts_of(flow_run_id: UUID) -> dict[str, object]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key or f"{a.type}-{a.id}": a for a in found}


def write_bad_ratings_day(home: EncoreHome, day: int) -> None:
    """Tonight's ratings arrive on a 1-10 scale by mistake: every row is quarantined."""
    write_days(home, range(day, day + 1))
    newest = sorted((home.landing / "sample-ratings").glob("*.csv"))[-1]
    lines = newest.read_text().splitlines()
    rows = [line.split(",") for line in lines[1:]]
    newest.write_text(
        "\n".join([lines[0]] + [",".join(r[:3] + ["9.5"] + r[4:]) for r in rows]) + "\n"
    )


def test_defaults_are_the_tuned_ones():
    for model in ("gat-bpr", "rating"):
        config = DEFAULT_PARAMS.train_config(model)
        for name, value in tuned_defaults(model).items():
            assert config[name] == value, (model, name)


def test_first_night_promotes_scores_reports_and_a_quiet_night_does_nothing(night_home):
    state = nightly_retrain(quick(), return_state=True)
    assert state.is_completed(), state.message
    night = state.result()
    assert [(o["model"], o["status"]) for o in night["outcomes"]] == [
        ("gat-bpr", "promoted"),
        ("rating", "promoted"),
    ]
    assert set(champions(night_home)) == {"gat-bpr", "rating"}
    with warehouse(night_home.warehouse) as con:
        users = dict(con.execute("SELECT dataset, count(*) FROM user_ids GROUP BY 1").fetchall())
        scored = dict(
            con.execute(
                "SELECT dataset, count(DISTINCT user_id) FROM recommendations GROUP BY 1"
            ).fetchall()
        )
    assert scored == users  # every user of both datasets has recommendations
    report = (night_home.reports / night["report_path"].rsplit("/", 1)[1]).read_text()
    assert report.startswith("# Nightly retrain") and report.count("PROMOTED v") == 2
    assert "| `sample-listens` | 1 | PASSED | 3 |" in report
    assert "data:image/png;base64," in report  # the training curves, inline
    artifacts = artifacts_of(state.state_details.flow_run_id)
    assert {"nightly-report", "nightly-metrics"} <= set(artifacts)
    assert "PROMOTED" in artifacts["nightly-report"].data
    metric_rows = artifacts["nightly-metrics"].data
    assert "test" in metric_rows and "recall@10" in metric_rows

    again = nightly_retrain(quick(), return_state=True)
    assert again.is_completed()
    reasons = [o["reason"] for o in again.result()["outcomes"]]
    assert all(r.startswith("no new data: snapshot") for r in reasons), reasons
    assert len(registry(night_home)) == 2


def test_tasks_say_what_they_did_carry_tags_and_training_reports_progress(night_home):
    state = nightly_retrain(quick(models={"sample-ratings": []}), return_state=True)
    assert state.is_completed(), state.message
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
        tasks = {t.name: t for t in runs}
        train = tasks["train gat-bpr on sample-listens snapshot 1"]
        progress = [
            a for a in client.read_artifacts() if a.type == "progress" and a.task_run_id == train.id
        ]
    assert {"gat-bpr", "dataset:sample-listens"} <= set(train.tags)
    for name in (
        "export sample-listens",
        "gate v1 on sample-listens",
        "load sample-listens recommendations (gat-bpr)",
    ):
        assert {"gat-bpr", "dataset:sample-listens"} <= set(tasks[name].tags), name
    assert len(progress) == 1 and progress[0].data == 100.0
    assert "done after 3 epochs" in progress[0].description
    artifacts = artifacts_of(run_id)
    assert {"training-curve-sample-listens-gat-bpr", "metrics-sample-listens-gat-bpr"} <= set(
        artifacts
    )
    curve = artifacts["training-curve-sample-listens-gat-bpr"].data
    assert curve.count("val_recall@10") == 3  # one row per epoch


def test_a_progress_artifact_stored_twice_by_a_resent_create_ends_as_one():
    """Prefect's client re-sends a create that timed out; CI once got two progress bars."""

    @task
    def train_with_a_resent_create() -> UUID:
        progress = TrainingProgress("gat-bpr", "sample-listens", epochs=3, monitor="recall@10")
        # What the server stores when the first POST times out but commits, and is re-sent.
        create_progress_artifact(progress=0.0, description="gat-bpr on sample-listens: starting")
        create_progress_artifact(progress=50.0, description="another bar this task owns")
        progress.finish({"epochs_run": 3, "best_epoch": 2, "test": {"recall@10": 0.25}})
        return TaskRunContext.get().task_run.id

    @flow
    def one_training() -> UUID:
        return train_with_a_resent_create()

    task_run_id = one_training()
    with get_client(sync_client=True) as client:
        bars = client.read_artifacts(
            artifact_filter=ArtifactFilter(task_run_id=ArtifactFilterTaskRunId(any_=[task_run_id]))
        )
    assert sorted((a.data, a.description.split(":")[0]) for a in bars) == [
        (50.0, "another bar this task owns"),
        (100.0, "gat-bpr on sample-listens"),
    ]


def test_a_bad_delivery_fails_its_branch_only_and_the_champion_keeps_serving(night_home):
    nightly_retrain(quick())
    before = champions(night_home)
    write_bad_ratings_day(night_home, 3)
    state = nightly_retrain(quick(), return_state=True)
    assert state.is_failed()
    with pytest.raises(NightlyRunFailed, match="validation failed: sample-ratings"):
        state.result()
    after = champions(night_home)
    assert after["rating"] == before["rating"]  # untouched
    kinds = [kind for kind, _ in registry(night_home).values()]
    assert kinds.count("gat-bpr") == 2 and kinds.count("rating") == 1  # listens went on
    report = sorted(night_home.reports.glob("nightly-*.md"))[-1].read_text()
    assert ": FAILED" in report and "**Validation failed** for `sample-ratings`" in report
    assert f"champion v{before['rating']} keeps serving" in report
    assert "rating within the scale" in report


def test_a_challenger_that_is_not_better_is_rejected_and_the_champion_rescored(night_home):
    nightly_retrain(quick())
    before = champions(night_home)
    state = nightly_retrain(
        quick(retrain_without_new_data=True, gate={"min_gain": 1.0}), return_state=True
    )
    assert state.is_completed()
    outcomes = state.result()["outcomes"]
    assert [o["status"] for o in outcomes] == ["rejected", "rejected"]
    assert all(
        any(r.startswith("REJECT: test recall@10") for r in o["gate"]["reasons"]) for o in outcomes
    )
    assert champions(night_home) == before
    assert served_versions(night_home) == {k: {v} for k, v in before.items()}
    assert all(o["scoring"]["model_version"] == before[o["model"]] for o in outcomes)


def test_a_better_model_the_next_night_is_promoted_warm_started_from_the_champion(night_home):
    weak = {"gat_bpr": {"epochs": 1, "lr": 0.001}, "models": {"sample-ratings": []}}
    nightly_retrain(quick(**weak))
    first = champions(night_home)["gat-bpr"]
    write_days(night_home, range(3, 4))
    state = nightly_retrain(quick(gat_bpr={"epochs": 15}, models={"sample-ratings": []}))
    (outcome,) = state["outcomes"]
    assert outcome["status"] == "promoted", outcome["gate"]["reasons"]
    assert outcome["gate"]["champion_before"] == first
    assert outcome["snapshot_id"] > 1
    started = outcome["training"]["started_from"]  # warm start is the default with a champion
    assert started["warm"] and started["version"] == first
    assert started["kept"]["users"] > 0 and "start_val" in outcome["training"]
    tables = outcome["gate"]["tables"]
    assert tables["challenger"]["test"]["recall@10"] > tables["champion"]["test"]["recall@10"]
    assert champions(night_home)["gat-bpr"] == outcome["gate"]["version"]
    assert served_versions(night_home)["gat-bpr"] == {outcome["gate"]["version"]}


def test_one_broken_model_does_not_stop_the_other(night_home):
    # A rating model asked for on implicit listens cannot train: that branch fails, the run
    # goes on, promotes GAT-BPR and ends Failed with the reason.
    params = quick(models={"sample-listens": ["rating", "gat-bpr"], "sample-ratings": []})
    state = nightly_retrain(params, return_state=True)
    assert state.is_failed()
    with pytest.raises(NightlyRunFailed, match="rating on sample-listens failed.*explicit ratings"):
        state.result()
    assert champions(night_home) == {"gat-bpr": 1}
    assert served_versions(night_home) == {"gat-bpr": {1}}


def test_a_second_run_on_the_same_home_is_skipped_or_waits(night_home):
    with exclusive_lock(night_home.root / "nightly.lock", "test holder"):
        state = nightly_retrain(quick(), return_state=True)
    assert state.is_completed() and state.name == "Skipped"
    assert "another nightly run is in progress" in state.message
    assert "test holder" in state.message
    assert not night_home.warehouse.exists()  # nothing ingested, nothing trained


def test_the_lock_waits_for_its_holder_then_names_it_when_it_gives_up(tmp_path):
    path = tmp_path / "nightly.lock"
    released = threading.Event()

    def hold_for_a_moment() -> None:
        with exclusive_lock(path, "first run"):
            released.wait(5)
            time.sleep(0.3)

    holder = threading.Thread(target=hold_for_a_moment)
    holder.start()
    time.sleep(0.1)
    with (
        pytest.raises(LockHeld, match=r"first run \(pid \d+"),
        exclusive_lock(path, "second run", wait_seconds=0.2),
    ):
        pass
    released.set()
    started = time.monotonic()
    with exclusive_lock(path, "second run", wait_seconds=10):
        waited = time.monotonic() - started
    holder.join()
    assert 0.1 < waited < 5


def test_params_refuse_unknown_knobs():
    with pytest.raises(ValueError, match="epoch"):
        NightlyParams.model_validate({"gat_bpr": {"epoch": 3}})


def test_subflows_leave_heartbeats_to_the_parent_run():
    from prefect.settings import get_current_settings

    from flows.nightly import parent_heartbeat_only

    before = get_current_settings().flows.heartbeat_frequency
    assert before is not None  # Prefect's default: the run itself sends heartbeats
    with parent_heartbeat_only():
        assert get_current_settings().flows.heartbeat_frequency is None
    assert get_current_settings().flows.heartbeat_frequency == before


def test_gat_bpr_trains_data_parallel_under_torchrun(night_home):
    from models_src.checkpoint import load_checkpoint

    params = quick(gat_bpr={"processes": 2}, models={"sample-ratings": []})
    state = nightly_retrain(params, return_state=True)
    assert state.is_completed(), state.message
    (outcome,) = state.result()["outcomes"]
    assert outcome["status"] == "promoted", outcome["gate"]["reasons"]
    assert outcome["training"]["processes"] == 2 and outcome["training"]["epochs_run"] == 3
    run_dir = Path(outcome["training"]["run_dir"])
    assert load_checkpoint(run_dir / "best_model.pt")["world_size"] == 2
    assert served_versions(night_home)["gat-bpr"] == {outcome["gate"]["version"]}
