"""What a source file looks like: the built-in readers and the `sources.toml` that names datasets.

A *format* says how to parse a file and which of its columns are the canonical fields
(user_id, item_id, rating, weight, ts, item_group). A *dataset* is a named stream of such files
(one landing folder, one format, one kind), and owns its id maps and snapshots in the warehouse.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

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


@dataclass(frozen=True)
class DatasetSpec:
    """A named stream of files of one format, e.g. tonight's listens."""

    name: str
    format: SourceFormat
    landing: Path
    pattern: str = "*"
    item_names: Path | None = None  # optional side file of item names (titles, artists)
    item_names_format: str | None = None

    def landing_files(self) -> list[Path]:
        """Files waiting in the landing folder, oldest name first (names carry the date)."""
        if self.landing.is_file():
            return [self.landing]
        if not self.landing.is_dir():
            return []
        return sorted(
            p
            for p in self.landing.glob(self.pattern)
            if p.is_file() and p.suffix.lower() in LANDING_SUFFIXES
        )


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


def load_datasets(sources_file: Path) -> list[DatasetSpec]:
    """Read `sources.toml`: one `[datasets.NAME]` table per dataset.

    Relative landing paths are resolved against the file's folder (the data home).
    """
    if not sources_file.exists():
        raise SourceConfigError(
            f"{sources_file}: no sources file; run `encore generate-sample` or write one "
            "(see README: 'Your own data')"
        )
    with sources_file.open("rb") as handle:
        try:
            document = tomllib.load(handle)
        except tomllib.TOMLDecodeError as err:
            raise SourceConfigError(f"{sources_file}: {err}") from err
    datasets = []
    for name, table in document.get("datasets", {}).items():
        where = f"{sources_file} [datasets.{name}]"
        table = dict(table)
        landing = table.pop("landing", None)
        pattern = table.pop("pattern", "*")
        names = table.pop("item_names", None)
        names_format = table.pop("item_names_format", None)
        names_path = None
        if names:
            names_path = Path(names) if Path(names).is_absolute() else sources_file.parent / names
        if not landing:
            raise SourceConfigError(f"{where}: 'landing' (a folder or a file) is required")
        landing_path = Path(landing)
        if not landing_path.is_absolute():
            landing_path = sources_file.parent / landing_path
        datasets.append(
            DatasetSpec(
                name,
                format_from_table(table, where),
                landing_path,
                pattern,
                names_path,
                names_format,
            )
        )
    return datasets
