"""A way back from a false alarm: an operator accepts a failed snapshot after review, or has it
validated again under changed thresholds. Both are logged in `snapshot_reviews` (who, why, when),
so the history of what reached training stays explained.

A failed snapshot's rows are kept in `interactions` but stay out of `training_interactions`;
accepted, its status becomes `passed` and the next night trains on them. Rows that failed a
row-level check stay quarantined either way: acceptance overrides the table-level judgement
(volume, new ids, growth), never a malformed row.
"""

from __future__ import annotations

import getpass
import json
from datetime import datetime
from pathlib import Path

import duckdb

from tasks.files import write_text_atomically
from tasks.ingest.snapshots import refresh_snapshot_totals
from tasks.warehouse.schema import transaction

REVIEWS_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshot_reviews (
    snapshot_id INTEGER NOT NULL,
    action VARCHAR NOT NULL,            -- accepted | revalidated
    actor VARCHAR NOT NULL,
    reason VARCHAR NOT NULL,
    status_before VARCHAR NOT NULL,
    status_after VARCHAR NOT NULL,
    reviewed_at TIMESTAMP NOT NULL
);
"""


class ReviewError(ValueError):
    """A review that cannot apply (no such snapshot, not failed, no reason): one line."""


def _failed_snapshot(con: duckdb.DuckDBPyConnection, snapshot_id: int) -> tuple[str, str]:
    row = con.execute(
        "SELECT dataset, status FROM snapshots WHERE snapshot_id = ?", [snapshot_id]
    ).fetchone()
    if row is None:
        raise ReviewError(f"no snapshot {snapshot_id} (`encore status` lists them)")
    if row[1] != "failed":
        raise ReviewError(
            f"snapshot {snapshot_id} of {row[0]} is {row[1]}, not failed: only a failed"
            " snapshot is accepted or validated again"
        )
    return row[0], row[1]


def _log(con, snapshot_id: int, action: str, actor: str, reason: str, after: str) -> None:
    con.execute(REVIEWS_SCHEMA)
    con.execute(
        "INSERT INTO snapshot_reviews VALUES (?, ?, ?, ?, 'failed', ?, ?)",
        [snapshot_id, action, actor, reason, after, datetime.now()],
    )


def _quarantine_redelivered(con, dataset: str, snapshot_id: int) -> int:
    """Rows of the failed snapshot whose natural key a passed snapshot already holds: a corrected
    redelivery loaded them again while this one stood failed (its rows do not block one), so
    accepting it moves them to quarantine and training never holds a pair twice."""
    from tasks.validate.row_checks import _move_to_quarantine

    con.execute(
        """CREATE OR REPLACE TEMP TABLE _quarantine_reasons AS
           SELECT DISTINCT f.row_id, 'duplicate_of_redelivery' AS expectation,
                  'user_id' AS column_name,
                  'already loaded by snapshot ' || p.snapshot_id
                    || ' while this one stood failed; dropped when it was accepted' AS reason
           FROM interactions f
           JOIN interactions p ON p.dataset = f.dataset AND p.user_idx = f.user_idx
                              AND p.item_idx = f.item_idx AND p.ts IS NOT DISTINCT FROM f.ts
           JOIN snapshots s ON s.snapshot_id = p.snapshot_id AND s.status = 'passed'
           WHERE f.snapshot_id = ? AND f.dataset = ?
           QUALIFY row_number() OVER (PARTITION BY f.row_id ORDER BY p.snapshot_id) = 1""",
        [snapshot_id, dataset],
    )
    moved = con.execute("SELECT count(*) FROM _quarantine_reasons").fetchone()[0]
    if moved:
        _move_to_quarantine(con)
    con.execute("DROP TABLE _quarantine_reasons")
    return moved


def accept_snapshot(
    con: duckdb.DuckDBPyConnection,
    snapshot_id: int,
    reason: str,
    actor: str | None = None,
    reports_dir: Path | None = None,
) -> dict:
    """Mark a failed snapshot passed after review; its rows reach training the next night.
    Returns {dataset, snapshot_id, actor, reason}."""
    if not reason.strip():
        raise ReviewError("--reason is required: say why the snapshot is fine (it is logged)")
    dataset, _ = _failed_snapshot(con, snapshot_id)
    actor = actor or getpass.getuser()
    report_json = con.execute(
        "SELECT report_json FROM snapshots WHERE snapshot_id = ?", [snapshot_id]
    ).fetchone()[0]
    report = json.loads(report_json or "{}")
    report["accepted"] = {"by": actor, "reason": reason, "at": datetime.now().isoformat()}
    with transaction(con):
        report["accepted"]["redelivered_rows"] = _quarantine_redelivered(con, dataset, snapshot_id)
        con.execute(
            "UPDATE snapshots SET status = 'passed', report_json = ? WHERE snapshot_id = ?",
            [json.dumps(report), snapshot_id],
        )
        refresh_snapshot_totals(con, snapshot_id)
        _log(con, snapshot_id, "accepted", actor, reason, "passed")
    if reports_dir is not None:
        path = reports_dir / f"snapshot_{snapshot_id:05d}_{dataset}.json"
        write_text_atomically(path, json.dumps(report, indent=2))
    return {"dataset": dataset, "snapshot_id": snapshot_id, "actor": actor, "reason": reason}


def revalidate_snapshot(
    con: duckdb.DuckDBPyConnection,
    snapshot_id: int,
    thresholds,
    reason: str,
    actor: str | None = None,
    reports_dir: Path | None = None,
) -> dict:
    """Validate a failed snapshot again under `thresholds` (ValidationThresholds); its report."""
    from tasks.validate.validation import validate_snapshot

    _failed_snapshot(con, snapshot_id)
    con.execute("UPDATE snapshots SET status = 'pending' WHERE snapshot_id = ?", [snapshot_id])
    report = validate_snapshot(con, snapshot_id, thresholds, reports_dir=reports_dir)
    _log(
        con, snapshot_id, "revalidated", actor or getpass.getuser(),
        reason or f"thresholds {thresholds.model_dump_json()}", report["status"],
    )  # fmt: skip
    return report
