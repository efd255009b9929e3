"""The one evaluation protocol: what the trainer, the gate, the run report and the benchmark call.

Given a night's train / val / test split (models_src/data.py), a `Protocol` fixes, per user:
- the items never ranked (excluded): everything the user had before the evaluated part, i.e.
  train items for val, train and val items for test (and nothing for "train", the fit measure);
- the relevant items: the user's items in the evaluated part that were not already in an earlier
  part (a repeat listen of a train item is not a discovery), and for explicit data only those
  rated at or above the like threshold.
It then ranks every item for each user (full ranking, top K), and returns per-user metric vectors
(what the gate's paired tests need) with their means, two slices and two beyond-accuracy figures:
- cold users: users with at most `cold_user_max` distinct train items;
- long-tail items: every item outside the head, the most popular `head_share` of the catalogue by
  train interactions; tail Recall@K counts only tail relevant items, over users who have one;
- coverage@K: share of the catalogue in at least one user's top K;
- popularity@K: mean share of train users who had each recommended item (lower = less popular).

The metric formulas are the small pure functions of models_src/metrics.py (RecBole-style).
`PROTOCOL_VERSION` changes whenever any of the above would change a number; every registered
model records the version it was evaluated under, and the gate refuses to compare across versions.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from models_src.config import TrainConfig, like_threshold
from models_src.data import Interactions, distinct_sorted, keys_to_csr, pair_keys
from models_src.metrics import RANKING_METRICS, mae, rmse

# 3: users without train history are judged on the cold-start list (models_src/serving.py).
PROTOCOL_VERSION = 3
HELD_OUT = ("val", "test")
# The parts whose items a user already had before the evaluated one.
EARLIER_PARTS = {"train": (), "val": ("train",), "test": ("train", "val")}

# Users -> (users, items) scores. The result is masked in place: a scorer returns a tensor of
# its own making (a product, a fresh matrix), or a view, which is copied; never a stored tensor.
ScoreUsers = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class SliceSettings:
    cold_user_max: int = 5
    head_share: float = 0.2


def csr_rows(rowptr: Tensor, col: Tensor, users: Tensor) -> tuple[Tensor, Tensor]:
    """(row within the batch, column) pairs of the given users' CSR rows."""
    starts, ends = rowptr[users], rowptr[users + 1]
    lengths = ends - starts
    rows = torch.repeat_interleave(torch.arange(len(users)), lengths)
    offsets = torch.arange(int(lengths.sum())) - torch.repeat_interleave(
        torch.cumsum(lengths, 0) - lengths, lengths
    )
    return rows, col[torch.repeat_interleave(starts, lengths) + offsets]


@dataclass
class SplitResult:
    """One model on one part: per-user vectors (aligned on `users`) and their summary."""

    users: np.ndarray  # evaluated users (at least one relevant item), ascending
    per_user: dict[str, np.ndarray]  # "recall@10" -> one value per evaluated user
    cold: np.ndarray  # bool per evaluated user: at most cold_user_max train items
    summary: dict[str, float] = field(default_factory=dict)


class Protocol:
    """Relevant and excluded items of each part, built once per split and reused by every model
    evaluated on it (so their per-user vectors line up for paired tests)."""

    # Scores ranked at a time: 128 MB of float32. A block of 1,024 users over a 100k-item
    # catalogue would hold three times that, beside everything the process already holds.
    score_block_cells: int = 2**25

    def __init__(
        self,
        splits: dict[str, Interactions],
        like_threshold: float | None = None,
        slices: SliceSettings | None = None,
    ) -> None:
        train = splits["train"]
        self.num_users, self.num_items = train.num_users, train.num_items
        self.like_threshold = like_threshold
        self.slices = slices or SliceSettings()
        seen = {name: pair_keys(data) for name, data in splits.items()}
        self._exclude_keys = {
            name: _union([seen[p] for p in EARLIER_PARTS[name]]) for name in splits
        }
        self._relevant_keys = {
            name: np.setdiff1d(
                pair_keys(self._liked(data, name)), self._exclude_keys[name], assume_unique=True
            )
            for name, data in splits.items()
        }
        self.exclude = {
            name: keys_to_csr(keys, self.num_users, self.num_items)
            for name, keys in self._exclude_keys.items()
        }
        self.relevant = {
            name: keys_to_csr(keys, self.num_users, self.num_items)
            for name, keys in self._relevant_keys.items()
        }
        train_users = seen["train"] // self.num_items
        self.train_items_per_user = np.bincount(train_users, minlength=self.num_users)
        item_users = np.bincount(seen["train"] % self.num_items, minlength=self.num_items)
        self.item_popularity = item_users / max(1, int((self.train_items_per_user > 0).sum()))
        self.tail = self._tail_items(item_users)

    def _liked(self, data: Interactions, name: str) -> Interactions:
        if self.like_threshold is None or data.rating is None or name == "train":
            return data
        return data.subset(data.rating >= self.like_threshold)

    def _tail_items(self, item_users: np.ndarray) -> np.ndarray:
        """Bool per item: outside the head (the most popular head_share of the catalogue)."""
        head_size = int(round(self.slices.head_share * self.num_items))
        order = np.argsort(-item_users, kind="stable")
        tail = np.ones(self.num_items, dtype=bool)
        tail[order[:head_size]] = False
        return tail

    def users_with_relevant(self, part: str) -> np.ndarray:
        rowptr = self.relevant[part][0].numpy()
        return np.flatnonzero(rowptr[1:] > rowptr[:-1])

    def cold_users(self, part: str) -> np.ndarray:
        """Bool per evaluated user of `part` (the order of every per-user vector): cold or not."""
        users = self.users_with_relevant(part)
        return self.train_items_per_user[users] <= self.slices.cold_user_max

    def evaluate(
        self,
        score_users: ScoreUsers,
        part: str,
        k: int = 10,
        batch_size: int = 1024,
        device: torch.device | str = "cpu",
    ) -> SplitResult:
        """Full ranking of every item for each user with a relevant item in `part`.

        `score_users` maps a batch of user indices to (batch, num_items) scores. Excluded items
        are set to -inf before top-K, so they never count, not even as misses.
        """
        return self.evaluate_parts(score_users, (part,), k, batch_size, device)[part]

    def evaluate_parts(
        self,
        score_users: ScoreUsers,
        parts: tuple[str, ...] = HELD_OUT,
        k: int = 10,
        batch_size: int = 1024,
        device: torch.device | str = "cpu",
        same_for_everyone: Tensor | None = None,
    ) -> dict[str, SplitResult]:
        """`evaluate` on several parts, each user scored once (see `rank`): the same results as
        one `evaluate` per part, for the price of scoring the users of all of them once.

        `same_for_everyone`: the item scores of a scorer whose ranking is the same for every
        user (MostPopular; the bias baseline, whose user bias shifts a whole row), ranked by
        `rank_alike` without a users x items matrix; `score_users` is then not called."""
        if same_for_everyone is not None:
            tops = self.rank_alike(same_for_everyone, parts, k, batch_size)
        else:
            tops = self.rank(score_users, parts, k, batch_size, device)
        return {part: self._result(part, tops[part], k, batch_size) for part in parts}

    def rank_alike(
        self, item_scores: Tensor, parts: tuple[str, ...], k: int = 10, batch_size: int = 1024
    ) -> dict[str, Tensor]:
        """`rank` for one ranking shared by every user: each user's top K are the first K items
        of that order they have not had, so only the first K + (the user's excluded items) of
        the order are looked at. Ties go to the lower item index. A user left with fewer than K
        items gets the top of what they already had after them (misses, as `rank`'s -inf)."""
        order = torch.from_numpy(np.argsort(-item_scores.double().numpy(), kind="stable"))
        width = min(k, self.num_items)
        tops = {}
        for part in dict.fromkeys(parts):
            rowptr, _ = self.exclude[part]
            excluded_keys = torch.from_numpy(self._exclude_keys[part])
            users_all = torch.from_numpy(self.users_with_relevant(part))
            chunks = [torch.zeros((0, width), dtype=torch.long)]
            for start in range(0, len(users_all), batch_size):
                users = users_all[start : start + batch_size]
                most_excluded = int((rowptr[users + 1] - rowptr[users]).max())
                candidates = order[: min(self.num_items, width + most_excluded)]
                had = sorted_isin(users.unsqueeze(1) * self.num_items + candidates, excluded_keys)
                # Position in the order, pushed behind every item not had when had.
                place = torch.arange(len(candidates)) + had.long() * len(candidates)
                chosen = torch.topk(place, width, dim=1, largest=False).indices
                chunks.append(candidates[chosen])
            tops[part] = torch.cat(chunks)
        return tops

    def rank(
        self,
        score_users: ScoreUsers,
        parts: tuple[str, ...],
        k: int = 10,
        batch_size: int = 1024,
        device: torch.device | str = "cpu",
    ) -> dict[str, Tensor]:
        """Top-K items (users, K) of each part's evaluated users, in `users_with_relevant` order.

        Scoring is the cost (a users x items product per batch), so a user evaluated on several
        parts is scored once: the parts' exclusions are nested (test excludes what val does, and
        val's items), so masking them one after the other on one score matrix, taking each
        part's top-K in between, ranks as scoring afresh for each part would.
        """
        order = _nested(parts)
        evaluated = {part: self.users_with_relevant(part) for part in order}
        users_all = reduce(np.union1d, evaluated.values())
        member = {p: np.isin(users_all, evaluated[p], assume_unique=True) for p in order}
        tops: dict[str, list[Tensor]] = {part: [] for part in order}
        batch_size = self.block_users(batch_size)
        for start in range(0, len(users_all), batch_size):
            users = torch.from_numpy(users_all[start : start + batch_size])
            scores = _writable(score_users(users.to(device)).float())
            for part in order:
                rows, cols = csr_rows(*self.exclude[part], users)
                scores[rows.to(device), cols.to(device)] = float("-inf")
                chosen = torch.from_numpy(member[part][start : start + batch_size])
                if bool(chosen.any()):
                    tops[part].append(_top_k(scores, chosen.to(device), k))
        width = min(k, self.num_items)
        return {
            part: torch.cat(tops[part]) if tops[part] else torch.zeros((0, width), dtype=torch.long)
            for part in order
        }

    def block_users(self, batch_size: int) -> int:
        """Users scored at a time: `batch_size`, fewer on a catalogue so large that their score
        matrix would pass `score_block_cells` (a block's top-K does not depend on its size)."""
        return max(1, min(batch_size, self.score_block_cells // max(1, self.num_items)))

    def _result(self, part: str, top: Tensor, k: int, batch_size: int) -> SplitResult:
        """Per-user metrics of `part` from its users' top-K. Batches of `batch_size` users, as the
        scoring once went: the popularity sum adds up in the same order, to the same float."""
        users_all = self.users_with_relevant(part)
        relevant_keys = torch.from_numpy(self._relevant_keys[part])
        tail_keys = torch.from_numpy(
            self._relevant_keys[part][self.tail[self._relevant_keys[part] % self.num_items]]
        )
        rel_ptr = self.relevant[part][0]
        n_relevant = (rel_ptr[1:] - rel_ptr[:-1]).numpy()
        n_tail = np.bincount(tail_keys.numpy() // self.num_items, minlength=self.num_users).astype(
            np.int64
        )
        per_user: dict[str, list[np.ndarray]] = {}
        recommended = np.zeros(self.num_items, dtype=bool)
        popularity_sum = 0.0
        for start in range(0, len(users_all), batch_size):
            users = torch.from_numpy(users_all[start : start + batch_size])
            batch_top = top[start : start + batch_size]
            keys = users.unsqueeze(1) * self.num_items + batch_top
            hits = sorted_isin(keys, relevant_keys)
            tail_hits = sorted_isin(keys, tail_keys)
            n_rel = torch.from_numpy(n_relevant[users.numpy()])
            for name, metric in RANKING_METRICS.items():
                per_user.setdefault(f"{name}@{k}", []).append(metric(hits, n_rel).double().numpy())
            n_tail_rel = n_tail[users.numpy()]
            tail_recall = np.where(
                n_tail_rel > 0, tail_hits.sum(1).numpy() / np.maximum(n_tail_rel, 1), np.nan
            )
            per_user.setdefault(f"tail_recall@{k}", []).append(tail_recall)
            recommended[batch_top.flatten().numpy()] = True
            popularity_sum += float(self.item_popularity[batch_top.numpy()].sum())
        vectors = {
            name: np.concatenate(parts) if parts else np.zeros(0)
            for name, parts in per_user.items()
        }
        if not vectors:
            vectors = {f"{name}@{k}": np.zeros(0) for name in (*RANKING_METRICS, "tail_recall")}
        result = SplitResult(users_all, vectors, self.cold_users(part))
        result.summary = self._summary(result, k, recommended, popularity_sum)
        return result

    def _summary(
        self, result: SplitResult, k: int, recommended: np.ndarray, popularity_sum: float
    ) -> dict[str, float]:
        n = len(result.users)
        summary = {name: _mean(values) for name, values in result.per_user.items()}
        for name in (f"recall@{k}", f"ndcg@{k}"):
            summary[f"cold_{name}"] = _mean(result.per_user[name][result.cold])
        summary["cold_users"] = int(result.cold.sum())
        summary[f"coverage@{k}"] = float(recommended.mean()) if self.num_items else 0.0
        summary[f"popularity@{k}"] = popularity_sum / (n * k) if n else float("nan")
        summary["users"] = n
        return summary


def save_results(path: Path, results: dict[str, SplitResult], key: dict) -> None:
    """Per-user vectors and summaries of evaluated parts, under `key` (what they answer: the
    night's evaluation record and the model's fingerprint), for a later process to reuse."""
    arrays = {}
    for part, result in results.items():
        arrays[f"{part}/users"], arrays[f"{part}/cold"] = result.users, result.cold
        arrays |= {f"{part}/metric/{name}": v for name, v in result.per_user.items()}
    summaries = {part: result.summary for part, result in results.items()}
    header = json.dumps({"key": key, "summaries": summaries}, default=float)
    with open(path, "wb") as f:
        np.savez(f, header=np.array(header), **arrays)


def load_results(path: Path, key: dict) -> dict[str, SplitResult]:
    """What `save_results` wrote at `path` under the same `key`; empty when the file is missing
    or answers another question (another night, split, K or model)."""
    if not path.exists():
        return {}
    with np.load(path) as saved:
        header = json.loads(str(saved["header"]))
        if header["key"] != json.loads(json.dumps(key, default=float)):
            return {}
        results = {}
        for part, summary in header["summaries"].items():
            prefix = f"{part}/metric/"
            per_user = {n[len(prefix) :]: saved[n] for n in saved.files if n.startswith(prefix)}
            results[part] = SplitResult(
                saved[f"{part}/users"], per_user, saved[f"{part}/cold"], summary
            )
    return results


def _writable(scores: Tensor) -> Tensor:
    """`scores`, or a copy of them when they are a view of another tensor (e.g. one popularity
    row expanded to every user): `rank` masks them in place. A scorer's own fresh product is
    masked as it is, which spares a users x items copy per batch."""
    return scores.clone() if scores._base is not None else scores


def _nested(parts: tuple[str, ...]) -> list[str]:
    """`parts` from the least excluded to the most, each excluding all that the one before did
    (what lets `Protocol.rank` mask one score matrix part after part)."""
    order = sorted(dict.fromkeys(parts), key=lambda part: len(EARLIER_PARTS[part]))
    for before, after in zip(order, order[1:], strict=False):
        if not set(EARLIER_PARTS[before]) <= set(EARLIER_PARTS[after]):
            raise ValueError(f"the exclusions of {before} and {after} are not nested")
    return order


def _top_k(scores: Tensor, chosen: Tensor, k: int) -> Tensor:
    """Top-K item indices (on the CPU) of the `chosen` rows of `scores`. Every row is ranked and
    the chosen ones kept: copying the chosen rows out first costs more than ranking the rest."""
    top = torch.topk(scores, min(k, scores.shape[1]), dim=1).indices
    return (top if bool(chosen.all()) else top[chosen]).cpu()


def sorted_isin(keys: Tensor, sorted_keys: Tensor) -> Tensor:
    """torch.isin(keys, sorted_keys) for ascending, distinct `sorted_keys`: a binary search per
    key, where isin sorts both tensors again on every call."""
    if len(sorted_keys) == 0:
        return torch.zeros_like(keys, dtype=torch.bool)
    found = torch.searchsorted(sorted_keys, keys).clamp_(max=len(sorted_keys) - 1)
    return sorted_keys[found] == keys


def _union(arrays: list[np.ndarray]) -> np.ndarray:
    if not arrays:
        return np.zeros(0, dtype=np.int64)
    return distinct_sorted(np.concatenate(arrays))


def _mean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else float("nan")


def rating_errors(predicted: Tensor, target: Tensor) -> np.ndarray:
    """Squared error per rating: the per-rating vector the gate's paired RMSE test resamples."""
    return ((predicted.double() - target.double()) ** 2).numpy()


def rating_summary(predicted: Tensor, target: Tensor) -> dict[str, float]:
    return {"rmse": rmse(predicted, target), "mae": mae(predicted, target)}


def evaluation_record(
    method: str,
    val_ratio: float,
    test_ratio: float,
    salt: str,
    data: Interactions,
    like: float | None,
    k: int,
    holdout_days: float | None = None,
) -> dict:
    """What a model version was evaluated under, as the registry keeps it: the split settings,
    the protocol version, the like threshold, K, and where tonight's data stands (for the gate's
    staleness rule and the time split's no-leak check)."""
    from models_src.data import resolve_split_method, time_cuts

    method = resolve_split_method(method, data, val_ratio, test_ratio, holdout_days)
    record = {
        "protocol": PROTOCOL_VERSION,
        "split": {
            "method": method,
            "val_ratio": val_ratio,
            "test_ratio": test_ratio,
            "salt": None if method == "time" else salt,
            **({"holdout_days": holdout_days} if method == "time" and holdout_days else {}),
        },
        "like_threshold": like,
        "k": k,
        "interactions": len(data),
        "data_until": int(data.ts.max()) if data.ts is not None and len(data) else None,
        "snapshot_id": data.meta.get("snapshot_id"),
    }
    if method == "time" and len(data):
        record["train_until"] = time_cuts(data, val_ratio, test_ratio, holdout_days)[0]
    return record


def night_record(data: Interactions, config: dict, k: int) -> dict:
    """The evaluation record of tonight's models trained with `config` (TrainConfig fields) on
    `data`."""
    c = TrainConfig.from_dict(config)
    like = like_threshold(data, c.rating_threshold)
    return evaluation_record(
        c.split, c.val_ratio, c.test_ratio, c.split_salt, data, like, k, c.holdout_days
    )


def incompatibility(champion: dict | None, tonight: dict) -> str | None:
    """Why a champion evaluated under `champion` cannot be compared with tonight's models (or
    warm-started from), or None when it can. A mismatch means its numbers answer another question,
    or that it may have trained on tonight's held-out pairs."""
    if champion is None:
        return "it has no evaluation record (registered before evaluation protocol 2)"
    if champion.get("protocol") != tonight["protocol"]:
        return (
            f"it was evaluated under protocol {champion.get('protocol')},"
            f" tonight's is {tonight['protocol']}"
        )
    for name in ("split", "like_threshold", "k"):
        if champion.get(name) != tonight.get(name):
            what = name.replace("_", " ")
            return f"its {what} was {champion.get(name)}, tonight's is {tonight.get(name)}"
    trained_until, cut = champion.get("train_until"), tonight.get("train_until")
    if trained_until is not None and cut is not None and trained_until > cut:
        return "it trained on events after tonight's val cut (the time split moved back)"
    return None
