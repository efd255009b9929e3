"""One replayed night judged on the next period: what Encore served, the model it served on the
first night (never retrained), the previous champion when tonight crowned a new one, and the
peers refit on the same history (models_src/replay.py).

Encore's lists are read where a user reads them: the exported Parquet files (the lists, and the
cold-start list a user never seen gets, which `encore recommend` returns). A version scored
again (frozen, or the previous champion) goes through its own ONNX scorer, as batch scoring
runs it, with the warehouse's ids; users it does not know get the cold-start list of the night
it was crowned.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from models_src.replay import (
    PEER_FITTERS,
    NextPeriod,
    as_interactions,
    top_k_lists,
)
from tasks.home import recommendations_file
from tasks.replay.events import Events
from tasks.score.cold_start import cold_start_file
from tasks.score.scoring import open_session
from tasks.warehouse.schema import warehouse as open_warehouse


@dataclass
class IdMaps:
    """The warehouse's dense indices of the replay's users and items (-1: not in it)."""

    user_idx: np.ndarray  # replay user -> warehouse idx
    item_of_idx: np.ndarray  # warehouse item idx -> replay item (-1: not a replay item)
    replay_items: int

    @classmethod
    def read(cls, warehouse: Path, dataset: str, events: Events) -> IdMaps:
        with open_warehouse(warehouse) as con:
            users = dict(
                con.execute(
                    "SELECT external_id, idx FROM user_ids WHERE dataset = ?", [dataset]
                ).fetchall()
            )
            items = con.execute(
                "SELECT external_id, idx FROM item_ids WHERE dataset = ? ORDER BY idx", [dataset]
            ).fetchall()
        replay_item = {item_id: i for i, item_id in enumerate(events.item_ids)}
        item_of_idx = np.full(len(items), -1, dtype=np.int64)
        for external, idx in items:
            item_of_idx[idx] = replay_item.get(external, -1)
        user_idx = np.array([users.get(u, -1) for u in events.user_ids], dtype=np.int64)
        return cls(user_idx, item_of_idx, len(events.item_ids))


def served_lists(exports: Path, dataset: str, events: Events, judged: NextPeriod, k: int):
    """What each active user got from Encore tonight: their list, or the cold-start list."""
    user_of = {u: i for i, u in enumerate(events.user_ids)}
    item_of = {item_id: i for i, item_id in enumerate(events.item_ids)}
    table = pq.read_table(recommendations_file(exports, dataset)).to_pydict()
    lists: dict[int, list[int]] = {}
    for user, item in zip(table["user_id"], table["item_id"], strict=True):  # sorted by rank
        lists.setdefault(user_of.get(user, -1), []).append(item_of.get(item, -1))
    cold = cold_start_items(exports, dataset, events)
    served, fallback = {}, 0
    for user in judged.users:
        mine = lists.get(int(user))
        if mine is None:
            fallback += 1
            had = set(judged.history_of(int(user)).tolist())
            mine = [i for i in cold if i not in had]
        served[int(user)] = np.asarray(mine[:k], dtype=np.int64)
    return served, fallback


def cold_start_items(exports: Path, dataset: str, events: Events) -> list[int]:
    path = cold_start_file(exports, dataset)
    if not path.exists():
        return []
    item_of = {item_id: i for i, item_id in enumerate(events.item_ids)}
    return [item_of.get(i, -1) for i in pq.read_table(path).column("item_id").to_pylist()]


def version_lists(
    artifact_dir: Path, cold: list[int], ids: IdMaps, judged: NextPeriod, k: int
) -> dict[int, np.ndarray]:
    """A registered version's top K for the active users through its ONNX scorer, their
    history excluded (and given as the blend's history, as batch scoring does)."""
    import json

    sizes = json.loads((artifact_dir / "scorer_meta.json").read_text())
    session = open_session(artifact_dir / "scorer.onnx")
    known_items = sizes["num_items"]
    replay_of_idx = ids.item_of_idx[:known_items]
    idx_of_replay = np.full(ids.replay_items, -1, dtype=np.int64)
    idx_of_replay[replay_of_idx[replay_of_idx >= 0]] = np.flatnonzero(replay_of_idx >= 0)
    lists = {}
    users = [int(u) for u in judged.users]
    known = [u for u in users if 0 <= ids.user_idx[u] < sizes["num_users"]]
    for start in range(0, len(known), 256):
        chunk = known[start : start + 256]
        exclude = np.zeros((len(chunk), known_items), dtype=bool)
        for row, user in enumerate(chunk):
            had = judged.history_of(user)
            had = idx_of_replay[had]
            exclude[row, had[(had >= 0) & (had < known_items)]] = True
        top, scores = session.run(
            None, {"users": ids.user_idx[chunk].astype(np.int64), "exclude": exclude}
        )
        for row, user in enumerate(chunk):
            keep = np.isfinite(scores[row])
            lists[user] = replay_of_idx[top[row][keep]][:k]
    for user in set(users) - set(known):
        had = set(judged.history_of(user).tolist())
        lists[user] = np.asarray([i for i in cold if i not in had][:k], dtype=np.int64)
    return lists


def peer_lists(
    events: Events, cut: int, judged: NextPeriod, settings: dict[str, dict], k: int
) -> dict[str, tuple[dict[int, np.ndarray], float]]:
    """Each peer refit on every event before `cut` with its chosen setting: lists and fit+score
    seconds."""
    import time

    keep = events.ts < cut
    history = as_interactions(
        events.user[keep],
        events.item[keep],
        events.ts[keep],
        len(events.user_ids),
        len(events.item_ids),
    )
    results = {}
    for name, chosen in settings.items():
        started = time.perf_counter()
        lists = top_k_lists(PEER_FITTERS[name](history, **chosen["params"]), judged, k)
        results[name] = (lists, time.perf_counter() - started)
    return results
