"""Warehouse tables and the connection helper.

Tables (all keyed by dataset, so several sources share one warehouse):
- datasets: name, kind, rating scale, format as JSON (the format a dataset was first loaded with).
- snapshots: one per ingest run and dataset; status pending -> passed | failed; accounting totals.
- source_files: every file ever seen, by sha256; its row accounting and status.
- interactions: the loaded rows, with their file and line, external ids and dense indices.
- user_ids / item_ids: external id -> dense index, append-only (an index never changes).
- rejects: malformed lines (DuckDB's store_rejects), one row per line and error.
- quarantine: rows moved out of interactions by a failed row-level expectation.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    name VARCHAR PRIMARY KEY,
    kind VARCHAR NOT NULL,
    rating_low DOUBLE,
    rating_high DOUBLE,
    rating_step DOUBLE,
    format_json VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);
CREATE SEQUENCE IF NOT EXISTS snapshot_ids START 1;
CREATE TABLE IF NOT EXISTS snapshots (
    snapshot_id INTEGER PRIMARY KEY,
    dataset VARCHAR NOT NULL,
    status VARCHAR NOT NULL,            -- pending | passed | failed
    created_at TIMESTAMP NOT NULL,
    validated_at TIMESTAMP,
    rows_read BIGINT NOT NULL DEFAULT 0,
    loaded BIGINT NOT NULL DEFAULT 0,
    duplicates BIGINT NOT NULL DEFAULT 0,
    rejected BIGINT NOT NULL DEFAULT 0,
    quarantined BIGINT NOT NULL DEFAULT 0,
    report_json VARCHAR
);
CREATE SEQUENCE IF NOT EXISTS file_ids START 1;
CREATE TABLE IF NOT EXISTS source_files (
    file_id INTEGER PRIMARY KEY,
    dataset VARCHAR NOT NULL,
    path VARCHAR NOT NULL,
    sha256 VARCHAR NOT NULL,
    size_bytes BIGINT NOT NULL,
    mtime DOUBLE,                       -- lets a nightly plan skip known files without hashing
    snapshot_id INTEGER NOT NULL,
    status VARCHAR NOT NULL,            -- loaded | error
    error VARCHAR,
    rows_read BIGINT NOT NULL DEFAULT 0,
    loaded BIGINT NOT NULL DEFAULT 0,
    duplicates BIGINT NOT NULL DEFAULT 0,
    rejected BIGINT NOT NULL DEFAULT 0,
    quarantined BIGINT NOT NULL DEFAULT 0,
    seconds DOUBLE,
    ingested_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS user_ids (
    dataset VARCHAR NOT NULL, external_id VARCHAR NOT NULL, idx INTEGER NOT NULL,
    first_snapshot INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS item_ids (
    dataset VARCHAR NOT NULL, external_id VARCHAR NOT NULL, idx INTEGER NOT NULL,
    first_snapshot INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS interactions (
    row_id BIGINT NOT NULL,
    dataset VARCHAR NOT NULL,
    snapshot_id INTEGER NOT NULL,
    file_id INTEGER NOT NULL,
    line BIGINT NOT NULL,
    user_id VARCHAR,
    item_id VARCHAR,
    user_idx INTEGER,
    item_idx INTEGER,
    rating DOUBLE,
    weight DOUBLE,
    ts TIMESTAMP,
    item_group VARCHAR
);
-- `encore ingest --retry FILE`: the refused content is read again on the next ingest.
CREATE TABLE IF NOT EXISTS ingest_retries (
    dataset VARCHAR NOT NULL,
    sha256 VARCHAR NOT NULL,
    requested_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS rejects (
    dataset VARCHAR NOT NULL,
    snapshot_id INTEGER NOT NULL,
    file_id INTEGER NOT NULL,
    path VARCHAR NOT NULL,
    line BIGINT,
    column_name VARCHAR,
    error_type VARCHAR NOT NULL,
    reason VARCHAR NOT NULL,
    raw_line VARCHAR
);
CREATE TABLE IF NOT EXISTS quarantine (
    row_id BIGINT NOT NULL,
    dataset VARCHAR NOT NULL,
    snapshot_id INTEGER NOT NULL,
    file_id INTEGER NOT NULL,
    line BIGINT NOT NULL,
    user_id VARCHAR,
    item_id VARCHAR,
    rating DOUBLE,
    weight DOUBLE,
    ts TIMESTAMP,
    item_group VARCHAR,
    expectation VARCHAR NOT NULL,
    column_name VARCHAR,
    reason VARCHAR NOT NULL,
    quarantined_at TIMESTAMP NOT NULL
);
"""

# Training reads this view: rows of passed snapshots only, never a failed night's.
VIEWS = """
CREATE OR REPLACE VIEW training_interactions AS
SELECT i.* FROM interactions i JOIN snapshots s USING (snapshot_id) WHERE s.status = 'passed';
"""


class StorageFull(RuntimeError):
    """The disk under the data home (or the process's file-size limit) ran out during a write.
    DuckDB rolled the transaction back, so the warehouse is as it was; nothing is the data's
    fault, so nothing is recorded as refused and a rerun with room loads it."""


# How DuckDB and the OS say that a write did not fit.
_STORAGE_FULL_SIGNS = ("no space left on device", "file too large", "disk is full", "disk full")


def is_storage_full(error: BaseException) -> bool:
    return any(sign in str(error).lower() for sign in _STORAGE_FULL_SIGNS)


class WarehouseBusy(RuntimeError):
    """Another process kept the warehouse file for longer than we wait; the message says who."""


# How long a command waits for another process's hold on the warehouse file to end. DuckDB lets
# one process open the file at a time; the night opens it per task and closes it after, so a
# reader (`encore models`) or a second writer waits for the gap between two tasks.
WAREHOUSE_WAIT_ENV = "ENCORE_WAREHOUSE_WAIT_SECONDS"
WAREHOUSE_WAIT_SECONDS = 120.0


def _connect_waiting(path: Path, config: dict) -> duckdb.DuckDBPyConnection:
    wait = float(os.environ.get(WAREHOUSE_WAIT_ENV, WAREHOUSE_WAIT_SECONDS))
    deadline = time.monotonic() + wait
    while True:
        try:
            return duckdb.connect(str(path), config=config)
        except duckdb.IOException as error:
            if "lock" not in str(error).lower():
                raise
            if time.monotonic() >= deadline:
                holder = re.search(r"\(PID (\d+)\)", str(error))
                who = f"process {holder.group(1)}" if holder else "another process"
                raise WarehouseBusy(
                    f"{path} is in use by {who} (an encore command or night); waited {wait:g} s."
                    f" Run this again when it is done, or set {WAREHOUSE_WAIT_ENV} to wait longer"
                ) from None
            time.sleep(0.2)


def connect(path: Path, memory_limit: str | None = None, temp_dir: Path | None = None):
    """Open the warehouse file, creating the schema on first use."""
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {}
    if memory_limit:
        config["memory_limit"] = memory_limit
    if temp_dir:
        temp_dir.mkdir(parents=True, exist_ok=True)
        config["temp_directory"] = str(temp_dir)
    con = _connect_waiting(path, config)
    try:
        con.execute(SCHEMA)
        con.execute(VIEWS)
    except duckdb.Error as error:
        con.close()
        if is_storage_full(error):
            raise StorageFull(
                f"{path}: the disk under the warehouse is full ({error}); nothing was changed."
                " Free space and run again"
            ) from None
        raise
    return con


@contextmanager
def warehouse(path: Path, **options) -> Iterator[duckdb.DuckDBPyConnection]:
    con = connect(path, **options)
    try:
        yield con
    finally:
        con.close()


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """All or nothing: a crash or an exception inside leaves the warehouse as it was."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
