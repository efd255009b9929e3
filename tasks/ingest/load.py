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

import csv
import hashlib
import json
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import duckdb
import numpy as np

from tasks.faults import crash_point
from tasks.ingest.file_kind import no_header_reason, not_delimited_text
from tasks.ingest.sources import (
    FIELD_TYPES,
    TIMESTAMP_READ_TYPES,
    DatasetSpec,
    RemoteFile,
    SourceFormat,
    as_location,
    require_httpfs,
    stat_remote,
)
from tasks.warehouse.schema import StorageFull, is_storage_full, transaction

SCAN_BLOCK_BYTES = 8 << 20
# Epoch values outside this range (about years 1653..5138) cannot be real event times and would
# overflow DuckDB's microsecond timestamps: they are rejected as malformed.
EPOCH_SECONDS_LIMIT = 100_000_000_000
_BLANK_LINE = re.compile(rb"(?:^|(?<=\n))\r?\n")


class IngestFileError(ValueError):
    """A file that cannot be loaded at all; the message names the file, line and column."""

    def __init__(
        self, path: Path | str, message: str, line: int | None = None, column: str | None = None
    ):
        where = f"{path}" + (f", line {line}" if line is not None else "")
        where += f", column '{column}'" if column else ""
        super().__init__(f"{where}: {message}")
        self.path, self.line, self.column = path, line, column


class AccountingError(RuntimeError):
    """rows read != loaded + duplicates + rejected + quarantined: a row would have been lost."""


@dataclass(frozen=True)
class FileScan:
    sha256: str  # of the bytes; for a remote file, its RemoteFile.identity
    size_bytes: int
    lines: int  # non-blank physical lines, header included
    blank_lines: tuple[int, ...]  # 1-based numbers of empty lines (DuckDB skips them)
    mtime: float | None = None  # remote files only (local ones are stat'ed when registered)
    # Only for a delimited file that holds its quote character (a quoted field may span lines):
    # the physical line each CSV record starts on, in file order, header and blank lines
    # included, the way DuckDB numbers records; and the 1-based ordinals of the blank ones.
    # None when every record is one line.
    record_lines: tuple[int, ...] | None = None
    blank_records: frozenset[int] = frozenset()
    # Why the csv module could not read the records (line, reason); the file is then refused
    # whole. Kept on the scan, not raised, so the sha256 still reaches the refusal's record.
    unparsable: tuple[int, str] | None = None

    def data_rows(self, header: bool) -> int:
        """Records less blank lines and the header: what the reader should account for."""
        if self.record_lines is None:
            return max(0, self.lines - int(header))
        return max(0, len(self.record_lines) - len(self.blank_records) - int(header))


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


def scan_file(path: Path | RemoteFile, fmt: SourceFormat | None = None) -> FileScan:
    """sha256, size and line counts in one streaming pass (bounded memory for any file size).

    With the file's `fmt`, a delimited file where a quoted field spans lines is also parsed
    with Python's csv module (see `_csv_records`): records, not lines, are then what DuckDB
    reads and what must be accounted.

    A listed remote file is not read: its identity stands for the sha256 (no lines: Parquet)."""
    if isinstance(path, RemoteFile):
        return remote_scan(path)
    digest = hashlib.sha256()
    size = lines = 0
    blank: list[int] = []
    carry = b""
    quote = _quote_byte(fmt)
    spans, parity = False, 0
    with path.open("rb") as handle:
        while block := handle.read(SCAN_BLOCK_BYTES):
            digest.update(block)
            size += len(block)
            block = carry + block
            cut = block.rfind(b"\n") + 1
            whole, carry = block[:cut], block[cut:]
            if quote is not None and not spans and quote in whole:
                spans, parity = _quote_open_at_a_newline(whole, quote, parity)
            if b"\n\n" in whole or b"\n\r\n" in whole or whole.startswith((b"\n", b"\r\n")):
                for match in _BLANK_LINE.finditer(whole):
                    blank.append(lines + whole.count(b"\n", 0, match.start()) + 1)
            lines += whole.count(b"\n")
    if carry.strip(b"\r"):
        lines += 1  # a last line without a trailing newline still is a line
    scan = FileScan(digest.hexdigest(), size, lines - len(blank), tuple(blank))
    if spans:
        try:
            starts, blank_records = _csv_records(path, fmt)
        except _Unparsable as err:
            return replace(scan, unparsable=(err.line, err.reason))
        scan = replace(scan, record_lines=starts, blank_records=blank_records)
    return scan


class _Unparsable(Exception):
    def __init__(self, line: int, reason: str):
        super().__init__(f"line {line}: {reason}")
        self.line, self.reason = line, reason


def _quote_open_at_a_newline(lines: bytes, quote: bytes, parity: int) -> tuple[bool, int]:
    """Whether some newline of `lines` (whole lines) falls inside a quoted field, given the
    parity of the quote characters before them; and the parity after them.

    A doubled quote inside a field adds two, so a newline sits inside quotes exactly when an odd
    number of quote characters precede it. Vectorised: ids are quoted in many exports, and this
    runs over every byte of them."""
    data = np.frombuffer(lines, np.uint8)
    quotes = np.flatnonzero(data == quote[0])
    newlines = np.flatnonzero(data == ord("\n"))
    inside = (np.searchsorted(quotes, newlines) + parity) % 2 == 1
    return bool(inside.any()), (parity + len(quotes)) % 2


def _quote_byte(fmt: SourceFormat | None) -> bytes | None:
    """The quote character, when Python's csv module can parse the format (one-character
    delimiter, a quote character, a one-byte newline); None otherwise, and then a quoted field
    spanning lines does not add up and its file is refused whole."""
    if fmt is None or fmt.file_type == "parquet" or len(fmt.delimiter) != 1 or not fmt.quote:
        return None
    if fmt.encoding.lower().replace("-", "").startswith("utf16"):
        return None  # its newlines are two bytes: `_csv_records` splits lines on b"\n"
    quote = fmt.quote.encode(fmt.encoding)
    return quote if len(quote) == 1 else None


def _csv_records(path: Path, fmt: SourceFormat) -> tuple[tuple[int, ...], frozenset[int]]:
    """The physical line each record starts on, and the ordinals of blank records.

    Python's csv module, not DuckDB: the count of records is then an independent check of what
    DuckDB read, as the line count is for files without quotes. Both skip blank lines but
    number them, so the ordinals match DuckDB's reject line numbers."""
    starts, blank = [], set()
    with path.open("rb") as handle:
        # Lines split on b"\n" only, as the byte scan and DuckDB count them (a text-mode file
        # would also split on a lone \r inside a quoted field).
        lines = (raw.decode(fmt.encoding, errors="replace") for raw in handle)
        reader = csv.reader(lines, delimiter=fmt.delimiter, quotechar=fmt.quote, strict=False)
        previous_end, ordinal = 0, 0
        try:
            for ordinal, record in enumerate(reader, start=1):
                starts.append(previous_end + 1)
                if not record:
                    blank.add(ordinal)
                previous_end = reader.line_num
        except csv.Error as err:  # a stray \r or a NUL outside quotes: not one CSV dialect
            raise _Unparsable(
                previous_end + 1,
                f"not readable as CSV with delimiter {fmt.delimiter!r} and quote {fmt.quote!r}"
                f" ({err}); fix the quoting or the line endings and deliver it again",
            ) from None
    return tuple(starts), frozenset(blank)


def remote_scan(remote: RemoteFile) -> FileScan:
    return FileScan(remote.identity, remote.size_bytes, 0, (), remote.mtime)


def stat_remote_file(con: duckdb.DuckDBPyConnection, spec: DatasetSpec, url: str) -> RemoteFile:
    require_httpfs(con, spec.name, url)
    return stat_remote(con, spec.name, [url], url.split("://", 1)[0])[0]


def sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def read_header(path: Path, fmt: SourceFormat) -> list[str]:
    """The file's column names from its first line, decoded with the format's encoding."""
    with path.open("rb") as handle:
        raw = handle.readline()
    try:
        first = raw.decode(fmt.encoding).lstrip("\ufeff").rstrip("\r\n")
    except UnicodeDecodeError as err:
        raise IngestFileError(path, f"header is not valid {fmt.encoding}: {err}", 1) from err
    if len(fmt.delimiter) != 1:
        return [name.strip() for name in first.split(fmt.delimiter)]
    try:
        return [name.strip() for name in next(csv.reader([first], delimiter=fmt.delimiter))]
    except (csv.Error, StopIteration) as err:  # a lone \r or a NUL in the header line
        raise IngestFileError(
            path, f"header line cannot be read as CSV ({err}); deliver it as plain text", 1
        ) from None


def file_columns(path: Path, fmt: SourceFormat) -> list[tuple[str, str]]:
    """(name, DuckDB type) for every column of the file, in file order.

    Mapped columns are named by their canonical field and typed, so a bad value is a CAST reject;
    the others are read as VARCHAR and dropped.
    """
    names = read_header(path, fmt) if fmt.header else list(fmt.positional_columns)
    for canonical, source_name in fmt.columns.items():
        if source_name not in names:
            headerless = no_header_reason(names, list(fmt.columns.values()), fmt.delimiter)
            if fmt.header and headerless:
                raise IngestFileError(path, headerless, line=1)
            raise IngestFileError(
                path,
                f"missing column '{source_name}' (for {canonical}); the header has {names}",
                line=1 if fmt.header else None,
                column=source_name,
            )
    by_source = {source: canonical for canonical, source in fmt.columns.items()}
    columns = []
    for position, name in enumerate(names):
        canonical = by_source.get(name)
        if canonical is None:
            columns.append((f"_unused_{position}", "VARCHAR"))
        elif canonical == "ts":
            columns.append(("ts_raw", TIMESTAMP_READ_TYPES[fmt.timestamp_unit]))
        else:
            columns.append((canonical, FIELD_TYPES[canonical]))
    return columns


def _read_csv_sql(path: Path, fmt: SourceFormat, columns: list[tuple[str, str]]) -> str:
    column_struct = "{" + ", ".join(f"{sql_str(n)}: {sql_str(t)}" for n, t in columns) + "}"
    return (
        f"read_csv({sql_str(str(path))}, columns={column_struct}, header={str(fmt.header).lower()},"
        f" delim={sql_str(fmt.delimiter)}, quote={sql_str(fmt.quote)},"
        f" encoding={sql_str(fmt.encoding)}, auto_detect=false, store_rejects=true,"
        " rejects_table='_rejects', rejects_scan='_rejects_scan')"
    )


def _timestamp_sql(fmt: SourceFormat) -> str:
    # Out-of-range epochs would overflow make_timestamp; they become rejects just after staging.
    if fmt.timestamp_unit not in ("epoch_s", "epoch_ms"):
        return "ts_raw"
    per_second = 1 if fmt.timestamp_unit == "epoch_s" else 1000
    limit, micros = EPOCH_SECONDS_LIMIT * per_second, 1_000_000 // per_second
    return f"CASE WHEN abs(ts_raw) <= {limit} THEN make_timestamp(ts_raw * {micros}) END"


def _canonical_select(fmt: SourceFormat) -> str:
    """SELECT list turning staged columns into the interactions columns (absent ones NULL)."""
    parts = []
    for name in ("user_id", "item_id", "rating", "weight", "item_group"):
        parts.append(name if name in fmt.columns else f"NULL::{FIELD_TYPES[name]} AS {name}")
    parts.append(f"{_timestamp_sql(fmt)} AS ts" if fmt.has_timestamps else "NULL::TIMESTAMP AS ts")
    return ", ".join(parts)


def stage_file(con: duckdb.DuckDBPyConnection, spec: DatasetSpec, path: Path) -> tuple[int, int]:
    """Read one landing file as the ingest does, into the temp view `_staged` (canonical
    columns) of `con`, without loading it anywhere; returns (rows staged, rows rejected). For
    readers of a whole source (`encore replay`)."""
    fmt = spec.format
    stage = _Stage(con, path, fmt, spec.partitions(path) if fmt.file_type == "parquet" else None)
    stage.read()
    stage.finish(scan_file(path, fmt))
    staged = con.execute("SELECT count(*) FROM _staged").fetchone()[0]
    return staged, con.execute("SELECT count(*) FROM _file_rejects").fetchone()[0]


class _Stage:
    """Reads the file into the temp table `_raw` and exposes it as the temp view `_staged`
    (line, canonical columns); malformed lines land in the temp table `_file_rejects`.

    `_staged` is a view, not a copy: at 10M rows each materialisation costs seconds."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        path: Path | str,
        fmt: SourceFormat,
        partitions: dict[str, str | None] | None = None,
    ):
        self.con, self.path, self.fmt = con, path, fmt
        self.partitions = partitions or {}
        self.scan: FileScan | None = None

    def read(self) -> None:
        """Parse the file (needs no byte scan, so it runs while the scan thread hashes)."""
        for view in ("_kept", "_staged"):
            self.con.execute(f"DROP VIEW IF EXISTS {view}")
        for table in (
            *("_raw", "_file_rejects", "_rejects", "_rejects_scan"),
            *("_shift", "_drop", "_records", "_accepted"),
        ):
            self.con.execute(f"DROP TABLE IF EXISTS {table}")
        if self.fmt.file_type == "parquet":
            self._stage_parquet()
        else:
            self._stage_delimited()

    def finish(self, scan: FileScan) -> None:
        """Number the lines (blank lines come from the scan) and reject impossible epochs."""
        if scan.unparsable is not None:
            line, reason = scan.unparsable
            raise IngestFileError(self.path, reason, line=line)
        self.scan = scan
        if scan.record_lines is not None:
            self._number_records()
        elif self.fmt.file_type != "parquet":
            self._number_lines()
        self._reject_impossible_epochs()

    def _stage_delimited(self) -> None:
        columns = file_columns(self.path, self.fmt)
        wanted = [n for n, _ in columns if not n.startswith("_unused_")]
        self.con.execute(
            f"CREATE TEMP TABLE _raw AS SELECT {', '.join(wanted)} "
            f"FROM {_read_csv_sql(self.path, self.fmt, columns)}"
        )
        self.con.execute(
            f"""CREATE TEMP TABLE _file_rejects AS
               SELECT line, {self._source_column_sql("column_name")} AS column_name,
                      CAST(error_type AS VARCHAR) AS error_type, error_message AS reason,
                      trim(csv_line, chr(10) || chr(13)) AS raw_line
               FROM _rejects"""
        )

    def _number_lines(self) -> None:
        """Give each accepted row its physical line number.

        DuckDB keeps insertion order, so the k-th row of `_raw` (rowid k) is the k-th data line
        that was neither rejected nor blank: line = k + header + 1 + (#skipped lines before it).
        With skipped lines s_1 < s_2 < ..., the j-th one sits before accepted row p_j = s_j -
        header - j, so an ASOF join on p_j <= k finds how many to add.
        """
        header = int(self.fmt.header)
        blank = ", ".join(f"({n})" for n in self.scan.blank_lines)
        blank_rows = f" UNION SELECT * FROM (VALUES {blank}) AS b(line)" if blank else ""
        self.con.execute(
            f"""CREATE TEMP TABLE _shift AS
                SELECT CAST(line AS BIGINT) - {header} - j AS p, max(j) AS j FROM (
                    SELECT line, row_number() OVER (ORDER BY line) AS j
                    FROM (SELECT DISTINCT line FROM _file_rejects{blank_rows}))
                GROUP BY p"""
        )
        columns = f"{self._ts_raw_expr()} AS ts_raw_value, {_canonical_select(self.fmt)}"
        # rowids of a table written inside a transaction start at an offset, not at 0; fixed
        # now, so that deleting rows later (impossible epochs) does not renumber the rest.
        first, last, count = self.con.execute(
            "SELECT min(rowid), max(rowid), count(*) FROM _raw"
        ).fetchone()
        if count and last - first + 1 != count:
            raise AccountingError(
                f"{self.path}: staged rows are not contiguous; cannot number lines"
            )
        ordinal = f"rowid - {first or 0}"
        if self.con.execute("SELECT count(*) FROM _shift").fetchone()[0] == 0:
            self.con.execute(
                f"CREATE TEMP VIEW _staged AS SELECT {ordinal} + {header + 1} AS line, {columns} "
                "FROM _raw"
            )
            return
        self.con.execute(
            f"""CREATE TEMP VIEW _staged AS
                SELECT r.k + {header + 1} + coalesce(s.j, 0) AS line, {columns}
                FROM (SELECT *, {ordinal} AS k FROM _raw) r
                ASOF LEFT JOIN _shift s ON r.k >= s.p"""
        )
        self._check_line_numbers()

    def _number_records(self) -> None:
        """Give each accepted row the physical line its record starts on, for a file whose
        quoted fields may span lines (records are not lines, so `_number_lines` cannot work).

        DuckDB numbers rejects by record ordinal (blank lines counted); the scan knows the line
        each ordinal starts on. The k-th row of `_raw` is the k-th record that is neither the
        header, blank, nor rejected."""
        import pyarrow as pa

        starts = self.scan.record_lines
        records = pa.table(
            {
                "ordinal": pa.array(range(1, len(starts) + 1), pa.int64()),
                "line": pa.array(starts, pa.int64()),
                "blank": pa.array(
                    [i in self.scan.blank_records for i in range(1, len(starts) + 1)]
                ),
            }
        )
        self.con.register("_records_arrow", records)
        self.con.execute("CREATE TEMP TABLE _records AS SELECT * FROM _records_arrow")
        self.con.unregister("_records_arrow")
        self.con.execute(
            f"""CREATE TEMP TABLE _accepted AS
                SELECT row_number() OVER (ORDER BY ordinal) - 1 AS k, line FROM _records r
                WHERE NOT blank AND ordinal > {int(self.fmt.header)}
                  AND NOT EXISTS (SELECT 1 FROM _file_rejects j WHERE j.line = r.ordinal)"""
        )
        accepted, staged = self.con.execute(
            "SELECT (SELECT count(*) FROM _accepted), (SELECT count(*) FROM _raw)"
        ).fetchone()
        if accepted != staged:
            raise AccountingError(
                f"{self.path}: DuckDB read {staged} rows where the CSV holds {accepted} records"
                " that were neither blank nor rejected; its quoting is ambiguous"
            )
        self.con.execute(
            """UPDATE _file_rejects SET line = r.line
               FROM _records r WHERE r.ordinal = _file_rejects.line"""
        )
        first = self.con.execute("SELECT coalesce(min(rowid), 0) FROM _raw").fetchone()[0]
        columns = f"{self._ts_raw_expr()} AS ts_raw_value, {_canonical_select(self.fmt)}"
        self.con.execute(
            f"""CREATE TEMP VIEW _staged AS
                SELECT a.line, {columns}
                FROM (SELECT *, rowid - {first} AS k FROM _raw) r JOIN _accepted a USING (k)"""
        )
        self._check_line_numbers()

    def _check_line_numbers(self) -> None:
        """Lines shifted past rejects and blank lines are derived, so check them: unique,
        inside the file, and never a rejected line's."""
        count, distinct, top, clash = self.con.execute(
            """SELECT count(*), count(DISTINCT line), max(line),
                      (SELECT count(*) FROM _staged s JOIN _file_rejects r USING (line))
               FROM _staged"""
        ).fetchone()
        total = self.scan.lines + len(self.scan.blank_lines)
        if count != distinct or (top or 0) > total or clash:
            raise AccountingError(
                f"{self.path}: could not number the loaded lines ({count} rows, {distinct} distinct"
                f" lines, last {top} of {total}, {clash} clash with rejects); is a quoted field"
                " spanning several lines?"
            )

    def _source_column_sql(self, column: str) -> str:
        """Name the file's own column in reject reasons (rating, not our internal name)."""
        cases = " ".join(
            f"WHEN {sql_str('ts_raw' if c == 'ts' else c)} THEN {sql_str(n)}"
            for c, n in self.fmt.columns.items()
        )
        return f"CASE {column} {cases} ELSE {column} END"

    def _ts_raw_expr(self) -> str:
        return "ts_raw" if self.fmt.timestamp_unit in ("epoch_s", "epoch_ms") else "NULL::BIGINT"

    def _stage_parquet(self) -> None:
        """Parquet has no rejects store: cast with TRY_CAST and reject what did not convert.

        The file's own columns are read as they are (DuckDB's hive_partitioning is off: it would
        replace a file column by a same-named `key=value` folder of the path, any folder up to
        the root). A mapped name the file lacks may instead be a partition key of a folder below
        the landing (`date=2026-11-01/`), read as text, the same value for all the file's rows.
        """
        source = (
            f"read_parquet({sql_str(str(self.path))}, file_row_number=true,"
            " hive_partitioning=false)"
        )
        present = {
            row[0] for row in self.con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()
        }
        for canonical, name in self.fmt.columns.items():
            if name not in present and name not in self.partitions:
                keys = f"; partition keys {sorted(self.partitions)}" if self.partitions else ""
                has = sorted(present - {"file_row_number"})
                raise IngestFileError(
                    self.path,
                    f"missing column '{name}' (for {canonical}); has {has}{keys}",
                    column=name,
                )
        casts, failures = [], []
        for canonical, name in self.fmt.columns.items():
            target = (
                TIMESTAMP_READ_TYPES[self.fmt.timestamp_unit]
                if canonical == "ts"
                else FIELD_TYPES[canonical]
            )
            alias = "ts_raw" if canonical == "ts" else canonical
            if name in present:
                quoted = '"' + name.replace('"', '""') + '"'
            else:
                value = self.partitions[name]
                quoted = "NULL::VARCHAR" if value is None else f"{sql_str(value)}::VARCHAR"
            casts.append(f"TRY_CAST({quoted} AS {target}) AS {alias}")
            failures.append(
                f"CASE WHEN {quoted} IS NOT NULL AND TRY_CAST({quoted} AS {target}) IS NULL "
                f"THEN {sql_str(name)} END"
            )
        self.con.execute(
            f"CREATE TEMP TABLE _raw AS SELECT file_row_number + 1 AS line, "
            f"coalesce({', '.join(failures)}) AS bad_column, {', '.join(casts)} FROM {source}"
        )
        self.con.execute(
            """CREATE TEMP TABLE _file_rejects AS
               SELECT line, bad_column AS column_name, 'CAST' AS error_type,
                      'value of column ' || bad_column || ' cannot be converted' AS reason,
                      NULL::VARCHAR AS raw_line
               FROM _raw WHERE bad_column IS NOT NULL"""
        )
        self.con.execute(
            f"CREATE TEMP VIEW _staged AS SELECT line, {self._ts_raw_expr()} AS ts_raw_value, "
            f"{_canonical_select(self.fmt)} FROM _raw WHERE bad_column IS NULL"
        )

    def _reject_impossible_epochs(self) -> None:
        limit = EPOCH_SECONDS_LIMIT * (1000 if self.fmt.timestamp_unit == "epoch_ms" else 1)
        self.con.execute(
            f"""INSERT INTO _file_rejects
                SELECT line, {sql_str(self.fmt.columns.get("ts", "ts"))}, 'CAST',
                       'timestamp ' || ts_raw_value || ' is out of range for '
                           || {sql_str(self.fmt.timestamp_unit or "")},
                       NULL
                FROM _staged WHERE abs(ts_raw_value) > {limit}"""
        )
        if self.fmt.timestamp_unit in ("epoch_s", "epoch_ms"):
            self.con.execute(f"DELETE FROM _raw WHERE abs(ts_raw) > {limit}")


def _natural_key_match(fmt: SourceFormat, left: str, right: str) -> str:
    return " AND ".join(f"{left}.{c} = {right}.{c}" for c in fmt.natural_key())


# What Encore does with a row whose natural key it has already loaded (README, "What ingest
# guarantees"): the same values again is a duplicate, dropped and counted; different values
# (another rating, another play count) is a conflict. The first loaded is kept, because history
# already trained on never changes silently, and the conflicting row is quarantined with both
# values, so a re-export that corrects data shows up in the report instead of vanishing.
CONFLICT_EXPECTATION = "conflicting_value"


def _drop_duplicates(
    con: duckdb.DuckDBPyConnection, dataset: str, fmt: SourceFormat
) -> tuple[int, int]:
    """Mark for dropping every row whose natural key was seen on an earlier line of the file or
    in a snapshot that did not fail; returns (duplicates, conflicts). Rows with a NULL key
    column are kept: validation quarantines them with a reason.

    Within the file, rows are first grouped by a 64-bit hash of the key (one cheap aggregate
    over a fixed-width column); only the few rows in colliding groups are compared exactly.
    A row that repeats both a loaded row and an earlier line is judged against the loaded one.
    """
    key = ", ".join(fmt.natural_key())

    def present(alias: str = "") -> str:
        return " AND ".join(f"{alias}{c} IS NOT NULL" for c in fmt.natural_key())

    differs = "(s.rating IS DISTINCT FROM e.rating OR s.weight IS DISTINCT FROM e.weight)"
    con.execute(
        f"""CREATE TEMP TABLE _drop AS
            WITH keyed AS (SELECT line, {key}, hash({key}) AS h FROM _staged WHERE {present()}),
            candidates AS (
                SELECT * FROM keyed
                WHERE h IN (SELECT h FROM keyed GROUP BY h HAVING count(*) > 1)),
            within AS (
                SELECT line, first_value(line) OVER (PARTITION BY {key} ORDER BY line) AS first,
                       row_number() OVER (PARTITION BY {key} ORDER BY line) AS n
                FROM candidates),
            repeats AS (
                SELECT 1 AS precedence, s.line, {differs} AS conflict,
                       'line ' || e.line || ' of this file' AS earlier,
                       e.rating AS earlier_rating, e.weight AS earlier_weight
                FROM within w JOIN _staged s ON s.line = w.line JOIN _staged e ON e.line = w.first
                WHERE w.n > 1
                UNION ALL
                SELECT 0, s.line, {differs}, 'line ' || e.line || ' of ' || f.path,
                       e.rating, e.weight
                FROM _staged s
                JOIN interactions e ON e.dataset = {sql_str(dataset)}
                                   AND {_natural_key_match(fmt, "e", "s")}
                JOIN snapshots sn ON sn.snapshot_id = e.snapshot_id AND sn.status <> 'failed'
                JOIN source_files f ON f.file_id = e.file_id
                WHERE {present("s.")})
            SELECT * EXCLUDE (precedence) FROM repeats
            QUALIFY row_number() OVER (PARTITION BY line ORDER BY precedence) = 1"""
    )
    con.execute("CREATE TEMP VIEW _kept AS SELECT * FROM _staged ANTI JOIN _drop USING (line)")
    return con.execute(
        "SELECT count(*) FILTER (WHERE NOT conflict), count(*) FILTER (WHERE conflict) FROM _drop"
    ).fetchone()


def _quarantine_conflicts(
    con: duckdb.DuckDBPyConnection, dataset: str, snapshot_id: int, file_id: int, offset: int
) -> None:
    """Put the conflicting rows in `quarantine`, each naming the row it conflicts with."""
    there = "coalesce(CAST(d.earlier_rating AS VARCHAR), CAST(d.earlier_weight AS VARCHAR))"
    here = "coalesce(CAST(s.rating AS VARCHAR), CAST(s.weight AS VARCHAR))"
    con.execute(
        f"""INSERT INTO quarantine
            SELECT {offset} + s.line, {sql_str(dataset)}, {snapshot_id}, {file_id}, s.line,
                   s.user_id, s.item_id, s.rating, s.weight, s.ts, s.item_group,
                   '{CONFLICT_EXPECTATION}',
                   CASE WHEN s.rating IS DISTINCT FROM d.earlier_rating THEN 'rating'
                        ELSE 'weight' END,
                   'conflicts with ' || d.earlier || ' (value there: '
                     || coalesce({there}, 'none') || ', here: ' || coalesce({here}, 'none')
                     || '); the row loaded first is kept',
                   current_timestamp
            FROM _drop d JOIN _staged s USING (line) WHERE d.conflict"""
    )


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
