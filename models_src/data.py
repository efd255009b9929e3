"""Interactions as arrays, stable train/val/test splits, and the user-item graph.

models_src never reads the warehouse: a Prefect task exports a snapshot to Parquet
(`Interactions.to_parquet`) and training reads that file (`Interactions.from_parquet`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

TRAIN, VAL, TEST = 0, 1, 2
SECONDS_PER_DAY = 86_400


@dataclass
class Interactions:
    """One dataset's interactions with dense indices (they never change across nights).

    `item_group` maps each item to a side node (artist for tracks, genre for movies), -1 when
    unknown. `rating` is None for implicit data; `ts` is unix seconds or None.
    """

    user: np.ndarray
    item: np.ndarray
    num_users: int
    num_items: int
    rating: np.ndarray | None = None
    ts: np.ndarray | None = None
    item_group: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Writeable (a Parquet read gives read-only arrays, which torch.from_numpy warns about).
        self.user = np.require(self.user, np.int64, ["W"])
        self.item = np.require(self.item, np.int64, ["W"])
        if len(self.user) != len(self.item):
            raise ValueError("user and item arrays differ in length")
        if len(self.user) and (
            self.user.max() >= self.num_users or self.item.max() >= self.num_items
        ):
            raise ValueError("an index is past num_users / num_items")

    def __len__(self) -> int:
        return len(self.user)

    @property
    def num_groups(self) -> int:
        if self.item_group is None or not len(self.item_group):
            return 0
        return int(self.item_group.max()) + 1

    def subset(self, mask: np.ndarray) -> Interactions:
        return Interactions(
            self.user[mask],
            self.item[mask],
            self.num_users,
            self.num_items,
            None if self.rating is None else self.rating[mask],
            None if self.ts is None else self.ts[mask],
            self.item_group,
            dict(self.meta),
        )

    def to_parquet(self, path: Path) -> None:
        columns = {"user_idx": self.user, "item_idx": self.item}
        if self.rating is not None:
            columns["rating"] = self.rating
        if self.ts is not None:
            columns["ts"] = self.ts
        meta = {"num_users": self.num_users, "num_items": self.num_items, **self.meta}
        if self.item_group is not None:
            meta["item_group"] = self.item_group.tolist()
        table = pa.table(columns).replace_schema_metadata({"encore": json.dumps(meta)})
        pq.write_table(table, path)

    @classmethod
    def from_parquet(cls, path: Path) -> Interactions:
        """Read an export: columns user_idx and item_idx, then rating and ts when present; sizes in
        the metadata."""
        table = pq.read_table(path)
        meta = json.loads((table.schema.metadata or {}).get(b"encore", b"{}"))
        user = table.column("user_idx").to_numpy()
        item = table.column("item_idx").to_numpy()
        groups = meta.pop("item_group", None)
        return cls(
            user,
            item,
            int(meta.pop("num_users", user.max() + 1 if len(user) else 0)),
            int(meta.pop("num_items", item.max() + 1 if len(item) else 0)),
            table.column("rating").to_numpy().astype(np.float32)
            if "rating" in table.column_names
            else None,
            table.column("ts").to_numpy().astype(np.int64) if "ts" in table.column_names else None,
            None if groups is None else np.asarray(groups, dtype=np.int64),
            meta,
        )


def _splitmix64(values: np.ndarray) -> np.ndarray:
    """A fixed 64-bit mix (splitmix64): the same bucket on every machine and every night,
    unlike Python's salted hash()."""
    z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _salt_value(salt: str) -> np.uint64:
    """The whole salt as 64 bits (blake2b): salts that share a prefix split differently."""
    digest = hashlib.blake2b(salt.encode(), digest_size=8).digest()
    return np.uint64(int.from_bytes(digest, "little"))


def _buckets(keys: np.ndarray, val_ratio: float, test_ratio: float) -> np.ndarray:
    _check_ratios(val_ratio, test_ratio)
    unit = (_splitmix64(keys) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    split = np.full(len(keys), TRAIN, dtype=np.int8)
    split[unit < test_ratio + val_ratio] = VAL
    split[unit < test_ratio] = TEST
    return split


def _check_ratios(val_ratio: float, test_ratio: float) -> None:
    if val_ratio < 0 or test_ratio < 0 or val_ratio + test_ratio >= 1:
        raise ValueError("need 0 <= val_ratio, test_ratio and val_ratio + test_ratio < 1")


def hash_split(
    data: Interactions, val_ratio: float, test_ratio: float, salt: str = "encore"
) -> np.ndarray:
    """TRAIN/VAL/TEST per interaction from a hash of (user, item, salt).

    Indices never change once given, so a pair keeps its bucket forever: the champion never
    trained on tonight's val or test pairs. About `ratio` of each user's pairs land in each bucket.
    """
    with np.errstate(over="ignore"):
        keys = _splitmix64(data.user.astype(np.uint64) ^ _salt_value(salt)) ^ data.item.astype(
            np.uint64
        )
        return _buckets(keys, val_ratio, test_ratio)


def _timestamps(data: Interactions, method: str) -> np.ndarray:
    if data.ts is None:
        raise ValueError(
            f"the {method} split needs timestamps; this source has none (use split method hash)"
        )
    return data.ts


# With `holdout_days`, each held-out part still holds at least this share of the events, so a
# quiet week does not leave the gate a handful of users to decide on.
MIN_HOLDOUT_SHARE = 0.05


def time_cuts(
    data: Interactions, val_ratio: float, test_ratio: float, holdout_days: float | None = None
) -> tuple[int, int]:
    """The forward holdout's cut points: the first timestamp of val and of test.

    Without `holdout_days`, the latest `test_ratio` of the events (by time) are test and the
    `val_ratio` before them val. With it, test is the last `holdout_days` and val the
    `holdout_days` before them (the days a nightly model serves next), each widened back to at
    least MIN_HOLDOUT_SHARE of the events and cut to at most its ratio (a history shorter than
    the days is not all held out). Events at a cut's very second go to the later part,
    so a cut never splits one timestamp.
    """
    _check_ratios(val_ratio, test_ratio)
    ts = np.sort(_timestamps(data, "time"))
    n = len(ts)
    if n == 0:
        return 0, 0

    def at_share(share_after: float) -> int:
        return int(ts[min(n - 1, int(n * (1.0 - share_after)))])

    if holdout_days is None:
        return at_share(val_ratio + test_ratio), at_share(test_ratio)
    end, span = int(ts[-1]) + 1, int(holdout_days * SECONDS_PER_DAY)
    # Each part: its days, widened to MIN_HOLDOUT_SHARE of the events, at most its ratio.
    test_cut = max(at_share(test_ratio), min(end - span, at_share(MIN_HOLDOUT_SHARE)))
    before_test = ts[ts < test_cut]
    at_least = max(1, int(n * MIN_HOLDOUT_SHARE))
    val_by_share = int(before_test[max(0, len(before_test) - at_least)]) if len(before_test) else 0
    val_cut = max(at_share(val_ratio + test_ratio), min(test_cut - span, val_by_share))
    return int(val_cut), int(test_cut)


def time_split(
    data: Interactions,
    val_ratio: float,
    test_ratio: float,
    salt: str = "encore",
    holdout_days: float | None = None,
) -> np.ndarray:
    """A forward holdout over the whole dataset: train before val before test, by timestamp.

    What a nightly system meets: the model learns the past and is judged on the latest events.
    The cuts are per dataset (one timeline), not per user. They move forward as days arrive, so
    an event's part can change from night to night (test today, train in a week); a model's
    registry entry records its cuts, and the gate refuses to compare a champion that trained past
    tonight's val cut. `salt` is unused (kept for the common signature).
    """
    val_cut, test_cut = time_cuts(data, val_ratio, test_ratio, holdout_days)
    split = np.full(len(data), TRAIN, dtype=np.int8)
    split[data.ts >= val_cut] = VAL
    split[data.ts >= test_cut] = TEST
    return split


def day_hash_split(
    data: Interactions, val_ratio: float, test_ratio: float, salt: str = "encore"
) -> np.ndarray:
    """TRAIN/VAL/TEST by whole UTC days: each day's part is a hash of (day, salt).

    Not a forward holdout (a held-out day can be older than training days), but as stable as the
    hash split, and events of one day never straddle train and test (no same-session leakage).
    """
    ts = _timestamps(data, "day-hash")
    with np.errstate(over="ignore"):
        days = (ts // SECONDS_PER_DAY).astype(np.int64)
        keys = _splitmix64(days.astype(np.uint64) ^ _salt_value(salt))
        return _buckets(keys, val_ratio, test_ratio)


SPLIT_METHODS = {"hash": hash_split, "time": time_split, "day-hash": day_hash_split}
AUTO_SPLIT = "auto"


# `auto` takes the forward holdout only when each held-out part holds at least this many
# returning users (users with events before it). Below it the forward holdout is mostly new users,
# who all get the same cold-start list, and a handful of returning ones: the gate would choose
# the personal model on a few dozen users (on MovieLens 100K's last weeks, 36), and served_quality
# measured the recent-popular list it then chose at 0.38x the hash split's choice on every user.
MIN_RETURNING_USERS = 100


def returning_users(
    data: Interactions, val_ratio: float, test_ratio: float, holdout_days: float | None = None
) -> tuple[int, int]:
    """Users of the forward holdout's val and of its test who have events before that part."""
    val_cut, test_cut = time_cuts(data, val_ratio, test_ratio, holdout_days)
    ts, user = _timestamps(data, "time"), data.user
    seen_before_val = np.unique(user[ts < val_cut])
    seen_before_test = np.unique(user[ts < test_cut])
    in_val = np.unique(user[(ts >= val_cut) & (ts < test_cut)])
    in_test = np.unique(user[ts >= test_cut])
    return (
        int(np.isin(in_val, seen_before_val, assume_unique=True).sum()),
        int(np.isin(in_test, seen_before_test, assume_unique=True).sum()),
    )


def resolve_split_method(
    how: str,
    data: Interactions,
    val_ratio: float = 0.15,
    test_ratio: float = 0.15,
    holdout_days: float | None = None,
) -> str:
    """`auto` is the forward holdout (`time`) when every event has a timestamp and each held-out
    part holds MIN_RETURNING_USERS returning users, else `hash`: a nightly system is judged on
    the days after its data, which only timestamps can show, but only where those days hold
    enough returning users to tell a personal model from a popular list."""
    if how != AUTO_SPLIT:
        return how
    if data.ts is None or not len(data.ts):
        return "hash"
    in_val, in_test = returning_users(data, val_ratio, test_ratio, holdout_days)
    return "time" if min(in_val, in_test) >= MIN_RETURNING_USERS else "hash"


def split_interactions(
    data: Interactions,
    how: str,
    val_ratio: float,
    test_ratio: float,
    salt: str = "encore",
    holdout_days: float | None = None,
) -> dict[str, Interactions]:
    """train / val / test of `data`; `holdout_days` is the time split's (see `time_cuts`)."""
    how = resolve_split_method(how, data, val_ratio, test_ratio, holdout_days)
    if how not in SPLIT_METHODS:
        raise ValueError(f"unknown split method {how!r}; choose one of {sorted(SPLIT_METHODS)}")
    if how == "time":
        buckets = time_split(data, val_ratio, test_ratio, salt, holdout_days)
    else:
        buckets = SPLIT_METHODS[how](data, val_ratio, test_ratio, salt)
    # Evaluation never reads time once the split is made, so val and test go without `ts` (8
    # bytes a row less); train keeps it for what counts recent interactions (models_src/
    # recency.py).
    timeless = replace(data, ts=None)
    return {
        "train": data.subset(buckets == TRAIN),
        "val": timeless.subset(buckets == VAL),
        "test": timeless.subset(buckets == TEST),
    }


def distinct_sorted(keys: np.ndarray) -> np.ndarray:
    """np.unique(keys) for a 1-D integer array, by a sort and a neighbour comparison.

    numpy 2.4's np.unique hashes first: on 8M mostly distinct int64 pair keys it took 12 s where
    this takes 0.2 s (the Protocol of a 10M-interaction night spent 33 s in it)."""
    ordered = np.sort(keys)
    if len(ordered) < 2:
        return ordered
    first = np.empty(len(ordered), dtype=bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    return ordered[first]


def pair_keys(data: Interactions) -> np.ndarray:
    """Sorted distinct user * num_items + item keys: a user-item pair once, however often seen."""
    return distinct_sorted(data.user.astype(np.int64) * data.num_items + data.item.astype(np.int64))


def bipartite_edge_index(train: Interactions, with_groups: bool = True) -> torch.Tensor:
    """Undirected user-item graph over nodes [users | items | groups], as PyG's edge_index.

    Items link to their group node (artist, genre) when known, so items with few interactions
    still get signal from their siblings.
    """
    n_users, n_items = train.num_users, train.num_items
    sources, targets = [train.user], [train.item + n_users]
    if with_groups and train.item_group is not None:
        known = np.flatnonzero(train.item_group >= 0)
        sources.append(known + n_users)
        targets.append(train.item_group[known] + n_users + n_items)
    num_nodes = n_users + n_items + (train.num_groups if with_groups else 0)
    source, target = np.concatenate(sources), np.concatenate(targets)
    # Both directions, each edge once (an interaction repeated on several days is one edge),
    # sorted by (source, target) as torch.unique(dim=1) would: through one int64 key per edge,
    # because the column-wise unique sorts rows of a 2 x E tensor at several times the memory
    # and time of a 1-D sort.
    both_ways = np.concatenate([source * num_nodes + target, target * num_nodes + source])
    keys = distinct_sorted(both_ways)
    return torch.from_numpy(np.stack([keys // num_nodes, keys % num_nodes]))


def keys_to_csr(
    keys: np.ndarray, num_users: int, num_items: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rowptr, col) of sorted pair keys (`pair_keys`): each user's distinct items, for
    relevance and exclusion masks.

    A pair seen on several days (repeated listens) counts once: otherwise it would inflate
    |relevant| in Recall's denominator while it can only be hit once."""
    users, items = keys // num_items, keys % num_items
    rowptr = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=num_users))])
    return torch.from_numpy(rowptr.astype(np.int64)), torch.from_numpy(items.astype(np.int64))
