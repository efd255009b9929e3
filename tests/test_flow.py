"""The ingest flow under a real (temporary) Prefect server: runs, idempotency, failure path."""

from __future__ import annotations

import shutil

import pytest
from conftest import write_days

from flows.ingest import SnapshotFailed, ingest
from tasks.warehouse.schema import warehouse


@pytest.fixture(autouse=True)
def prefect_server(prefect_api):
    """Flows here run against the session's Prefect server (conftest)."""


def test_flow_ingests_validates_and_is_idempotent(flow_home):
    write_days(flow_home, range(3))
    first = ingest()
    assert [(r["dataset"], r["status"]) for r in first["reports"]] == [
        ("sample-listens", "passed"),
        ("sample-ratings", "passed"),
    ]
    for report in first["reports"]:
        totals = report["accounting"]["totals"]
        assert (
            totals["rows_read"]
            == totals["loaded"] + totals["duplicates"] + totals["rejected"] + totals["quarantined"]
        )
        assert len(report["accounting"]["files"]) == 3
    again = ingest()
    assert again["reports"] == []
    assert set(again["idle"]) == {"sample-listens", "sample-ratings"}
    write_days(flow_home, range(3, 4))
    next_night = ingest(datasets=["sample-listens"])
    assert [len(r["accounting"]["files"]) for r in next_night["reports"]] == [1]
    with warehouse(flow_home.warehouse) as con:
        snapshots = con.execute(
            "SELECT dataset, status FROM snapshots ORDER BY snapshot_id"
        ).fetchall()
    assert snapshots == [
        ("sample-listens", "passed"),
        ("sample-ratings", "passed"),
        ("sample-listens", "passed"),
    ]


def test_a_bad_night_fails_the_flow_and_is_never_trainable(flow_home):
    write_days(flow_home, range(2))
    ingest()
    folder = flow_home.landing / "sample-ratings"
    newest = sorted(folder.glob("*.csv"))[-1]
    broken = folder / "ratings_2026-10-03.csv"
    shutil.copy(newest, broken)
    # Tonight's file uses a 1-10 scale by mistake: every row fails 'rating within the scale'.
    lines = broken.read_text().splitlines()
    header, body = lines[0], lines[1:]
    broken.write_text(
        "\n".join(
            [header] + [",".join(r.split(",")[:3] + ["9.5"] + r.split(",")[4:]) for r in body]
        )
        + "\n"
    )
    broken.write_text(broken.read_text().replace("2026-10-02", "2026-10-03"))
    state = ingest(datasets=["sample-ratings"], return_state=True)
    assert state.is_failed() and state.message.startswith("validation failed for sample-ratings")
    with pytest.raises(SnapshotFailed, match="sample-ratings"):
        state.result()
    with warehouse(flow_home.warehouse) as con:
        status, quarantined = con.execute(
            "SELECT status, quarantined FROM snapshots ORDER BY snapshot_id DESC LIMIT 1"
        ).fetchone()
        in_training = con.execute(
            "SELECT count(*) FROM training_interactions WHERE dataset = 'sample-ratings' "
            "AND ts >= '2026-10-03'"
        ).fetchone()[0]
    assert status == "failed"
    assert quarantined == len(body)
    assert in_training == 0


@pytest.mark.slow
def test_train_flow_trains_both_models_from_the_warehouse(flow_home):
    from pathlib import Path

    from flows.train import train

    write_days(flow_home, range(3))
    ingest()
    rating = train(dataset="sample-ratings", model="rating", epochs=2)
    assert rating["epochs_run"] == 2 and 0 < rating["test"]["rmse"] < 2
    gat = train(dataset="sample-listens", model="gat-bpr", epochs=1)
    assert 0 <= gat["test"]["recall@10"] <= 1
    run_dir = Path(gat["run_dir"])
    assert run_dir.name == "sample-listens-gat-bpr-snapshot1"
    assert (run_dir / "best_model.pt").exists() and (run_dir / "metrics.json").exists()


@pytest.mark.slow
def test_batch_score_flow_scores_with_the_champion(flow_home):
    from pathlib import Path

    from flows.batch_score import batch_score
    from flows.train import train
    from tasks.lock import WRITER_LOCK, exclusive_lock
    from tasks.registry.publish import publish_run
    from tasks.registry.registry import record_gate_decision

    write_days(flow_home, range(2))
    ingest()
    run = train(dataset="sample-listens", model="gat-bpr", epochs=1)
    with warehouse(flow_home.warehouse) as con:
        version = publish_run(
            con, Path(run["run_dir"]), "sample-listens", run, flow_home.root / "models"
        )
        record_gate_decision(con, version, True, ["first night"], [], {})
    (result,) = batch_score(dataset="sample-listens")
    (every,) = batch_score()  # no arguments: every ranking champion
    assert (every["dataset"], every["kind"], every["model_version"]) == (
        "sample-listens",
        "gat-bpr",
        version,
    )
    with pytest.raises(LookupError, match="no ranking champion for sample-ratings"):
        batch_score(dataset="sample-ratings")
    assert result["model_version"] == version and result["fallback_users"] == 0
    assert result["rows"] == result["users"] * 10
    with warehouse(flow_home.warehouse) as con:
        assert con.execute("SELECT count(*) FROM recommendations").fetchone()[0] == result["rows"]
    with exclusive_lock(flow_home.root / WRITER_LOCK, "nightly flow run test-night"):
        refused = batch_score(dataset="sample-listens", lock_wait_seconds=0, return_state=True)
    assert refused.is_failed()
    assert refused.message.startswith("not scored: the data home is busy")
    assert "nightly flow run test-night" in refused.message


def test_only_io_errors_are_retried():
    import duckdb
    from prefect.states import Completed, Failed

    from tasks.retries import IO_RETRIES

    retry = IO_RETRIES["retry_condition_fn"]
    assert IO_RETRIES["retries"] > 0
    assert retry(None, None, Failed(data=OSError("disk went away")))
    assert retry(None, None, Failed(data=duckdb.IOException("database is locked")))
    assert not retry(None, None, Failed(data=ValueError("rating 'great' is not a number")))
    assert not retry(None, None, Completed(data=1))
