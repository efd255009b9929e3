"""The model registry in the warehouse: versions, their artifacts, and who is champion.

- `model_versions`: one row per model (kind = its family: gat-bpr, rating, als, most-popular,
  bias; slot = what it serves: `ranking` lists or `rating` predictions; dataset, snapshot,
  config, metrics, artifact directory and the sha256 of each artifact, the evaluation settings
  it was judged under, status candidate | champion | retired | rejected | refit).
  A version is either `evaluated` (trained on the train split, judged by the gate, the one
  tomorrow's gate compares against) or `serving`: the accepted configuration refit on all of the
  snapshot, linked to its evaluated version by `refit_of`. Batch scoring and `encore predict`
  use the champion's latest serving refit, or the champion itself when it has none.
- `promotions`: append-only log of every decision (gate verdicts, manual promotions, rollbacks)
  with the metrics compared, the thresholds, the rule that fired and the reasons in words.

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
from collections.abc import Collection
from pathlib import Path

import duckdb

from tasks.faults import crash_point
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
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    slot VARCHAR,
    role VARCHAR,
    refit_of INTEGER,
    evaluation_json VARCHAR,
    file_stats_json VARCHAR,
    pruned_at TIMESTAMP,
    pruned_reason VARCHAR
);
CREATE SEQUENCE IF NOT EXISTS promotion_ids START 1;
CREATE TABLE IF NOT EXISTS promotions (
    promotion_id INTEGER PRIMARY KEY,
    decided_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    kind VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    action VARCHAR NOT NULL,          -- gate | manual-promote | rollback | interrupted
    challenger INTEGER NOT NULL,
    previous_champion INTEGER,
    promoted BOOLEAN NOT NULL,
    compared_json VARCHAR,
    thresholds_json VARCHAR,
    reasons VARCHAR NOT NULL,
    actor VARCHAR NOT NULL,
    rule VARCHAR
);
"""

# Warehouses registered before slots, serving refits, evaluation records and file stats: every
# old version is an evaluated one of the slot its kind served then (and, with no evaluation
# record, the gate treats it as evaluated under other settings; with no file stats, its files are
# hashed in full on every use).
REGISTRY_MIGRATIONS = """
ALTER TABLE model_versions ADD COLUMN IF NOT EXISTS slot VARCHAR;
ALTER TABLE model_versions ADD COLUMN IF NOT EXISTS role VARCHAR;
ALTER TABLE model_versions ADD COLUMN IF NOT EXISTS refit_of INTEGER;
ALTER TABLE model_versions ADD COLUMN IF NOT EXISTS evaluation_json VARCHAR;
ALTER TABLE model_versions ADD COLUMN IF NOT EXISTS file_stats_json VARCHAR;
ALTER TABLE model_versions ADD COLUMN IF NOT EXISTS pruned_at TIMESTAMP;
ALTER TABLE model_versions ADD COLUMN IF NOT EXISTS pruned_reason VARCHAR;
ALTER TABLE promotions ADD COLUMN IF NOT EXISTS rule VARCHAR;
UPDATE model_versions SET slot = CASE WHEN kind = 'rating' THEN 'rating' ELSE 'ranking' END
    WHERE slot IS NULL;
UPDATE model_versions SET role = 'evaluated' WHERE role IS NULL;
"""

SLOTS = ("ranking", "rating")


def slot_of(kind: str) -> str:
    """The slot a model family serves: the rating model predicts ratings, the rest rank."""
    return "rating" if kind in ("rating", "bias") else "ranking"


class RegistryError(RuntimeError):
    """A registry operation that cannot be done (unknown version, tampered artifact...)."""


def ensure_registry(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(REGISTRY_SCHEMA)
    columns = {
        r[0]
        for r in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = 'model_versions'"
        ).fetchall()
    }
    if "pruned_reason" not in columns:
        con.execute(REGISTRY_MIGRATIONS)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _stat_key(path: Path) -> list[int]:
    """What a change to a file cannot leave as it was: its size, modification time, inode and
    inode change time. The last is the one an edit cannot put back: a write, a chmod and even
    the utime call that restores a modification time all set it to now, and no user call sets
    it. (Size, mtime and inode alone let an altered file of the same size, its mtime restored,
    pass unhashed: issue 37.) Any other change only costs a full hash, never a refusal."""
    info = path.stat()
    return [info.st_size, info.st_mtime_ns, info.st_ino, info.st_ctime_ns]


def _freeze(directory: Path) -> tuple[dict[str, str], dict[str, list[int]]]:
    """Checksums and stat keys of every file, then make them read-only: a version's files never
    change. Hashed once here; later uses compare stat keys and hash only a file that changed."""
    checksums, stats = {}, {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        name = str(path.relative_to(directory))
        checksums[name] = sha256_file(path)
        path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        stats[name] = _stat_key(path)
    return checksums, stats


def _copy_published(source_dir: Path, staging: Path, files: Collection[str] | None) -> None:
    """The run directory's `files` (all of it when None) into `staging`."""
    if files is None:
        shutil.copytree(source_dir, staging)
        return
    staging.mkdir(parents=True)
    for name in files:
        if (source_dir / name).is_file():
            shutil.copy2(source_dir / name, staging / name)


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
    evaluation: dict | None = None,
    refit_of: int | None = None,
    files: Collection[str] | None = None,
) -> int:
    """Copy the run's artifacts (`files` of it, or all) into
    models_root/<kind>/<dataset>/v<version> and register them as a candidate (or, with
    `refit_of`, as the serving refit of that version). The directory is complete (copied under a
    temp name, then renamed) before the row that points at it is committed."""
    ensure_registry(con)
    version = version or allocate_version(con)
    target = models_root / kind / dataset / f"v{version:05d}"
    staging = target.with_name(target.name + ".partial")
    for stale in (staging, target):  # left by a crash before an earlier commit
        if stale.exists():
            _make_writable(stale)
            shutil.rmtree(stale)
    _copy_published(source_dir, staging, files)
    checksums, stats = _freeze(staging)
    os.replace(staging, target)
    con.execute(
        """INSERT INTO model_versions (version, kind, dataset, snapshot_id, config_json,
               metrics_json, artifact_dir, checksums_json, status, slot, role, refit_of,
               evaluation_json, file_stats_json)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        [
            version,
            kind,
            dataset,
            snapshot_id,
            json.dumps(config),
            json.dumps(metrics, default=float),
            str(target),
            json.dumps(checksums),
            "candidate" if refit_of is None else "refit",
            slot_of(kind),
            "evaluated" if refit_of is None else "serving",
            refit_of,
            json.dumps(evaluation, default=float) if evaluation is not None else None,
            json.dumps(stats),
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


def champion(con: duckdb.DuckDBPyConnection, slot: str, dataset: str) -> dict | None:
    """The evaluated version that holds `slot` (ranking | rating) on `dataset`, or None."""
    ensure_registry(con)
    row = con.execute(
        "SELECT version FROM model_versions WHERE slot = ? AND dataset = ? AND status = 'champion'",
        [slot, dataset],
    ).fetchall()
    if len(row) > 1:
        raise RegistryError(f"{slot}/{dataset} has {len(row)} champions; the registry is corrupt")
    return version_row(con, row[0][0]) if row else None


def latest_of_kind(con: duckdb.DuckDBPyConnection, dataset: str, kind: str) -> dict | None:
    """The newest evaluated version of `kind` on `dataset` whose files are kept, or None."""
    ensure_registry(con)
    row = con.execute(
        """SELECT max(version) FROM model_versions
           WHERE dataset = ? AND kind = ? AND role = 'evaluated' AND pruned_at IS NULL
             AND status != 'candidate'""",
        [dataset, kind],
    ).fetchone()
    return version_row(con, row[0]) if row and row[0] is not None else None


def record_evaluation(con: duckdb.DuckDBPyConnection, version: int, record: dict) -> None:
    """The settings the gate evaluated `version` under (set once: the first evaluation)."""
    con.execute(
        "UPDATE model_versions SET evaluation_json = ?"
        " WHERE version = ? AND evaluation_json IS NULL",
        [json.dumps(record, default=float), version],
    )


def serving_version(con: duckdb.DuckDBPyConnection, evaluated: dict) -> dict:
    """What serves for an evaluated version: its latest serving refit, else itself."""
    row = con.execute(
        "SELECT max(version) FROM model_versions WHERE refit_of = ? AND role = 'serving'",
        [evaluated["version"]],
    ).fetchone()
    return version_row(con, row[0]) if row and row[0] is not None else evaluated


def verify_artifacts(row: dict) -> None:
    """Refuse a version whose files were pruned, are missing or differ from the registered
    checksums. A file whose stat key is as registered is taken as unchanged; any other is hashed
    in full (so a nightly gate does not re-read every champion's files)."""
    if row.get("pruned_at") is not None:
        raise RegistryError(
            f"model version {row['version']}: its files were removed on"
            f" {row['pruned_at']:%Y-%m-%d} ({row['pruned_reason']}); only its metrics remain"
        )
    directory = Path(row["artifact_dir"])
    stats = json.loads(row.get("file_stats_json") or "{}")
    for name, expected in json.loads(row["checksums_json"]).items():
        path = directory / name
        if not path.exists():
            raise RegistryError(f"model version {row['version']}: {path} is missing")
        if stats.get(name) == _stat_key(path):
            continue
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
    rule: str | None = None,
) -> None:
    con.execute(
        """INSERT INTO promotions (promotion_id, kind, dataset, action, challenger,
               previous_champion, promoted, compared_json, thresholds_json, reasons, actor, rule)
           VALUES (nextval('promotion_ids'), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
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
            rule,
        ],
    )


def _switch(con, row: dict, action: str, reasons: list[str], actor: str, **log) -> None:
    """Make `row` the champion of its (slot, dataset) in one transaction."""
    if row.get("role") == "serving":
        raise RegistryError(
            f"v{row['version']} is the serving refit of v{row['refit_of']};"
            f" promote v{row['refit_of']}"
        )
    verify_artifacts(row)
    current = champion(con, row["slot"], row["dataset"])
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
    rule: str | None = None,
) -> None:
    """Apply the gate's verdict on `version`: promote (one transaction) or mark rejected, and
    log it."""
    row = version_row(con, version)
    log = {"compared": compared, "thresholds": thresholds, "rule": rule}
    if promote:
        _switch(con, row, "gate", reasons, "gate", **log)
        return
    _reject(con, row, "gate", reasons, "gate", **log)


def _reject(con, row: dict, action: str, reasons: list[str], actor: str, **log) -> None:
    """`row`'s version rejected and the decision logged, in one transaction."""
    current = champion(con, row["slot"], row["dataset"])
    with transaction(con):
        con.execute(
            "UPDATE model_versions SET status = 'rejected' WHERE version = ?", [row["version"]]
        )
        _log(con, row, action, current["version"] if current else None, False, reasons, actor,
             **log)  # fmt: skip


def abandon_candidate(con: duckdb.DuckDBPyConnection, version: int, reason: str) -> None:
    """A candidate a killed night published but never gated: rejected, with why, so the next
    night trains its snapshot again instead of taking it for done (logged)."""
    row = version_row(con, version)
    if row["status"] != "candidate":
        raise RegistryError(f"model version {version} is {row['status']}, not a candidate")
    _reject(con, row, "interrupted", [reason], "nightly")


def promote(con: duckdb.DuckDBPyConnection, version: int, actor: str = "human") -> dict:
    """A human's override: make `version` the champion whatever the gate said (logged)."""
    row = version_row(con, version)
    if row["status"] == "champion":
        raise RegistryError(f"model version {version} already is the champion")
    _switch(con, row, "manual-promote", [f"manual promotion by {actor}"], actor)
    return version_row(con, version)


def rollback(con: duckdb.DuckDBPyConnection, slot: str, dataset: str, actor: str = "human") -> dict:
    """Back to the champion the current one replaced when it was promoted (logged). Rollbacks
    themselves are skipped, so rolling back twice goes two steps back, not back and forth."""
    current = champion(con, slot, dataset)
    if current is None:
        raise RegistryError(f"{slot}/{dataset} has no champion to roll back from")
    previous = predecessor(con, current)
    if previous is None:
        raise RegistryError(f"{slot}/{dataset}: version {current['version']} has no predecessor")
    row = version_row(con, previous)
    _switch(con, row, "rollback", [f"rollback from version {current['version']} by {actor}"], actor)
    return version_row(con, row["version"])


def predecessor(con: duckdb.DuckDBPyConnection, row: dict) -> int | None:
    """The champion `row` replaced when it was last promoted other than by a rollback: where
    `rollback` goes from it."""
    previous = con.execute(
        """SELECT previous_champion FROM promotions
           WHERE dataset = ? AND promoted AND challenger = ?
             AND previous_champion IS NOT NULL AND action <> 'rollback'
           ORDER BY promotion_id DESC LIMIT 1""",
        [row["dataset"], row["version"]],
    ).fetchone()
    return previous[0] if previous else None
