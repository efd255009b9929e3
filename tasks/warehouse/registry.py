"""The model registry in the warehouse: versions, their artifacts, and who is champion.

- `model_versions`: one row per trained model (kind, dataset, snapshot, config, metrics, artifact
  directory and the sha256 of each artifact, status candidate | champion | retired | rejected).
- `promotions`: append-only log of every decision (gate verdicts, manual promotions, rollbacks)
  with the metrics compared, the thresholds and the reasons in words.

Artifacts are copied into an immutable per-version directory (files read-only) before the row
exists. Every status change is one transaction, so a crash at any point leaves exactly one
champion per (kind, dataset), whose files are complete and verified by checksum.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import duckdb

from tasks.warehouse.schema import transaction

REGISTRY_SCHEMA = """
CREATE SEQUENCE IF NOT EXISTS model_version_ids START 1;
CREATE TABLE IF NOT EXISTS model_versions (
    version INTEGER PRIMARY KEY,
    kind VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    snapshot_id INTEGER,
    config_json VARCHAR NOT NULL,
    metrics_json VARCHAR NOT NULL,
    artifact_dir VARCHAR NOT NULL,
    checksums_json VARCHAR NOT NULL,
    status VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);
CREATE SEQUENCE IF NOT EXISTS promotion_ids START 1;
CREATE TABLE IF NOT EXISTS promotions (
    promotion_id INTEGER PRIMARY KEY,
    decided_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    kind VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    action VARCHAR NOT NULL,          -- gate | manual-promote | rollback
    challenger INTEGER NOT NULL,
    previous_champion INTEGER,
    promoted BOOLEAN NOT NULL,
    compared_json VARCHAR,
    thresholds_json VARCHAR,
    reasons VARCHAR NOT NULL,
    actor VARCHAR NOT NULL
);
"""


class RegistryError(RuntimeError):
    """A registry operation that cannot be done (unknown version, tampered artifact...)."""


def ensure_registry(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(REGISTRY_SCHEMA)


def crash_point(stage: str) -> None:
    """A seam for fault-injection tests (they replace it to kill the process mid-switch)."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _freeze(directory: Path) -> dict[str, str]:
    """Checksums of every file, then make them read-only: a version's files never change."""
    checksums = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        checksums[str(path.relative_to(directory))] = sha256_file(path)
        path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    return checksums


def allocate_version(con: duckdb.DuckDBPyConnection) -> int:
    """Reserve a version number before exporting (the ONNX file records its own version)."""
    ensure_registry(con)
    return con.execute("SELECT nextval('model_version_ids')").fetchone()[0]


def register_candidate(
    con: duckdb.DuckDBPyConnection,
    kind: str,
    dataset: str,
    snapshot_id: int | None,
    config: dict,
    metrics: dict,
    source_dir: Path,
    models_root: Path,
    version: int | None = None,
) -> int:
    """Copy the run's artifacts into models_root/<kind>/<dataset>/v<version> and register them
    as a candidate. The directory is complete (copied under a temp name, then renamed) before
    the row that points at it is committed."""
    version = version or allocate_version(con)
    target = models_root / kind / dataset / f"v{version:05d}"
    staging = target.with_name(target.name + ".partial")
    for stale in (staging, target):  # left by a crash before an earlier commit
        if stale.exists():
            _make_writable(stale)
            shutil.rmtree(stale)
    shutil.copytree(source_dir, staging)
    checksums = _freeze(staging)
    os.replace(staging, target)
    con.execute(
        """INSERT INTO model_versions (version, kind, dataset, snapshot_id, config_json,
               metrics_json, artifact_dir, checksums_json, status)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'candidate')""",
        [
            version,
            kind,
            dataset,
            snapshot_id,
            json.dumps(config),
            json.dumps(metrics, default=float),
            str(target),
            json.dumps(checksums),
        ],
    )
    return version


def _make_writable(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            path.chmod(stat.S_IRUSR | stat.S_IWUSR)


def version_row(con: duckdb.DuckDBPyConnection, version: int) -> dict:
    ensure_registry(con)
    cursor = con.execute("SELECT * FROM model_versions WHERE version = ?", [version])
    row = cursor.fetchone()
    if row is None:
        raise RegistryError(f"no model version {version}")
    return dict(zip([d[0] for d in cursor.description], row, strict=True))


def champion(con: duckdb.DuckDBPyConnection, kind: str, dataset: str) -> dict | None:
    ensure_registry(con)
    row = con.execute(
        "SELECT version FROM model_versions WHERE kind = ? AND dataset = ? AND status = 'champion'",
        [kind, dataset],
    ).fetchall()
    if len(row) > 1:
        raise RegistryError(f"{kind}/{dataset} has {len(row)} champions; the registry is corrupt")
    return version_row(con, row[0][0]) if row else None


def verify_artifacts(row: dict) -> None:
    """Refuse a version whose files are missing or differ from the registered checksums."""
    directory = Path(row["artifact_dir"])
    for name, expected in json.loads(row["checksums_json"]).items():
        path = directory / name
        if not path.exists():
            raise RegistryError(f"model version {row['version']}: {path} is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise RegistryError(
                f"model version {row['version']}: {path} has sha256 {actual[:12]}…, the registry"
                f" says {expected[:12]}…; refusing a tampered or corrupt model file"
            )


def _log(
    con,
    row: dict,
    action: str,
    previous: int | None,
    promoted: bool,
    reasons: list[str],
    actor: str,
    compared: list | None = None,
    thresholds: dict | None = None,
) -> None:
    con.execute(
        """INSERT INTO promotions (promotion_id, kind, dataset, action, challenger,
               previous_champion, promoted, compared_json, thresholds_json, reasons, actor)
           VALUES (nextval('promotion_ids'), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        [
            row["kind"],
            row["dataset"],
            action,
            row["version"],
            previous,
            promoted,
            json.dumps(compared, default=float) if compared is not None else None,
            json.dumps(thresholds) if thresholds is not None else None,
            "\n".join(reasons),
            actor,
        ],
    )


def _switch(con, row: dict, action: str, reasons: list[str], actor: str, **log) -> None:
    """Make `row` the champion of its (kind, dataset) in one transaction."""
    verify_artifacts(row)
    current = champion(con, row["kind"], row["dataset"])
    with transaction(con):
        if current is not None:
            con.execute(
                "UPDATE model_versions SET status = 'retired' WHERE version = ?",
                [current["version"]],
            )
        crash_point("retired old champion")
        con.execute(
            "UPDATE model_versions SET status = 'champion' WHERE version = ?", [row["version"]]
        )
        crash_point("crowned new champion")
        _log(con, row, action, current["version"] if current else None, True, reasons, actor, **log)


def record_gate_decision(
    con: duckdb.DuckDBPyConnection,
    version: int,
    promote: bool,
    reasons: list[str],
    compared: list[dict],
    thresholds: dict,
) -> None:
    """Apply the gate's verdict: promote (one transaction) or mark rejected, and log it."""
    row = version_row(con, version)
    if promote:
        _switch(con, row, "gate", reasons, "gate", compared=compared, thresholds=thresholds)
        return
    current = champion(con, row["kind"], row["dataset"])
    with transaction(con):
        con.execute("UPDATE model_versions SET status = 'rejected' WHERE version = ?", [version])
        _log(
            con,
            row,
            "gate",
            current["version"] if current else None,
            False,
            reasons,
            "gate",
            compared=compared,
            thresholds=thresholds,
        )


def promote(con: duckdb.DuckDBPyConnection, version: int, actor: str = "human") -> dict:
    """A human's override: make `version` the champion whatever the gate said (logged)."""
    row = version_row(con, version)
    if row["status"] == "champion":
        raise RegistryError(f"model version {version} already is the champion")
    _switch(con, row, "manual-promote", [f"manual promotion by {actor}"], actor)
    return version_row(con, version)


def rollback(con: duckdb.DuckDBPyConnection, kind: str, dataset: str, actor: str = "human") -> dict:
    """Back to the champion the current one replaced when it was promoted (logged). Rollbacks
    themselves are skipped, so rolling back twice goes two steps back, not back and forth."""
    current = champion(con, kind, dataset)
    if current is None:
        raise RegistryError(f"{kind}/{dataset} has no champion to roll back from")
    previous = con.execute(
        """SELECT previous_champion FROM promotions
           WHERE kind = ? AND dataset = ? AND promoted AND challenger = ?
             AND previous_champion IS NOT NULL AND action <> 'rollback'
           ORDER BY promotion_id DESC LIMIT 1""",
        [kind, dataset, current["version"]],
    ).fetchone()
    if previous is None:
        raise RegistryError(f"{kind}/{dataset}: version {current['version']} has no predecessor")
    row = version_row(con, previous[0])
    _switch(con, row, "rollback", [f"rollback from version {current['version']} by {actor}"], actor)
    return version_row(con, row["version"])
