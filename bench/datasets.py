"""Dataset loaders for the training benchmark: public data from ../shared/data and the sample.

Every loader returns an `Interactions` with dense indices given in order of first appearance
(`pandas.factorize`), so a run is reproducible from the file alone. The shared files are read in
place and never copied into the repository; the two sample datasets are generated in memory so
the benchmark (and its tests) run on a machine without ../shared.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from models_src.data import Interactions
from models_src.datasets import load_source

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SAMPLE_DAYS = 30

_FILES = {
    "ml-100k-implicit": "ml-100k/u.data",
    "ml-100k-ratings": "ml-100k/u.data",
    "lastfm": "hetrec2011-lastfm-2k/user_artists.dat",
    "ml-latest-small-implicit": "ml-latest-small/ratings.csv",
    "ml-latest-small-ratings": "ml-latest-small/ratings.csv",
    "lastfm-sparse": "hetrec2011-lastfm-2k/user_artists.dat",
}
# Datasets whose interactions carry a weight (Last.fm's listen count) a peer may use as
# confidence; `load_dataset(name, weights=True)` keeps it in `rating`.
WEIGHTED = ("lastfm",)


def _dense(values: pd.Series | np.ndarray) -> tuple[np.ndarray, int]:
    """Dense 0..n-1 codes in order of first appearance, and n."""
    codes, uniques = pd.factorize(values, sort=False)
    return codes.astype(np.int64), len(uniques)


def _from_frame(
    frame: pd.DataFrame, name: str, source: str, rating: bool, ts: bool
) -> Interactions:
    users, n_users = _dense(frame["user"].to_numpy())
    items, n_items = _dense(frame["item"].to_numpy())
    return Interactions(
        users,
        items,
        n_users,
        n_items,
        rating=frame["rating"].to_numpy(np.float32) if rating else None,
        ts=frame["ts"].to_numpy(np.int64) if ts else None,
        meta={"name": name, "source": source},
    )


def _shared(name: str, keep_rating: bool) -> Interactions:
    """A public file through the same reader `python -m models_src.train_improved --data FILE`
    uses, so the benchmark and the CLIs see identical indices."""
    path = SHARED_DATA / _FILES[name]
    data = load_source(str(path))
    if not keep_rating:
        data.rating = None
    data.meta = {"name": name, "source": str(path)}
    return data


def _lastfm_sparse(name: str) -> Interactions:
    """Last.fm cut to 7 artists per user (bench/user_data.py, the shape bench-served feeds the
    nightly): the sparse shape, ~7 interactions per user."""
    from bench.user_data import load as load_user_data

    frame, _ = load_user_data("lastfm-sparse")
    return _from_frame(frame, name, str(SHARED_DATA / _FILES[name]), rating=False, ts=False)


def _listen_counts(name: str) -> Interactions:
    """Last.fm with each (user, artist) pair's listen count in `rating`, indices identical to
    `load_dataset("lastfm")` (same file, same order of first appearance)."""
    path = SHARED_DATA / _FILES[name]
    data = load_source(str(path))
    data.rating = pd.read_csv(path, sep="\t")["weight"].to_numpy(np.float32)
    data.meta = {"name": name, "source": str(path)}
    return data


def _sample_frame(kind: str) -> pd.DataFrame:
    from models_src.sample_data import SampleWorld, default_configs

    world = SampleWorld(default_configs()[kind])
    tables = [table for day in range(SAMPLE_DAYS) for table in world.events(kind, day)]
    return pa.concat_tables(tables).to_pandas()


def _with_groups(data: Interactions, groups: pd.Series) -> Interactions:
    """item_group[i] = dense index of item i's group (artist, genre), by first appearance."""
    group_codes, _ = _dense(groups.to_numpy())
    item_group = np.full(data.num_items, -1, dtype=np.int64)
    item_group[data.item] = group_codes
    data.item_group = item_group
    return data


def _sample_implicit(name: str) -> Interactions:
    """30 days of sample listens. A track played on several days is one positive (the first
    play): repeated pairs would count twice in Recall's denominator."""
    frame = _sample_frame("listens").rename(columns={"user_id": "user", "track_id": "item"})
    frame["ts"] = frame["played_at"].astype("datetime64[s]").astype(np.int64)
    frame = frame.drop_duplicates(["user", "item"], keep="first").reset_index(drop=True)
    data = _from_frame(frame, name, "generated", rating=False, ts=True)
    return _with_groups(data, frame["artist_id"])


def _sample_ratings(name: str) -> Interactions:
    """30 days of sample ratings; a movie rated again keeps its latest rating."""
    frame = _sample_frame("ratings").rename(columns={"user_id": "user", "movie_id": "item"})
    frame["ts"] = frame["rated_at"].astype("datetime64[s]").astype(np.int64)
    frame = frame.drop_duplicates(["user", "item"], keep="last").reset_index(drop=True)
    data = _from_frame(frame, name, "generated", rating=True, ts=True)
    return _with_groups(data, frame["genre"])


_LOADERS: dict[str, Callable[[str], Interactions]] = {
    "ml-100k-implicit": lambda name: _shared(name, keep_rating=False),
    "ml-100k-ratings": lambda name: _shared(name, keep_rating=True),
    "lastfm": lambda name: _shared(name, keep_rating=False),
    "ml-latest-small-implicit": lambda name: _shared(name, keep_rating=False),
    "ml-latest-small-ratings": lambda name: _shared(name, keep_rating=True),
    "lastfm-sparse": _lastfm_sparse,
    "sample-implicit": _sample_implicit,
    "sample-ratings": _sample_ratings,
}
DATASETS = tuple(_LOADERS)


def available(name: str) -> bool:
    """False when the dataset needs a shared file this machine lacks (the sample always works)."""
    if name not in _LOADERS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return name not in _FILES or (SHARED_DATA / _FILES[name]).is_file()


def load_dataset(name: str, weights: bool = False) -> Interactions:
    """Load a benchmark dataset by name (see DATASETS); `weights` keeps the interaction weights
    of a WEIGHTED dataset."""
    if not available(name):
        raise FileNotFoundError(f"{name}: {SHARED_DATA / _FILES[name]} is missing")
    if weights:
        if name not in WEIGHTED:
            raise ValueError(f"{name} has no interaction weights; weighted: {', '.join(WEIGHTED)}")
        return _listen_counts(name)
    return _LOADERS[name](name)
