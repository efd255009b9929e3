"""Deterministic sample data with planted structure, so a model has something real to learn.

The world: items belong to groups (artists for tracks, genres for movies); each group has a centre
in a small taste space; each user has a taste vector. An event picks a user (by activity), then
one of the user's favourite groups by affinity (softmax of taste · centre), then an item inside
the group by Zipf popularity; a small share of events explores the global popularity instead.
Ratings add user and item biases and the same affinity, on a half-star 1-5 scale. Users join
over the days, so later days bring new users, as real nightly arrivals do.

Everything is a pure function of (config, day): day N is the same bytes whether it is written
alone or with the rest, which is what lets `encore generate-sample --next-day` simulate
tomorrow's delivery.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

SampleKind = Literal["listens", "ratings"]
GENRES = [
    "Action",
    "Adventure",
    "Animation",
    "Children",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]
SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class SampleConfig:
    seed: int = 7
    n_users: int = 2_000
    n_items: int = 3_000
    n_groups: int = 40
    taste_dim: int = 8
    events_per_day: int = 3_000
    start: date = date(2026, 10, 1)
    zipf_exponent: float = 1.0
    taste_sharpness: float = 3.0
    exploration: float = 0.1
    late_joiner_share: float = 0.3  # users who join after day 0, uniformly over `join_horizon_days`
    join_horizon_days: int = 60


class SampleWorld:
    """The fixed latent world; `events(kind, day)` draws one day of interactions from it."""

    def __init__(self, config: SampleConfig) -> None:
        self.config = config
        rng = np.random.default_rng([config.seed, 0])
        c = config
        centres = rng.normal(size=(c.n_groups, c.taste_dim))
        self.group_centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        # Users lean towards one or two groups: a taste near a random centre, plus noise.
        anchor = rng.integers(0, c.n_groups, size=c.n_users)
        tastes = self.group_centres[anchor] + 0.5 * rng.normal(size=(c.n_users, c.taste_dim))
        self.user_taste = tastes / np.linalg.norm(tastes, axis=1, keepdims=True)
        self.user_activity = rng.lognormal(0.0, 1.0, size=c.n_users)
        late = rng.random(c.n_users) < c.late_joiner_share
        self.user_join_day = np.where(late, rng.integers(1, c.join_horizon_days, c.n_users), 0)
        self.user_bias = rng.normal(0.0, 0.4, size=c.n_users)
        self._build_user_group_choice()
        # Items: a group each, Zipf popularity by a random rank, a bias and a track length.
        self.item_group = rng.integers(0, c.n_groups, size=c.n_items)
        ranks = rng.permutation(c.n_items) + 1
        self.item_popularity = ranks.astype(float) ** -c.zipf_exponent
        self.item_bias = rng.normal(0.0, 0.5, size=c.n_items)
        self.item_length_ms = rng.integers(120_000, 360_000, size=c.n_items)
        self._build_group_sampler()

    def _build_user_group_choice(self, top_groups: int = 8, users_per_block: int = 8_192) -> None:
        """Each user's few favourite groups and the softmax over them.

        Keeping the top groups only bounds memory at users x 8 instead of events x groups (a
        10M-event night over 2,000 artists would otherwise need tens of GB)."""
        c = self.config
        k = min(top_groups, c.n_groups)
        self.user_top_groups = np.empty((c.n_users, k), dtype=np.int64)
        self.user_group_cdf = np.empty((c.n_users, k))
        for start in range(0, c.n_users, users_per_block):
            block = slice(start, start + users_per_block)
            logits = c.taste_sharpness * self.user_taste[block] @ self.group_centres.T
            top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
            top_logits = np.take_along_axis(logits, top, axis=1)
            probs = np.exp(top_logits - top_logits.max(axis=1, keepdims=True))
            self.user_top_groups[block] = top
            self.user_group_cdf[block] = np.cumsum(probs, axis=1) / probs.sum(axis=1, keepdims=True)

    def _build_group_sampler(self) -> None:
        """Items sorted by group with within-group cumulative popularity shifted by group index,
        so one `searchsorted(g + u)` draws an item of group g for a whole batch at once."""
        order = np.lexsort((np.arange(self.config.n_items), self.item_group))
        groups = self.item_group[order]
        weights = self.item_popularity[order]
        cumulative = np.zeros(len(order))
        for g in np.unique(groups):
            members = groups == g
            cumulative[members] = g + np.cumsum(weights[members]) / weights[members].sum()
        self._items_by_group = order
        self._group_cumulative = cumulative
        self._global_cumulative = np.cumsum(self.item_popularity) / self.item_popularity.sum()

    def day_size(self, day: int) -> int:
        rng = np.random.default_rng([self.config.seed, 1, day])
        return int(rng.poisson(self.config.events_per_day))

    def _draw(self, day: int, size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        c = self.config
        eligible = np.flatnonzero(self.user_join_day <= day)
        activity = self.user_activity[eligible]
        users = eligible[rng.choice(len(eligible), size=size, p=activity / activity.sum())]
        choice = (self.user_group_cdf[users] < rng.random((size, 1))).sum(axis=1)
        choice = np.minimum(choice, self.user_top_groups.shape[1] - 1)
        groups = self.user_top_groups[users, choice]
        position = np.searchsorted(self._group_cumulative, groups + rng.random(size))
        items = self._items_by_group[np.minimum(position, c.n_items - 1)]
        explore = rng.random(size) < c.exploration
        global_pick = np.searchsorted(self._global_cumulative, rng.random(explore.sum()))
        items[explore] = np.minimum(global_pick, c.n_items - 1)
        seconds = np.sort(rng.integers(0, SECONDS_PER_DAY, size=size))
        affinity = np.einsum(
            "ij,ij->i", self.user_taste[users], self.group_centres[self.item_group[items]]
        )
        return {"users": users, "items": items, "seconds": seconds, "affinity": affinity}

    def events(self, kind: SampleKind, day: int, chunk_rows: int = 1_000_000) -> Iterator[pa.Table]:
        """One day of events as Arrow tables of at most `chunk_rows` rows (bounded memory)."""
        total = self.day_size(day)
        day_start = datetime.combine(self.config.start + timedelta(days=day), datetime.min.time())
        for chunk_index, offset in enumerate(range(0, total, chunk_rows)):
            rng = np.random.default_rng([self.config.seed, 2, day, chunk_index])
            drawn = self._draw(day, min(chunk_rows, total - offset), rng)
            times = np.datetime64(day_start, "s") + drawn["seconds"].astype("timedelta64[s]")
            yield (
                self._listens(drawn, times, rng)
                if kind == "listens"
                else self._ratings(drawn, times, rng)
            )

    def _listens(self, drawn: dict, times: np.ndarray, rng: np.random.Generator) -> pa.Table:
        items = drawn["items"]
        # Liked tracks are played further through.
        completion = rng.beta(2.0 + 3.0 * np.clip(drawn["affinity"], 0, None), 2.0)
        ms_played = np.maximum(1_000, (completion * self.item_length_ms[items]).astype(np.int64))
        return pa.table(
            {
                "user_id": _ids("u", drawn["users"], 6),
                "track_id": _ids("t", items, 6),
                "artist_id": _ids("a", self.item_group[items], 4),
                "played_at": pa.array(times, pa.timestamp("s")),
                "ms_played": ms_played,
            }
        )

    def _ratings(self, drawn: dict, times: np.ndarray, rng: np.random.Generator) -> pa.Table:
        users, items = drawn["users"], drawn["items"]
        raw = (
            3.3
            + self.user_bias[users]
            + self.item_bias[items]
            + 1.2 * drawn["affinity"]
            + rng.normal(0.0, 0.5, size=len(users))
        )
        ratings = np.clip(np.round(raw * 2) / 2, 1.0, 5.0)
        return pa.table(
            {
                "user_id": _ids("u", users, 5),
                "movie_id": _ids("m", items, 5),
                "genre": pa.array(self._genre_names()[self.item_group[items]]),
                "rating": ratings,
                "rated_at": pa.array(times, pa.timestamp("s")),
            }
        )

    def _genre_names(self) -> np.ndarray:
        n = self.config.n_groups
        names = GENRES[:n] if n <= len(GENRES) else [f"genre{g:03d}" for g in range(n)]
        return np.array(names)


def _ids(prefix: str, indices: np.ndarray, width: int) -> pa.Array:
    return pa.array(np.char.add(prefix, np.char.zfill(indices.astype(str), width)))


def write_events(
    world: SampleWorld, kind: SampleKind, days: range, path: Path, chunk_rows: int = 1_000_000
) -> int:
    """Stream the given days into one CSV file; returns the number of rows written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    rows = 0
    writer: pacsv.CSVWriter | None = None
    try:
        for day in days:
            for table in world.events(kind, day, chunk_rows):
                if writer is None:
                    writer = pacsv.CSVWriter(partial, table.schema)
                writer.write_table(table)
                rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    # Rename last, so a landing-folder scan never sees a half-written file.
    partial.replace(path)
    return rows


def default_configs() -> dict[SampleKind, SampleConfig]:
    """The built-in sample: a small music service and a small movie site."""
    return {
        "listens": SampleConfig(seed=7, n_users=2_000, n_items=3_000, n_groups=40),
        "ratings": SampleConfig(
            seed=11, n_users=1_200, n_items=1_600, n_groups=len(GENRES), events_per_day=1_500
        ),
    }


def day_file(folder: Path, kind: SampleKind, day: int, start: date) -> Path:
    return folder / f"{kind}_{(start + timedelta(days=day)).isoformat()}.csv"


def existing_days(folder: Path, kind: SampleKind, start: date) -> list[int]:
    days = []
    for path in folder.glob(f"{kind}_*.csv"):
        try:
            days.append((date.fromisoformat(path.stem.split("_", 1)[1]) - start).days)
        except ValueError:
            continue
    return sorted(days)


def write_sample_days(
    folder: Path, kind: SampleKind, config: SampleConfig, days: range
) -> list[Path]:
    """One file per day (`listens_2026-10-01.csv`), skipping days already on disk."""
    world = SampleWorld(config)
    written = []
    for day in days:
        path = day_file(folder, kind, day, config.start)
        if not path.exists():
            write_events(world, kind, range(day, day + 1), path)
            written.append(path)
    return written
