"""`sources.toml`, checked as a whole before anything runs.

Each `[datasets.NAME]` table is parsed by one pydantic model (`DatasetTable`, unknown keys
refused, `kind` / `file_type` / `timestamp_unit` from their closed sets), so a typo such as
`kind = "explict"` is one line naming the dataset and the key, never a dataset stored under a
kind that does not exist. `landing_problems` then looks at the disk: a landing that does not
exist, or a mapped column that the newest landing file lacks, would otherwise pass as "no new
files" or stay silent until a file arrives. `renamed_datasets` looks at the warehouse: files
already loaded under a name sources.toml no longer holds.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

import duckdb
from pydantic import BaseModel, ConfigDict, ValidationError

from tasks.ingest.sources import (
    DatasetSpec,
    SourceConfigError,
    as_location,
    format_from_table,
)


class DatasetTable(BaseModel):
    """One `[datasets.NAME]` table of sources.toml (docs/sources.md). Format keys left out come
    from the preset named by `format`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    landing: str
    pattern: str = "*"
    item_names: str | None = None
    item_names_format: str | None = None
    format: str | None = None
    kind: Literal["implicit", "explicit"] | None = None
    file_type: Literal["delimited", "parquet"] | None = None
    delimiter: str | None = None
    header: bool | None = None
    quote: str | None = None
    encoding: str | None = None
    columns: dict[str, str] | None = None
    positional_columns: list[str] | None = None
    timestamp_unit: Literal["epoch_s", "epoch_ms", "iso"] | None = None
    rating_scale: list[float] | None = None

    def format_table(self) -> dict:
        """The keys that describe the file format, for `format_from_table`."""
        where = {"landing", "pattern", "item_names", "item_names_format"}
        return {k: v for k, v in self.model_dump(exclude_none=True).items() if k not in where}


def _problem(error: dict) -> str:
    """One pydantic error as 'key: what is wrong (got ...)'."""
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        allowed = ", ".join(DatasetTable.model_fields)
        return f"unknown key '{key}'; allowed: {allowed}"
    if error["type"] == "missing":
        return f"'{key}' is required" + (" (a folder or a file)" if key == "landing" else "")
    return f"{key}: {error['msg']} (got {error['input']!r})"


def parse_table(table: dict, where: str) -> DatasetTable:
    """One dataset table, validated; every problem in one line that starts with `where`."""
    try:
        return DatasetTable.model_validate(table)
    except ValidationError as err:
        problems = "; ".join(_problem(e) for e in err.errors())
        raise SourceConfigError(f"{where}: {problems}") from None


def load_datasets(sources_file: Path) -> list[DatasetSpec]:
    """Read `sources.toml`: one `[datasets.NAME]` table per dataset.

    Relative landing paths are resolved against the file's folder (the data home).
    """
    if not sources_file.exists():
        raise SourceConfigError(
            f"{sources_file}: no sources file; run `encore generate-sample` or write one "
            "(see docs/sources.md)"
        )
    with sources_file.open("rb") as handle:
        try:
            document = tomllib.load(handle)
        except tomllib.TOMLDecodeError as err:
            raise SourceConfigError(f"{sources_file}: {err}") from err
    unknown = sorted(set(document) - {"datasets"})
    if unknown:
        raise SourceConfigError(
            f"{sources_file}: unknown top-level table(s) {unknown}; datasets go under"
            " [datasets.NAME]"
        )
    return [
        _dataset(sources_file, name, table) for name, table in document.get("datasets", {}).items()
    ]


def _dataset(sources_file: Path, name: str, table: object) -> DatasetSpec:
    where = f"{sources_file} [datasets.{name}]"
    if not isinstance(table, dict):
        raise SourceConfigError(f"{where}: expected a table of keys, got {table!r}")
    parsed = parse_table(table, where)
    names_path = None
    if parsed.item_names:
        names_path = Path(parsed.item_names)
        if not names_path.is_absolute():
            names_path = sources_file.parent / names_path
    try:
        landing = as_location(parsed.landing)
        if isinstance(landing, Path) and not landing.is_absolute():
            landing = sources_file.parent / landing
        return DatasetSpec(
            name,
            format_from_table(parsed.format_table(), where),
            landing,
            parsed.pattern,
            names_path,
            parsed.item_names_format,
        )
    except SourceConfigError as err:
        if str(err).startswith(where):
            raise
        raise SourceConfigError(f"{where}: {err}") from err


def landing_problems(spec: DatasetSpec) -> list[str]:
    """What on disk stops `spec` from taking data: its local landing is missing, or the newest
    landing file lacks a mapped column. Remote landings are listed at ingest, not here."""
    if spec.is_remote:
        return []
    landing = Path(spec.landing)
    if not landing.exists():
        return [
            f"dataset '{spec.name}': landing {landing} does not exist; create it or fix"
            " `landing` in sources.toml (no file can arrive there)"
        ]
    files = spec.landing_files()
    if not files:
        return []
    return _missing_columns(spec, max(files, key=lambda p: (p.stat().st_mtime, str(p))))


def _missing_columns(spec: DatasetSpec, newest: Path) -> list[str]:
    from tasks.ingest.errors import IngestFileError
    from tasks.ingest.file_kind import not_delimited_text
    from tasks.ingest.stage import read_header

    fmt = spec.format
    if fmt.file_type == "parquet":
        import pyarrow.parquet as pq

        try:
            present = set(pq.read_schema(newest).names)
        except Exception:  # noqa: BLE001 - an unreadable file is refused, with why, at ingest
            return []
    elif fmt.header:
        if not_delimited_text(newest) is not None:
            return []  # refused with what it is at ingest
        try:
            present = set(read_header(newest, fmt))
        except IngestFileError:
            return []
    else:
        return []  # headerless: columns are positions, checked per row at ingest
    missing = sorted(
        f"'{column}' (its {canonical})"
        for canonical, column in fmt.columns.items()
        if column not in present
    )
    if not missing:
        return []
    return [
        f"dataset '{spec.name}': the newest landing file {newest.name} has no column"
        f" {', '.join(missing)}; it has {sorted(present)}: fix `columns` in sources.toml"
    ]


def renamed_datasets(con: duckdb.DuckDBPyConnection, specs: list[DatasetSpec]) -> list[str]:
    """Datasets whose landing files were loaded before under a name sources.toml no longer
    declares: most likely a rename, which loads everything again as a new dataset."""
    declared = {spec.name for spec in specs}
    warnings = []
    for spec in specs:
        if spec.is_remote or not Path(spec.landing).exists():
            continue
        paths = [str(Path(p).resolve()) for p in spec.landing_files()]
        if not paths:
            continue
        rows = con.execute(
            "SELECT DISTINCT dataset FROM source_files WHERE path IN (SELECT unnest(?))"
            " AND dataset <> ?",
            [paths, spec.name],
        ).fetchall()
        for (old,) in rows:
            if old not in declared:
                warnings.append(
                    f"dataset '{spec.name}' reads files already loaded as dataset '{old}',"
                    f" which sources.toml no longer declares: if it was renamed, put the old"
                    f" name back ('{old}') or its history is loaded again as a new dataset"
                )
    return warnings
