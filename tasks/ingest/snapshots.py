"""Datasets, snapshots and the registry of files: what was loaded or refused before, the pending
snapshot an interrupted night left, what failed validation since the last snapshot that passed,
and `encore ingest --retry`."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import duckdb

from tasks.ingest.errors import IngestFileError
from tasks.ingest.scan import scan_file
from tasks.ingest.sources import (
    DatasetSpec,
    RemoteFile,
)


def register_dataset(con: duckdb.DuckDBPyConnection, spec: DatasetSpec) -> None:
    """Record the dataset's kind and scale on first sight; refuse a later change of kind."""
    fmt = spec.format
    row = con.execute("SELECT kind FROM datasets WHERE name = ?", [spec.name]).fetchone()
    if row is None:
        scale = fmt.rating_scale
        con.execute(
            "INSERT INTO datasets (name, kind, rating_low, rating_high, rating_step, format_json)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [
                spec.name,
                fmt.kind,
                scale.low if scale else None,
                scale.high if scale else None,
                scale.step if scale else None,
                json.dumps(asdict(fmt), default=str),
            ],
        )
    elif row[0] != fmt.kind:
        raise IngestFileError(
            spec.landing, f"dataset '{spec.name}' is {row[0]} in the warehouse, not {fmt.kind}"
        )


def pending_snapshot(con: duckdb.DuckDBPyConnection, dataset: str) -> int | None:
    """The dataset's snapshot still pending validation (an ingest killed before it validated,
    or one run with validation off), if any."""
    row = con.execute(
        "SELECT max(snapshot_id) FROM snapshots WHERE dataset = ? AND status = 'pending'",
        [dataset],
    ).fetchone()
    return row[0] if row else None


def held_back(con: duckdb.DuckDBPyConnection, dataset: str) -> str | None:
    """What a quiet night must not hide: the snapshots that failed validation since the last
    one that passed, whose rows stay out of training until corrected files arrive."""
    failed = con.execute(
        """SELECT list(snapshot_id ORDER BY snapshot_id), sum(loaded), min(validated_at)
           FROM snapshots WHERE dataset = ? AND status = 'failed' AND snapshot_id >
               (SELECT coalesce(max(snapshot_id), 0) FROM snapshots
                WHERE dataset = ? AND status = 'passed')""",
        [dataset, dataset],
    ).fetchone()
    ids, rows, since = failed
    if not ids:
        return None
    which = ", ".join(str(i) for i in ids)
    return (
        f"snapshot {which} failed validation (since {since:%Y-%m-%d %H:%M}): its {rows:,} rows"
        " stay out of training until corrected files land (see its report)"
    )


def open_snapshot(con: duckdb.DuckDBPyConnection, dataset: str) -> int:
    """Tonight's snapshot of `dataset`: the pending one when there is one (its files stay in
    it and are validated with tonight's, so nothing an interrupted night loaded is left out of
    training), else a new one."""
    pending = pending_snapshot(con, dataset)
    if pending is not None:
        return pending
    return con.execute(
        "INSERT INTO snapshots (snapshot_id, dataset, status, created_at) "
        "VALUES (nextval('snapshot_ids'), ?, 'pending', current_timestamp) RETURNING snapshot_id",
        [dataset],
    ).fetchone()[0]


def is_known_unchanged(
    con: duckdb.DuckDBPyConnection, dataset: str, path: Path | RemoteFile
) -> bool:
    """Loaded before from this path with the same size and mtime: no need to hash it again.
    (A listed remote file: the same URL, size and last-modified, i.e. its identity.)"""
    if isinstance(path, RemoteFile):
        key = [path.url, path.size_bytes, path.mtime]
    else:
        stat = path.resolve().stat()
        key = [str(path.resolve()), stat.st_size, stat.st_mtime]
    return con.execute(
        "SELECT count(*) > 0 FROM source_files WHERE dataset = ? AND status = 'loaded'"
        " AND path = ? AND size_bytes = ? AND mtime = ?",
        [dataset, *key],
    ).fetchone()[0]


def already_loaded(con: duckdb.DuckDBPyConnection, dataset: str, sha256: str) -> int | None:
    row = con.execute(
        "SELECT file_id FROM source_files WHERE dataset = ? AND sha256 = ? AND status = 'loaded'",
        [dataset, sha256],
    ).fetchone()
    return row[0] if row else None


def refused_before(con: duckdb.DuckDBPyConnection, dataset: str, sha256: str) -> str | None:
    """When and why this content was refused whole on an earlier night (None if it never was,
    or a retry was asked for since): the same bytes are not read again until the file changes
    or `encore ingest --retry` names it."""
    row = con.execute(
        """SELECT strftime(f.ingested_at, '%Y-%m-%d'), f.error FROM source_files f
           WHERE f.dataset = ? AND f.sha256 = ? AND f.status = 'error'
             AND NOT EXISTS (SELECT 1 FROM ingest_retries r WHERE r.dataset = f.dataset
                             AND r.sha256 = f.sha256 AND r.requested_at >= f.ingested_at)
           ORDER BY f.file_id DESC LIMIT 1""",
        [dataset, sha256],
    ).fetchone()
    return f"refused on {row[0]}: {row[1]}" if row else None


def request_retry(con: duckdb.DuckDBPyConnection, path: Path) -> list[str]:
    """Ask the next ingest to read `path` again although its bytes were refused before. Returns
    the datasets that had refused them (empty: nothing to retry)."""
    sha256 = scan_file(path).sha256
    datasets = [
        d
        for (d,) in con.execute(
            "SELECT DISTINCT dataset FROM source_files WHERE sha256 = ? AND status = 'error'",
            [sha256],
        ).fetchall()
        if refused_before(con, d, sha256) is not None
    ]
    for dataset in datasets:
        con.execute(
            "INSERT INTO ingest_retries VALUES (?, ?, current_timestamp)", [dataset, sha256]
        )
    return datasets


def refresh_snapshot_totals(con: duckdb.DuckDBPyConnection, snapshot_id: int) -> None:
    con.execute(
        """UPDATE snapshots SET
               rows_read = t.rows_read, loaded = t.loaded, duplicates = t.duplicates,
               rejected = t.rejected, quarantined = t.quarantined
           FROM (SELECT coalesce(sum(rows_read), 0) AS rows_read,
                        coalesce(sum(loaded), 0) AS loaded,
                        coalesce(sum(duplicates), 0) AS duplicates,
                        coalesce(sum(rejected), 0) AS rejected,
                        coalesce(sum(quarantined), 0) AS quarantined
                 FROM source_files WHERE snapshot_id = ?) t
           WHERE snapshot_id = ?""",
        [snapshot_id, snapshot_id],
    )
