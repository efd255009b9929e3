"""What a source file looks like: the built-in readers and the `sources.toml` that names datasets.

A *format* says how to parse a file and which of its columns are the canonical fields
(user_id, item_id, rating, weight, ts, item_group). A *dataset* is a named stream of such files
(one landing folder, one format, one kind), and owns its id maps and snapshots in the warehouse.

A landing is local (a file, or a folder and a glob `pattern`, `**` for any depth) or, for
Parquet, remote: an object-storage prefix (`s3://bucket/events/`, `gs://`, `r2://`) or an
`https://` file, listed and read by DuckDB's httpfs extension (see `RemoteFile`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import unquote

import duckdb

Kind = Literal["implicit", "explicit"]
TimestampUnit = Literal["epoch_s", "epoch_ms", "iso"]

CANONICAL_FIELDS = ("user_id", "item_id", "rating", "weight", "ts", "item_group")
# DuckDB type each canonical field is read as; anything unparsable becomes a reject.
FIELD_TYPES = {
    "user_id": "VARCHAR",
    "item_id": "VARCHAR",
    "rating": "DOUBLE",
    "weight": "DOUBLE",
    "item_group": "VARCHAR",
}
TIMESTAMP_READ_TYPES = {"epoch_s": "BIGINT", "epoch_ms": "BIGINT", "iso": "TIMESTAMP"}


class SourceConfigError(ValueError):
    """A dataset or format declaration is inconsistent (names the offending key)."""


class RemoteSourceError(SourceConfigError):
    """A remote landing cannot be read on this machine (httpfs missing, listing refused)."""


@dataclass(frozen=True)
class RatingScale:
    low: float
    high: float
    step: float | None = None  # 0.5 for half stars; None allows any value in [low, high]


@dataclass(frozen=True)
class SourceFormat:
    """How to read one file format into Encore's canonical columns."""

    kind: Kind
    file_type: Literal["delimited", "parquet"] = "delimited"
    delimiter: str = ","
    header: bool = True
    quote: str = '"'
    encoding: str = "utf-8"
    # canonical field -> column name in the file (header name, or a positional name below)
    columns: Mapping[str, str] = field(default_factory=dict)
    # headerless files: the names of the file's columns, in order
    positional_columns: tuple[str, ...] = ()
    timestamp_unit: TimestampUnit | None = None
    rating_scale: RatingScale | None = None

    def __post_init__(self) -> None:
        missing = [f for f in ("user_id", "item_id") if f not in self.columns]
        if missing:
            raise SourceConfigError(f"format is missing a column mapping for {missing}")
        unknown = sorted(set(self.columns) - set(CANONICAL_FIELDS))
        if unknown:
            raise SourceConfigError(f"unknown canonical fields {unknown}; use {CANONICAL_FIELDS}")
        if self.kind == "explicit" and ("rating" not in self.columns or not self.rating_scale):
            raise SourceConfigError("an explicit source needs a 'rating' column and rating_scale")
        if ("ts" in self.columns) != (self.timestamp_unit is not None):
            raise SourceConfigError("give timestamp_unit exactly when a 'ts' column is mapped")
        if not self.header and self.file_type == "delimited":
            absent = sorted(set(self.columns.values()) - set(self.positional_columns))
            if absent:
                raise SourceConfigError(f"headerless format: {absent} not in positional_columns")
        if self.encoding.lower().replace("_", "-") not in ("utf-8", "utf8", "latin-1", "latin1"):
            # Line accounting counts b"\n" bytes, which holds for ASCII-compatible encodings only.
            raise SourceConfigError(f"encoding {self.encoding!r}: use utf-8 or latin-1")

    @property
    def has_timestamps(self) -> bool:
        return "ts" in self.columns

    def natural_key(self) -> tuple[str, ...]:
        """Two rows with the same key are the same interaction (the later one is a duplicate)."""
        return ("user_id", "item_id", "ts") if self.has_timestamps else ("user_id", "item_id")


PRESETS: dict[str, SourceFormat] = {
    # MovieLens 100K u.data: user \t item \t rating \t unix time, no header.
    "movielens-100k": SourceFormat(
        kind="explicit",
        delimiter="\t",
        header=False,
        positional_columns=("user", "item", "rating", "timestamp"),
        columns={"user_id": "user", "item_id": "item", "rating": "rating", "ts": "timestamp"},
        timestamp_unit="epoch_s",
        rating_scale=RatingScale(1, 5, 1),
    ),
    # MovieLens latest / 20M / 25M ratings.csv (half stars).
    "movielens-csv": SourceFormat(
        kind="explicit",
        columns={"user_id": "userId", "item_id": "movieId", "rating": "rating", "ts": "timestamp"},
        timestamp_unit="epoch_s",
        rating_scale=RatingScale(0.5, 5, 0.5),
    ),
    # MovieLens 1M / 10M ratings.dat: UserID::MovieID::Rating::Timestamp.
    "movielens-dat": SourceFormat(
        kind="explicit",
        delimiter="::",
        header=False,
        positional_columns=("user", "item", "rating", "timestamp"),
        columns={"user_id": "user", "item_id": "item", "rating": "rating", "ts": "timestamp"},
        timestamp_unit="epoch_s",
        rating_scale=RatingScale(1, 5, 1),
    ),
    # HetRec 2011 Last.fm user_artists.dat: play counts, no timestamps.
    "lastfm-user-artists": SourceFormat(
        kind="implicit",
        delimiter="\t",
        columns={"user_id": "userID", "item_id": "artistID", "weight": "weight"},
    ),
    # Letterboxd scrape ratings_export.csv: rating_val 1-10 (half stars doubled).
    "letterboxd": SourceFormat(
        kind="explicit",
        columns={"user_id": "user_id", "item_id": "movie_id", "rating": "rating_val"},
        rating_scale=RatingScale(1, 10, 1),
    ),
    # Encore's generated sample (models_src.sample_data).
    "encore-listens": SourceFormat(
        kind="implicit",
        columns={
            "user_id": "user_id",
            "item_id": "track_id",
            "item_group": "artist_id",
            "ts": "played_at",
            "weight": "ms_played",
        },
        timestamp_unit="iso",
    ),
    "encore-ratings": SourceFormat(
        kind="explicit",
        columns={
            "user_id": "user_id",
            "item_id": "movie_id",
            "item_group": "genre",
            "rating": "rating",
            "ts": "rated_at",
        },
        timestamp_unit="iso",
        rating_scale=RatingScale(1, 5, 0.5),
    ),
}

LANDING_SUFFIXES = (".csv", ".tsv", ".dat", ".data", ".txt", ".parquet")
# Schemes DuckDB's httpfs extension reads. Azure (az://, abfss://) needs another extension.
REMOTE_SCHEMES = ("s3", "s3a", "s3n", "r2", "gs", "gcs", "http", "https", "hf")
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# What `Path("s3://bucket/key")` turns a URL into: the scheme's "//" collapsed to "/".
_COLLAPSED_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):/(?!/)")


def as_location(value: Path | str | RemoteFile) -> Path | str:
    """A local path as a `Path`, a remote one as its URL string.

    Also undoes what `Path()` does to a URL (`s3://b/k` becomes `s3:/b/k`), so a URL that went
    through a `Path` on its way (a task's file list) is still read remotely. Object keys with
    empty segments (`a//b`) do not survive that trip.
    """
    if isinstance(value, RemoteFile):
        return value.url
    text = str(value)
    url = _URL.match(text)
    if url:
        if url.group(1).lower() not in REMOTE_SCHEMES:
            raise SourceConfigError(
                f"{text!r}: scheme {url.group(1)}:// is not supported; remote landings use "
                f"{', '.join(s + '://' for s in REMOTE_SCHEMES)} (read by DuckDB's httpfs)"
            )
        return text
    collapsed = _COLLAPSED_URL.match(text)
    if collapsed and collapsed.group(1).lower() in REMOTE_SCHEMES:
        return f"{collapsed.group(1)}://{text[collapsed.end() :]}"
    return Path(value)


def _hidden(parts: tuple[str, ...]) -> bool:
    """Hive/Spark convention: names starting with `_` or `.` are not data (`_SUCCESS`,
    `_temporary/` of a job still writing, `.crc` checksums)."""
    return any(part.startswith(("_", ".")) for part in parts)


def partition_values(relative: str | PurePosixPath) -> dict[str, str | None]:
    """`key=value` folders of a path below the landing, e.g. `date=2026-11-01/part-0.parquet`
    gives {"date": "2026-11-01"}; values are URL-decoded as Hive writes them, and Hive's
    `__HIVE_DEFAULT_PARTITION__` is NULL."""
    values: dict[str, str | None] = {}
    for part in PurePosixPath(relative).parts[:-1]:
        key, sep, value = part.partition("=")
        if sep and key:
            value = unquote(value)
            values[unquote(key)] = None if value == HIVE_NULL else value
    return values


@dataclass(frozen=True)
class RemoteFile:
    """One object under a remote landing, as DuckDB's httpfs lists it.

    Its identity (what the warehouse's `source_files.sha256` holds for it, instead of a digest
    of the bytes) is the sha256 of URL, size and last-modified time. Hashing the content would
    mean downloading every object every night just to plan; object stores give size and
    last-modified with the listing, and an object's last-modified changes on every write. So:
    the same object unchanged is never read twice; an object rewritten in place (or the same
    bytes uploaded again, or copied to a new key) is read again, and its rows then count as
    duplicates of the earlier load (natural-key dedupe), never twice in the training data.
    A server that sends no Last-Modified (plain https) is identified by URL and size alone.
    """

    url: str
    size_bytes: int
    last_modified: datetime | None

    def __str__(self) -> str:
        return self.url

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def mtime(self) -> float | None:
        return self.last_modified.timestamp() if self.last_modified else None

    @property
    def identity(self) -> str:
        stamp = self.last_modified.isoformat() if self.last_modified else ""
        key = f"remote\n{self.url}\n{self.size_bytes}\n{stamp}"
        return hashlib.sha256(key.encode()).hexdigest()


def require_httpfs(con: duckdb.DuckDBPyConnection, dataset: str, location: str) -> None:
    """Load DuckDB's httpfs extension, which must already be installed: Encore never downloads
    at run time. Auto-install is switched off on this connection first, so no remote read can
    fetch an extension behind our back either."""
    con.execute("SET autoinstall_known_extensions = false")
    row = con.execute(
        "SELECT installed, loaded FROM duckdb_extensions() WHERE extension_name = 'httpfs'"
    ).fetchone()
    installed, loaded = row or (False, False)
    if loaded:
        return
    if installed:
        try:
            con.execute("LOAD httpfs")
            return
        except duckdb.Error as err:
            problem = f"httpfs is installed but does not load ({err})"
    else:
        problem = "httpfs is not installed"
    version = con.execute("SELECT library_version FROM pragma_version()").fetchone()[0]
    platform = con.execute("PRAGMA platform").fetchone()[0]
    folder = con.execute("SELECT current_setting('extension_directory')").fetchone()[0]
    folder = Path(folder) if folder else Path.home() / ".duckdb" / "extensions"
    expected = folder / version / platform / "httpfs.duckdb_extension"
    raise RemoteSourceError(
        f"dataset '{dataset}': landing {location!r} is remote, which DuckDB reads through its "
        f"httpfs extension, and {problem} (DuckDB {version}, {platform}; looked for {expected})."
        " Encore never downloads extensions while it runs: install httpfs beforehand, e.g. run"
        f" `INSTALL httpfs` in DuckDB {version} on a machine with internet and copy the"
        f" extension file to {expected.parent}/ here, or `INSTALL '/path/to/"
        "httpfs.duckdb_extension'` from a local copy."
    )


def stat_remote(
    con: duckdb.DuckDBPyConnection, dataset: str, urls: list[str], scheme: str | None = None
) -> list[RemoteFile]:
    """Size and last-modified of each URL (httpfs: one HEAD each, content is not fetched),
    in the order given. `scheme` is put back on names the filesystem returns without it."""
    if not urls:
        return []
    try:
        found = con.execute(
            "SELECT filename, size, last_modified FROM read_blob(?)", [urls]
        ).fetchall()
    except duckdb.IOException:
        raise  # unreachable store, timeout: worth a retry (the ingest tasks retry I/O errors)
    except duckdb.Error as err:
        raise RemoteSourceError(
            f"dataset '{dataset}': cannot read size and last-modified of {len(urls)} file(s),"
            f" first {urls[0]!r}: {err}"
        ) from err
    by_name = {_with_scheme(name, scheme): (size, modified) for name, size, modified in found}
    missing = [url for url in urls if url not in by_name]
    if missing:
        raise RemoteSourceError(f"dataset '{dataset}': no size for {missing[:3]} from read_blob")
    return [RemoteFile(url, *by_name[url]) for url in urls]


def _with_scheme(name: str, scheme: str | None) -> str:
    if scheme is None or _URL.match(name):
        return name
    return f"{scheme}://{name}"


@dataclass(frozen=True)
class DatasetSpec:
    """A named stream of files of one format, e.g. tonight's listens."""

    name: str
    format: SourceFormat
    landing: Path | str  # a local file or folder (Path), or a remote URL (str); see as_location
    pattern: str = "*"
    item_names: Path | None = None  # optional side file of item names (titles, artists)
    item_names_format: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "landing", as_location(self.landing))
        if not self.is_remote:
            return
        if self.format.file_type != "parquet":
            raise SourceConfigError(
                f"dataset '{self.name}': remote landing {self.landing!r} needs a Parquet format;"
                " text files are counted from their local bytes, so they must be local"
            )
        http = self.landing.lower().startswith(("http://", "https://"))
        if http and not self.remote_is_file and any(c in self.pattern for c in "*?["):
            raise SourceConfigError(
                f"dataset '{self.name}': an http(s) server cannot be listed, so {self.landing!r}"
                f" with pattern {self.pattern!r} matches nothing; name the file in `landing`"
                " (https://host/path/events.parquet) or use s3://, gs:// or r2://"
            )

    @property
    def is_remote(self) -> bool:
        return isinstance(self.landing, str)

    @property
    def remote_is_file(self) -> bool:
        """A remote landing naming one object (`.../events.parquet`), not a prefix."""
        return self.is_remote and self.landing.lower().endswith(LANDING_SUFFIXES)

    def landing_files(self, con: duckdb.DuckDBPyConnection | None = None) -> list:
        """Files waiting in the landing, in name order (names carry the date: day files, or
        `date=...` partition folders).

        Local: `Path`s, the landing file or the folder's files matching `pattern`. Remote:
        `RemoteFile`s listed by DuckDB's `glob()` on `landing` + `pattern` through httpfs,
        on `con` or a private in-memory connection (either sees persistent DuckDB secrets).
        Parquet datasets skip names starting with `_` or `.` below the landing (`_SUCCESS`,
        `_temporary/`); every dataset takes only names ending in one of LANDING_SUFFIXES.
        """
        if self.is_remote:
            return self._remote_files(con)
        if self.landing.is_file():
            return [self.landing]
        if not self.landing.is_dir():
            return []
        parquet = self.format.file_type == "parquet"
        return sorted(
            p
            for p in self.landing.glob(self.pattern)
            if p.is_file()
            and p.suffix.lower() in LANDING_SUFFIXES
            and not (parquet and _hidden(p.relative_to(self.landing).parts))
        )

    def _remote_files(self, con: duckdb.DuckDBPyConnection | None) -> list[RemoteFile]:
        own = con is None
        con = duckdb.connect() if own else con
        try:
            require_httpfs(con, self.name, self.landing)
            scheme = _URL.match(self.landing).group(1)
            if self.remote_is_file:
                return stat_remote(con, self.name, [self.landing], scheme)
            pattern = self.landing.rstrip("/") + "/" + self.pattern.lstrip("/")
            try:
                names = [
                    row[0] for row in con.execute("SELECT file FROM glob(?)", [pattern]).fetchall()
                ]
            except duckdb.IOException:
                raise  # unreachable store, timeout: the ingest tasks retry I/O errors
            except duckdb.Error as err:
                raise RemoteSourceError(
                    f"dataset '{self.name}': cannot list {pattern!r}: {err}"
                ) from err
            urls = sorted(
                url
                for url in (_with_scheme(name, scheme) for name in names)
                if url.lower().endswith(LANDING_SUFFIXES)
                and not _hidden(PurePosixPath(self.relative(url)).parts)
            )
            return stat_remote(con, self.name, urls, scheme)
        finally:
            if own:
                con.close()

    def relative(self, location: Path | str | RemoteFile) -> str:
        """The file's path below the landing, '' when the landing is the file (or elsewhere)."""
        where = as_location(location)
        if self.is_remote:
            root = self.landing.rstrip("/") + "/"
            return where[len(root) :] if isinstance(where, str) and where.startswith(root) else ""
        if isinstance(where, str):
            return ""
        try:
            return where.resolve().relative_to(self.landing.resolve()).as_posix()
        except ValueError:
            return ""

    def partitions(self, location: Path | str | RemoteFile) -> dict[str, str | None]:
        """Hive partition values of a file below the landing (see `partition_values`)."""
        relative = self.relative(location)
        return partition_values(relative) if relative else {}


def format_from_table(table: Mapping[str, Any], where: str) -> SourceFormat:
    """Build a format from a `sources.toml` table: a preset, optionally overridden, or custom."""
    options = dict(table)
    preset_name = options.pop("format", None)
    scale = options.pop("rating_scale", None)
    if scale is not None:
        if not isinstance(scale, list) or len(scale) not in (2, 3):
            raise SourceConfigError(
                f"{where}: rating_scale must be [low, high] or [low, high, step]"
            )
        options["rating_scale"] = RatingScale(*scale)
    if "positional_columns" in options:
        options["positional_columns"] = tuple(options["positional_columns"])
    allowed = set(SourceFormat.__dataclass_fields__)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise SourceConfigError(f"{where}: unknown keys {unknown}; allowed: {sorted(allowed)}")
    try:
        if preset_name and preset_name not in ("delimited", "parquet"):
            if preset_name not in PRESETS:
                raise SourceConfigError(
                    f"{where}: unknown format {preset_name!r}; presets: {sorted(PRESETS)}"
                )
            return replace(PRESETS[preset_name], **options)
        if preset_name == "parquet":
            options["file_type"] = "parquet"
        return SourceFormat(**options)
    except (TypeError, SourceConfigError) as err:
        raise SourceConfigError(f"{where}: {err}") from err


def dataset_choices(name: str, names: list[str]) -> str:
    """'(datasets: a, b); did you mean 'a'?': the tail of a message about an unknown dataset
    `name`, for the CLI (against sources.toml) and the warehouse alike."""
    import difflib

    near = difflib.get_close_matches(name, names, n=1)
    known = ", ".join(names) or "none yet: `encore ingest` or `encore nightly` loads them"
    return f"(datasets: {known})" + (f"; did you mean '{near[0]}'?" if near else "")
