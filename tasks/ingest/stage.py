"""Reading one landing file into DuckDB temp tables, canonical columns and line numbers:
DuckDB's CSV reader with its rejects table (or Parquet), the header check, each row's physical
line, impossible epochs rejected. Nothing here writes the warehouse's tables."""

from __future__ import annotations

import csv
from pathlib import Path

import duckdb

from tasks.ingest.errors import AccountingError, IngestFileError
from tasks.ingest.file_kind import no_header_reason
from tasks.ingest.scan import FileScan, scan_file
from tasks.ingest.sources import (
    FIELD_TYPES,
    TIMESTAMP_READ_TYPES,
    DatasetSpec,
    SourceFormat,
)

# Epoch values outside this range (about years 1653..5138) cannot be real event times and would
# overflow DuckDB's microsecond timestamps: they are rejected as malformed.
EPOCH_SECONDS_LIMIT = 100_000_000_000


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
