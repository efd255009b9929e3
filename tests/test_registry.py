"""Model registry: immutable versions, one-transaction champion switch, audit log, checksums."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tasks.registry.registry import (
    RegistryError,
    champion,
    promote,
    record_gate_decision,
    register_candidate,
    rollback,
    serving_version,
    verify_artifacts,
    version_row,
)
from tasks.warehouse.schema import connect


def run_dir(tmp_path: Path, name: str) -> Path:
    directory = tmp_path / "runs" / name
    directory.mkdir(parents=True)
    (directory / "best_model.pt").write_bytes(name.encode() * 100)
    (directory / "metrics.json").write_text(json.dumps({"name": name}))
    return directory


def register(con, tmp_path, name: str, kind: str = "gat-bpr") -> int:
    return register_candidate(
        con,
        kind,
        "listens",
        1,
        {"lr": 0.05},
        {"test": {"recall@10": 0.2}},
        run_dir(tmp_path, name),
        tmp_path / "models",
    )


def statuses(con) -> dict[int, str]:
    return dict(con.execute("SELECT version, status FROM model_versions ORDER BY 1").fetchall())


def test_candidate_files_are_copied_frozen_and_checksummed(con, tmp_path):
    version = register(con, tmp_path, "a")
    row = version_row(con, version)
    directory = Path(row["artifact_dir"])
    assert directory == tmp_path / "models" / "gat-bpr" / "listens" / "v00001"
    assert sorted(json.loads(row["checksums_json"])) == ["best_model.pt", "metrics.json"]
    assert not (directory / "best_model.pt").stat().st_mode & 0o222  # read-only
    verify_artifacts(row)


def test_gate_promotes_retires_rejects_and_logs(con, tmp_path):
    first, second, third = (register(con, tmp_path, n) for n in "abc")
    record_gate_decision(con, first, True, ["first night"], [], {"tolerance": 0.005})
    record_gate_decision(con, second, True, ["better"], [{"check": "primary gain"}], {})
    record_gate_decision(con, third, False, ["REJECT: worse"], [], {})
    assert statuses(con) == {1: "retired", 2: "champion", 3: "rejected"}
    log = con.execute(
        "SELECT challenger, previous_champion, promoted, reasons FROM promotions"
        " ORDER BY promotion_id"
    ).fetchall()
    assert log == [
        (1, None, True, "first night"),
        (2, 1, True, "better"),
        (3, 2, False, "REJECT: worse"),
    ]


def test_manual_promote_and_rollback_are_logged(con, tmp_path):
    versions = [register(con, tmp_path, n) for n in "abc"]
    for version in versions:
        record_gate_decision(con, version, True, ["ok"], [], {})
    assert champion(con, "ranking", "listens")["version"] == 3
    assert rollback(con, "ranking", "listens", actor="ops")["version"] == 2
    assert rollback(con, "ranking", "listens")["version"] == 1  # two steps back, not a toggle
    assert promote(con, 3, actor="alice")["status"] == "champion"
    actions = con.execute("SELECT action, actor FROM promotions ORDER BY promotion_id").fetchall()
    assert actions[-3:] == [("rollback", "ops"), ("rollback", "human"), ("manual-promote", "alice")]
    with pytest.raises(RegistryError, match="already is the champion"):
        promote(con, 3)


def test_tampered_model_file_is_refused(con, tmp_path):
    version = register(con, tmp_path, "a")
    path = Path(version_row(con, version)["artifact_dir"]) / "best_model.pt"
    path.chmod(0o644)
    path.write_bytes(b"evil")
    with pytest.raises(RegistryError, match="refusing a tampered or corrupt model file"):
        promote(con, version)
    assert champion(con, "ranking", "listens") is None


def test_a_same_size_edit_with_its_mtime_put_back_is_refused(con, tmp_path):
    """Size, mtime and inode as registered: only the inode change time shows the edit."""
    import os

    version = register(con, tmp_path, "a")
    path = Path(version_row(con, version)["artifact_dir"]) / "best_model.pt"
    before = path.stat()
    original = path.read_bytes()
    path.chmod(0o644)
    with path.open("r+b") as handle:  # in place: the inode stays
        handle.write(bytes([original[0] ^ 0xFF]) + original[1:])
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    path.chmod(before.st_mode)
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_size, before.st_mtime_ns, before.st_ino
    )  # fmt: skip
    with pytest.raises(RegistryError, match="refusing a tampered or corrupt model file"):
        promote(con, version)


@pytest.mark.parametrize("stage", ["retired old champion", "crowned new champion"])
def test_crash_mid_switch_leaves_exactly_one_verified_champion(home, tmp_path, stage):
    con = connect(home.warehouse)
    old = register(con, tmp_path, "old")
    record_gate_decision(con, old, True, ["first"], [], {})
    new = register(con, tmp_path, "new")
    con.close()
    child = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        sys.path[:0] = {sys.path!r}
        import tasks.registry.registry as registry
        from tasks.warehouse.schema import connect
        registry.crash_point = lambda s: os._exit(3) if s == {stage!r} else None
        con = connect(Path({str(home.warehouse)!r}))
        registry.record_gate_decision(con, {new}, True, ["better"], [], {{}})
    """)
    crashed = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert crashed.returncode == 3, crashed.stderr
    con = connect(home.warehouse)
    try:
        assert statuses(con) == {old: "champion", new: "candidate"}
        verify_artifacts(champion(con, "ranking", "listens"))
        assert con.execute("SELECT count(*) FROM promotions").fetchone()[0] == 1
    finally:
        con.close()


def test_one_champion_per_slot_whatever_its_family_and_refits_serve_for_it(con, tmp_path):
    trained = register(con, tmp_path, "gat")
    record_gate_decision(con, trained, True, ["first night"], [], {}, rule="first night")
    als = register(con, tmp_path, "als", kind="als")
    record_gate_decision(con, als, True, ["als better"], [], {}, rule="significantly better")
    rating = register(con, tmp_path, "stars", kind="rating")
    record_gate_decision(con, rating, True, ["first night"], [], {})
    assert champion(con, "ranking", "listens")["kind"] == "als"
    assert champion(con, "rating", "listens")["version"] == rating
    assert statuses(con)[trained] == "retired"
    assert serving_version(con, champion(con, "ranking", "listens"))["version"] == als
    refit = register_candidate(
        con, "als", "listens", 1, {}, {}, run_dir(tmp_path, "als-all"), tmp_path / "models",
        refit_of=als,
    )  # fmt: skip
    row = version_row(con, refit)
    assert (row["role"], row["status"], row["slot"]) == ("serving", "refit", "ranking")
    assert serving_version(con, champion(con, "ranking", "listens"))["version"] == refit
    with pytest.raises(RegistryError, match=f"serving refit of v{als}; promote v{als}"):
        promote(con, refit)
    rule = con.execute("SELECT rule FROM promotions WHERE challenger = ?", [als]).fetchone()
    assert rule == ("significantly better",)


# The registry as Encore created it before slots, serving refits and evaluation records.
REGISTRY_BEFORE_SLOTS = """
CREATE TABLE model_versions (
    version INTEGER PRIMARY KEY, kind VARCHAR NOT NULL, dataset VARCHAR NOT NULL,
    snapshot_id INTEGER, config_json VARCHAR NOT NULL, metrics_json VARCHAR NOT NULL,
    artifact_dir VARCHAR NOT NULL, checksums_json VARCHAR NOT NULL, status VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);
CREATE TABLE promotions (
    promotion_id INTEGER PRIMARY KEY, decided_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    kind VARCHAR NOT NULL, dataset VARCHAR NOT NULL, action VARCHAR NOT NULL,
    challenger INTEGER NOT NULL, previous_champion INTEGER, promoted BOOLEAN NOT NULL,
    compared_json VARCHAR, thresholds_json VARCHAR, reasons VARCHAR NOT NULL,
    actor VARCHAR NOT NULL
);
INSERT INTO model_versions (version, kind, dataset, snapshot_id, config_json, metrics_json,
    artifact_dir, checksums_json, status)
VALUES (1, 'gat-bpr', 'l', 1, '{}', '{}', '/x', '{}', 'champion'),
       (2, 'rating', 'r', 1, '{}', '{}', '/y', '{}', 'champion');
"""


def test_a_registry_from_before_slots_is_migrated(home):
    con = connect(home.warehouse)
    con.execute(REGISTRY_BEFORE_SLOTS)
    assert champion(con, "ranking", "l")["version"] == 1
    assert champion(con, "rating", "r")["role"] == "evaluated"
    assert champion(con, "ranking", "l")["evaluation_json"] is None  # first-night rules for it
    assert "rule" in {c[0] for c in con.execute("DESCRIBE promotions").fetchall()}
    con.close()


def test_latest_of_kind_is_the_newest_decided_version_of_that_family_with_its_files(con, tmp_path):
    from tasks.registry.registry import latest_of_kind

    assert latest_of_kind(con, "listens", "gat-bpr") is None
    first = register(con, tmp_path, "a")
    assert latest_of_kind(con, "listens", "gat-bpr") is None  # a candidate: a night in progress
    record_gate_decision(con, first, False, ["lost to the baseline"], [], {})
    baseline = register(con, tmp_path, "b", kind="als")
    record_gate_decision(con, baseline, True, ["best on val"], [], {})
    assert latest_of_kind(con, "listens", "gat-bpr")["version"] == first  # rejected, kept
    second = register(con, tmp_path, "c")
    record_gate_decision(con, second, False, ["lost again"], [], {})
    assert latest_of_kind(con, "listens", "gat-bpr")["version"] == second
    con.execute("UPDATE model_versions SET pruned_at = now() WHERE version = ?", [second])
    assert latest_of_kind(con, "listens", "gat-bpr")["version"] == first  # files gone: skipped
    assert latest_of_kind(con, "other", "gat-bpr") is None
