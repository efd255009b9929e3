"""Model registry: immutable versions, one-transaction champion switch, audit log, checksums."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tasks.warehouse.registry import (
    RegistryError,
    champion,
    promote,
    record_gate_decision,
    register_candidate,
    rollback,
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
    assert champion(con, "gat-bpr", "listens")["version"] == 3
    assert rollback(con, "gat-bpr", "listens", actor="ops")["version"] == 2
    assert rollback(con, "gat-bpr", "listens")["version"] == 1  # two steps back, not a toggle
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
    assert champion(con, "gat-bpr", "listens") is None


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
        import tasks.warehouse.registry as registry
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
        verify_artifacts(champion(con, "gat-bpr", "listens"))
        assert con.execute("SELECT count(*) FROM promotions").fetchone()[0] == 1
    finally:
        con.close()
