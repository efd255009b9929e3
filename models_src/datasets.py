"""Training data from files: a warehouse export (Parquet), a known public format, or the
built-in generated sample. Pure pandas/numpy: the warehouse is never read from here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from models_src.data import Interactions
from models_src.sample_data import SampleConfig, SampleWorld, default_configs

SAMPLE_SOURCES = {"sample-listens": "listens", "sample-ratings": "ratings"}
# File name -> (pandas read options, column names, rating scale or None for implicit)
KNOWN_FILES = {
    "u.data": ({"sep": "\t", "header": None}, ["user", "item", "rating", "ts"], (1.0, 5.0)),
    "ratings.csv": ({"sep": ","}, ["user", "item", "rating", "ts"], (0.5, 5.0)),
    "ratings.dat": (
        {"sep": "::", "header": None, "engine": "python"},
        ["user", "item", "rating", "ts"],
        (1.0, 5.0),
    ),
    "user_artists.dat": ({"sep": "\t"}, ["user", "item", "weight"], None),
}


def from_frame(
    frame: pd.DataFrame, rating_scale: tuple[float, float] | None, name: str
) -> Interactions:
    """Dense indices in order of first appearance, the external ids kept in `meta`."""
    user_idx, user_ids = pd.factorize(frame["user"])
    item_idx, item_ids = pd.factorize(frame["item"])
    group = None
    if "group" in frame:
        first_group = frame.groupby(item_idx)["group"].first()
        group = pd.factorize(first_group.sort_index())[0].astype(np.int64)
    meta = {
        "name": name,
        "user_ids": [str(u) for u in user_ids],
        "item_ids": [str(i) for i in item_ids],
    }
    if rating_scale:
        meta["rating_scale"] = list(rating_scale)
    return Interactions(
        user_idx,
        item_idx,
        len(user_ids),
        len(item_ids),
        frame["rating"].to_numpy(np.float32) if rating_scale else None,
        frame["ts"].to_numpy(np.int64) if "ts" in frame else None,
        group,
        meta,
    )


def generated_sample(kind: str, days: int = 30, config: SampleConfig | None = None) -> Interactions:
    """The built-in sample (models_src.sample_data), exactly what `encore generate-sample`
    writes for the same days; another world's with `config` (a benchmark's larger one)."""
    world = SampleWorld(config or default_configs()[kind])
    table = pa.concat_tables(t for day in range(days) for t in world.events(kind, day)).to_pandas()
    if kind == "listens":
        frame = table.rename(columns={"user_id": "user", "track_id": "item", "artist_id": "group"})
        timestamps = frame["played_at"]
        scale = None
    else:
        frame = table.rename(columns={"user_id": "user", "movie_id": "item", "genre": "group"})
        timestamps = frame["rated_at"]
        scale = (1.0, 5.0)
    frame["ts"] = timestamps.astype("datetime64[s]").astype(np.int64)
    return from_frame(frame, scale, f"sample-{kind}")


def load_source(source: str) -> Interactions:
    """`sample-listens`, `sample-ratings`, a `.parquet` export, or a known public file."""
    if source in SAMPLE_SOURCES:
        return generated_sample(SAMPLE_SOURCES[source])
    path = Path(source)
    if path.suffix == ".parquet":
        return Interactions.from_parquet(path)
    if path.name not in KNOWN_FILES:
        raise ValueError(
            f"{source}: unknown source; use {sorted(SAMPLE_SOURCES)}, a .parquet export, or one of"
            f" {sorted(KNOWN_FILES)}"
        )
    options, names, scale = KNOWN_FILES[path.name]
    frame = pd.read_csv(path, **options)
    frame.columns = names
    return from_frame(frame, scale, path.name)
