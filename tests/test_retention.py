"""What the data home keeps: the retention policy, `encore gc`, and the cheap file check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import encore

import tasks.registry.registry as registry
from tasks.registry.registry import (
    RegistryError,
    champion,
    promote,
    record_gate_decision,
    register_candidate,
    rollback,
    verify_artifacts,
    version_row,
)
from tasks.registry.retention import RetentionPolicy, apply_removals, plan_removals
from tasks.warehouse.schema import connect


def publish(con, root: Path, name: str, snapshot: int, refit_of: int | None = None) -> int:
    run = root / "runs" / "20260101T000000" / name
    run.mkdir(parents=True)
    (run / "best_model.pt").write_bytes(name.encode() * 1000)
    (run / "checkpoint_epoch_3.pt").write_bytes(b"resume point" * 1000)
    return register_candidate(
        con,
        "gat-bpr",
        "listens",
        snapshot,
        {},
        {},
        run,
        root / "models",
        refit_of=refit_of,
        files=["best_model.pt"],
    )


def add_snapshots(con, count: int) -> None:
    start = con.execute("SELECT coalesce(max(snapshot_id), 0) FROM snapshots").fetchone()[0]
    for snapshot in range(start + 1, start + count + 1):
        con.execute(
            "INSERT INTO snapshots (snapshot_id, dataset, status, created_at)"
            " VALUES (?, 'listens', 'passed', now())",
            [snapshot],
        )


@pytest.fixture
def history(home, con) -> dict[str, int]:
    """Five nights on one dataset: four champions in a row (each with a serving refit; the
    latest has two, the first superseded), and a challenger rejected on night 5."""
    versions: dict[str, int] = {}
    for night in range(1, 5):
        add_snapshots(con, 1)
        evaluated = publish(con, home.root, f"night{night}", night)
        record_gate_decision(con, evaluated, True, ["better"], [], {})
        versions[f"champion{night}"] = evaluated
        versions[f"refit{night}"] = publish(con, home.root, f"refit{night}", night, evaluated)
    versions["refit4b"] = publish(con, home.root, "refit4b", 4, versions["champion4"])
    add_snapshots(con, 1)
    versions["rejected"] = publish(con, home.root, "night5", 5)
    record_gate_decision(con, versions["rejected"], False, ["worse"], [], {})
    return versions


def test_only_the_published_files_are_copied_and_resume_points_stay_behind(home, con, history):
    directory = Path(version_row(con, history["champion4"])["artifact_dir"])
    assert sorted(p.name for p in directory.iterdir()) == ["best_model.pt"]


def test_the_policy_keeps_champion_rollback_chain_and_recent_models(home, con, history):
    planned = plan_removals(
        con, home.root, RetentionPolicy(previous_champions=2, rejected_nights=3)
    )
    # Kept: champion 4 and its latest refit, champions 3 and 2 (two rollbacks) with their refits,
    # and whatever is younger than three newer snapshots (the superseded refit of champion 4, the
    # rejected challenger of night 5). Champion 1 and its refit are beyond both.
    assert {r.version for r in planned} == {history["champion1"], history["refit1"]}
    assert all("2 earlier champions for rollback" in r.reason for r in planned)


def test_expired_versions_lose_their_files_and_keep_their_rows(home, con, history):
    add_snapshots(con, 3)  # three more nights with data: everything not kept is now old
    result = apply_removals(
        con, plan_removals(con, home.root, RetentionPolicy(previous_champions=2, night_runs=0))
    )
    pruned = {history[name] for name in ("champion1", "refit1", "refit4", "rejected")}
    assert set(result["versions"]) == pruned
    for name, version in history.items():
        row = version_row(con, version)
        assert Path(row["artifact_dir"]).exists() == (version not in pruned), name
        assert (row["pruned_at"] is not None) == (version in pruned), name
    assert not (home.root / "runs").exists() or not any((home.root / "runs").iterdir())
    # The champion and two rollbacks still work, from their own refits' files.
    verify_artifacts(champion(con, "ranking", "listens"))
    assert rollback(con, "ranking", "listens")["version"] == history["champion3"]
    assert rollback(con, "ranking", "listens")["version"] == history["champion2"]
    with pytest.raises(RegistryError, match=r"files were removed on \d{4}-\d\d-\d\d"):
        rollback(con, "ranking", "listens")  # champion 1 is beyond the rollback chain
    with pytest.raises(RegistryError, match="only its metrics remain"):
        promote(con, history["rejected"])
    assert champion(con, "ranking", "listens")["version"] == history["champion2"]


def test_a_folder_no_row_points_at_and_old_night_folders_are_removed(home, con, history):
    orphan = home.root / "models" / "gat-bpr" / "listens" / "v00099.partial"
    orphan.mkdir()
    (orphan / "scorer.onnx").write_bytes(b"x" * 10)
    for night in ("20260102T000000", "20260103T000000"):
        (home.root / "runs" / night).mkdir()
    (home.root / "runs" / "my-own-experiment").mkdir()  # not a night's folder: not ours to touch
    planned = plan_removals(con, home.root, RetentionPolicy(night_runs=1))
    removed = {r.path for r in planned if r.version is None}
    runs = home.root / "runs"
    assert removed == {
        str(orphan),
        str(runs / "20260101T000000"),
        str(runs / "20260102T000000"),
    }


def test_an_unchanged_file_is_not_hashed_again_and_a_changed_one_is(home, con, monkeypatch):
    version = publish(con, home.root, "a", 1)
    row = version_row(con, version)
    hashed: list[Path] = []
    real = registry.sha256_file
    monkeypatch.setattr(registry, "sha256_file", lambda p: hashed.append(p) or real(p))
    verify_artifacts(row)
    assert hashed == []
    path = Path(row["artifact_dir"]) / "best_model.pt"
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:-1] + b"!")  # same size
    with pytest.raises(RegistryError, match="tampered or corrupt"):
        verify_artifacts(row)
    assert hashed == [path]


def test_encore_gc_lists_then_removes(home, con, history):
    add_snapshots(con, 3)
    con.close()  # the command opens the warehouse itself
    rejected = Path(version_row_now(home, history["rejected"])["artifact_dir"])
    dry = encore(home.root, "gc", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip().splitlines()[-1].startswith("4 folders; would free 0.0")
    assert f"{rejected}  (rejected, 3 newer snapshots" in dry.stdout
    assert rejected.exists()
    done = encore(home.root, "gc")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("4 folders; freed ")
    assert not rejected.exists()
    listed = encore(home.root, "models").stdout.splitlines()
    assert [line.split()[0] for line in listed if "[files removed by gc]" in line] == [
        f"v{history[name]}" for name in ("rejected", "refit4", "refit1", "champion1")
    ]
    again = encore(home.root, "gc")
    assert again.stdout.strip() == "0 folders; freed 0.0 MB"


def version_row_now(home, version: int) -> dict:
    con = connect(home.warehouse)
    try:
        return version_row(con, version)
    finally:
        con.close()


def test_registry_rows_record_file_stats(home, con, history):
    stats = json.loads(version_row(con, history["champion4"])["file_stats_json"])
    assert set(stats) == {"best_model.pt"}


def test_encore_runs_older_than_the_policy_leave_prefects_database_and_others_stay(prefect_api):
    from prefect import flow
    from prefect.artifacts import create_markdown_artifact
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from tasks.prefect_history import prune_prefect_history

    @flow(name="batch-score")
    def an_encore_run() -> None:
        create_markdown_artifact(markdown="scored", key="history-test")

    @flow(name="someone-elses-flow")
    def another_teams_run() -> None:
        create_markdown_artifact(markdown="theirs", key="history-test-theirs")

    ours = an_encore_run(return_state=True).state_details.flow_run_id
    theirs = another_teams_run(return_state=True).state_details.flow_run_id
    assert prune_prefect_history(days=90) == {"flow_runs": 0, "artifacts": 0}  # all too recent
    deleted = prune_prefect_history(days=0)  # every finished run ended before now
    assert deleted["flow_runs"] >= 1 and deleted["artifacts"] >= 1
    with get_client(sync_client=True) as client:
        with pytest.raises(ObjectNotFound):
            client.read_flow_run(ours)
        assert client.read_flow_run(theirs).id == theirs
        keys = {a.key for a in client.read_artifacts()}
    assert "history-test" not in keys and "history-test-theirs" in keys
