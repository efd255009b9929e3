"""Loading one source file into the warehouse, with every row accounted for.

For each file: rows read = loaded + duplicates + rejected + quarantined. Conflicts (a loaded key
with another value) are quarantined here; validation quarantines more rows later.
`rows read` is counted independently of DuckDB (a byte scan of the file), so the equation is a
real check and not a tautology: a row DuckDB dropped silently would break it and fail the load.

The file loads inside one transaction. A crash at any point leaves nothing of it, and because the
file is only registered (by sha256) in that same transaction, the next run simply loads it again.

Remote Parquet (s3://, gs://, https://, read through DuckDB's httpfs) has no local bytes to hash
or count: its registry key is `RemoteFile.identity` (URL, size, last-modified; see there) and its
rows read come from the Parquet footer, as for local Parquet.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb

from tasks.faults import crash_point
from tasks.ingest.dedupe import _drop_duplicates, _quarantine_conflicts
from tasks.ingest.errors import AccountingError, IngestFileError
from tasks.ingest.file_kind import not_delimited_text
from tasks.ingest.scan import FileScan, remote_scan, scan_file
from tasks.ingest.snapshots import (
    already_loaded,
)
from tasks.ingest.sources import (
    DatasetSpec,
    RemoteFile,
    SourceFormat,
    as_location,
    require_httpfs,
    stat_remote,
)
from tasks.ingest.stage import _Stage, sql_str
from tasks.warehouse.schema import StorageFull, is_storage_full, transaction


@dataclass
class FileResult:
    dataset: str
    path: str
    status: str  # loaded | skipped (already loaded) | error
    file_id: int | None = None
    snapshot_id: int | None = None
    rows_read: int = 0
    loaded: int = 0
    duplicates: int = 0
    rejected: int = 0
    quarantined: int = 0
    new_users: int = 0
    new_items: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def accounting_holds(self) -> bool:
        return self.rows_read == self.loaded + self.duplicates + self.rejected + self.quarantined

    def to_dict(self) -> dict:
        return asdict(self)


def stat_remote_file(con: duckdb.DuckDBPyConnection, spec: DatasetSpec, url: str) -> RemoteFile:
    require_httpfs(con, spec.name, url)
    return stat_remote(con, spec.name, [url], url.split("://", 1)[0])[0]


def _assign_ids(con: duckdb.DuckDBPyConnection, dataset: str, snapshot_id: int) -> tuple[int, int]:
    """Append unseen external ids to the id maps, in order of first appearance in the file."""
    added = []
    d = sql_str(dataset)
    for table, column in (("user_ids", "user_id"), ("item_ids", "item_id")):
        count = con.execute(
            f"""INSERT INTO {table}
                SELECT {sql_str(dataset)}, ext,
                       (SELECT coalesce(max(idx), -1) FROM {table} WHERE dataset = {d})
                         + row_number() OVER (ORDER BY first_line),
                       {snapshot_id}
                FROM (SELECT {column} AS ext, min(line) AS first_line FROM _kept
                      WHERE {column} IS NOT NULL GROUP BY 1) new
                WHERE NOT EXISTS (SELECT 1 FROM {table} m
                                  WHERE m.dataset = {d} AND m.external_id = new.ext)"""
        ).fetchone()[0]
        added.append(count)
    return added[0], added[1]


def _next_row_offset(con: duckdb.DuckDBPyConnection) -> int:
    """row_id = offset + line: unique because lines are unique within a file and the next
    file's offset is past this one's last line (quarantined rows keep their row_id); and no
    window function over millions of rows."""
    return con.execute(
        """SELECT greatest((SELECT coalesce(max(row_id), 0) FROM interactions),
                           (SELECT coalesce(max(row_id), 0) FROM quarantine))"""
    ).fetchone()[0]


def _insert_rows(
    con: duckdb.DuckDBPyConnection, dataset: str, snapshot_id: int, file_id: int, offset: int
) -> int:
    d = sql_str(dataset)
    return con.execute(
        f"""INSERT INTO interactions
            SELECT {offset} + s.line, {d}, {snapshot_id}, {file_id},
                   s.line, s.user_id, s.item_id, u.idx, it.idx, s.rating, s.weight, s.ts,
                   s.item_group
            FROM _kept s
            LEFT JOIN user_ids u ON u.dataset = {d} AND u.external_id = s.user_id
            LEFT JOIN item_ids it ON it.dataset = {d} AND it.external_id = s.item_id"""
    ).fetchone()[0]


def rows_read(
    con: duckdb.DuckDBPyConnection, path: Path | str, fmt: SourceFormat, scan: FileScan
) -> int:
    """Rows the file holds, counted apart from the load: non-blank lines less the header for
    text; the row count in the footer for Parquet."""
    if fmt.file_type == "parquet":
        if scan.size_bytes == 0:
            return 0
        return con.execute(
            f"SELECT coalesce(sum(num_rows), 0) FROM parquet_file_metadata({sql_str(str(path))})"
        ).fetchone()[0]
    return scan.data_rows(fmt.header)


def _check_not_empty(path: Path | str, fmt: SourceFormat, rows: int, size_bytes: int) -> None:
    if size_bytes == 0:
        raise IngestFileError(path, "file is empty (0 bytes)")
    if rows == 0 and fmt.header and fmt.file_type == "delimited":
        raise IngestFileError(path, "file has a header but no data rows", line=1)
    if rows == 0:
        raise IngestFileError(path, "file has no data rows")


def _record_error(
    con, spec: DatasetSpec, path: Path | str, scan: FileScan, snapshot_id: int, error: str
) -> None:
    """An unreadable file is refused whole: all of its rows count as rejected, under one reject
    row for the file (line NULL), so the accounting still holds and the report says why."""
    try:
        rows = rows_read(con, path, spec.format, scan)
    except duckdb.Error:
        rows = 0  # a Parquet file too broken to have a footer: nothing countable was read
    file_id = con.execute(
        "INSERT INTO source_files (file_id, dataset, path, sha256, size_bytes, snapshot_id, status,"
        " error, rows_read, rejected, ingested_at) VALUES (nextval('file_ids'), ?, ?, ?, ?, ?,"
        " 'error', ?, ?, ?, current_timestamp) RETURNING file_id",
        [spec.name, str(path), scan.sha256, scan.size_bytes, snapshot_id, error, rows, rows],
    ).fetchone()[0]
    con.execute(
        "INSERT INTO rejects VALUES (?, ?, ?, ?, NULL, NULL, 'FILE', ?, NULL)",
        [spec.name, snapshot_id, file_id, str(path), error],
    )


def _one_line(message: str) -> str:
    """DuckDB's CSV errors run to a dozen lines (possible fixes, the sniffer's settings): the
    first says what is wrong; the refusal keeps it, one line as every refusal is."""
    first = message.strip().splitlines()[0] if message.strip() else "unreadable"
    if len(message.strip().splitlines()) > 1:
        first += " (DuckDB's CSV reader: check the quoting, the line endings and the delimiter)"
    return first


class _AlreadyLoaded(Exception):
    """Raised inside the load transaction to roll it back when the content is known."""

    def __init__(self, file_id: int, sha256: str):
        super().__init__(file_id)
        self.file_id, self.sha256 = file_id, sha256


def ingest_file(
    con: duckdb.DuckDBPyConnection,
    spec: DatasetSpec,
    path: Path | str | RemoteFile,
    snapshot_id: int,
) -> FileResult:
    """Load one file into `interactions` in a single transaction; see the module docstring.

    The byte scan (sha256, line count) runs on a second thread while DuckDB parses the file:
    both are passes over the same bytes, and hashlib releases the GIL. Content already loaded is
    detected once the hash is known and the transaction is rolled back (the ingest flow checks
    hashes before it gets here, so that waste only happens on direct calls).

    A remote file (a URL, or a `Path` a URL was squeezed into, see `as_location`) is stat'ed
    first, which needs httpfs: without it a RemoteSourceError names the dataset and records
    nothing. Its identity replaces the byte scan.
    """
    started = time.perf_counter()
    location = as_location(path)
    if isinstance(location, str):
        remote = stat_remote_file(con, spec, location)
        pending_scan: Future = Future()
        pending_scan.set_result(remote_scan(remote))
    else:
        location = location.resolve()
    path = location
    result = FileResult(spec.name, str(path), "skipped", snapshot_id=snapshot_id)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="encore-scan") as pool:
        if isinstance(path, Path):
            pending_scan = pool.submit(scan_file, path, spec.format)
        try:
            size = path.stat().st_size if isinstance(path, Path) else remote.size_bytes
            if size == 0:
                raise IngestFileError(path, "file is empty (0 bytes)")
            with transaction(con):
                result = _load(con, spec, path, pending_scan, snapshot_id, result)
        except _AlreadyLoaded as known:
            result.file_id = known.file_id
            result.notes.append(
                f"same content as file {known.file_id} (sha256 {known.sha256[:12]}): no-op"
            )
            return result
        except IngestFileError as err:
            _record_error(con, spec, path, pending_scan.result(), snapshot_id, str(err))
            raise
        except (duckdb.Error, OSError, AccountingError) as err:
            if is_storage_full(err):
                raise StorageFull(
                    f"{path}: not loaded, the disk under the warehouse is full ({err}); nothing"
                    " of the file was kept. Free space and run again: it loads then"
                ) from None
            if isinstance(err, OSError):
                raise
            # A DuckDB error about the data, or rows that do not add up (the load is rolled
            # back), become a file error that names the path: the file is refused whole and
            # recorded, and the dataset's other files and the other datasets go on.
            scan = pending_scan.result()
            if scan.unparsable is not None:  # the csv module said where: that line, not none
                wrapped = IngestFileError(path, scan.unparsable[1], line=scan.unparsable[0])
            else:
                wrapped = IngestFileError(path, _one_line(str(err).removeprefix(f"{path}: ")))
            _record_error(con, spec, path, scan, snapshot_id, str(wrapped))
            raise wrapped from err
    result.seconds = time.perf_counter() - started
    con.execute(
        "UPDATE source_files SET seconds = ? WHERE file_id = ?", [result.seconds, result.file_id]
    )
    return result


def _load(
    con,
    spec: DatasetSpec,
    path: Path | str,
    pending_scan: Future,
    snapshot_id: int,
    result: FileResult,
) -> FileResult:
    fmt = spec.format
    if isinstance(path, Path) and fmt.file_type == "delimited":
        what = not_delimited_text(path)
        if what is not None:
            raise IngestFileError(path, what, line=1)
    stage = _Stage(con, path, fmt, spec.partitions(path) if fmt.file_type == "parquet" else None)
    stage.read()
    scan: FileScan = pending_scan.result()
    existing = already_loaded(con, spec.name, scan.sha256)
    if existing is not None:
        raise _AlreadyLoaded(existing, scan.sha256)
    result.rows_read = rows_read(con, path, fmt, scan)
    _check_not_empty(path, fmt, result.rows_read, scan.size_bytes)
    stage.finish(scan)
    crash_point("staged")
    duplicates, conflicts = _drop_duplicates(con, spec.name, fmt)
    new_users, new_items = _assign_ids(con, spec.name, snapshot_id)
    file_id = con.execute("SELECT nextval('file_ids')").fetchone()[0]
    offset = _next_row_offset(con)
    loaded = _insert_rows(con, spec.name, snapshot_id, file_id, offset)
    _quarantine_conflicts(con, spec.name, snapshot_id, file_id, offset)
    crash_point("inserted")
    con.execute(
        f"""INSERT INTO rejects SELECT {sql_str(spec.name)}, {snapshot_id}, {file_id},
                   {sql_str(str(path))}, line, column_name, error_type, reason, raw_line
            FROM _file_rejects"""
    )
    rejected = con.execute("SELECT count(DISTINCT line) FROM _file_rejects").fetchone()[0]
    result.status, result.file_id = "loaded", file_id
    result.loaded, result.duplicates, result.rejected = loaded, duplicates, rejected
    result.quarantined = conflicts
    result.new_users, result.new_items = new_users, new_items
    if not result.accounting_holds():
        raise AccountingError(
            f"{path}: {result.rows_read} rows read but {loaded} loaded + {duplicates} duplicates"
            f" + {conflicts} conflicts + {rejected} rejected"
        )
    con.execute(
        """INSERT INTO source_files (file_id, dataset, path, sha256, size_bytes, mtime,
               snapshot_id, status, rows_read, loaded, duplicates, rejected, quarantined,
               ingested_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, 'loaded', ?, ?, ?, ?, ?, current_timestamp)""",
        [
            file_id,
            spec.name,
            str(path),
            scan.sha256,
            scan.size_bytes,
            path.stat().st_mtime if isinstance(path, Path) else scan.mtime,
            snapshot_id,
            result.rows_read,
            loaded,
            duplicates,
            rejected,
            conflicts,
        ],
    )
    crash_point("registered")
    return result
