"""Replay: a dataset's history delivered period by period, each night's lists judged on the next
period, as users meet them (what `encore replay` and `make bench-replay` measure).

Pure numpy/torch: the flow (flows/replay.py) lands the periods and runs the real nightly; this
module cuts the timeline, scores top-K lists on the next period and fits the peers a user would
refit on the same schedule.

The next-period protocol, per night with history H (every event before the cut) and next period
P (the events of the following period):
- active users: users with at least one item in P that is new to them (not in H);
- relevant: those new items (an item never seen in H counts too: nobody can recommend it, and
  it is a miss for everyone);
- each contender's top K excludes the user's items in H (what Encore's lists exclude);
- Recall@K = hits / |relevant|, NDCG@K binary with IDCG over min(K, |relevant|); a user with no
  list scores 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from models_src.baselines import user_items_matrix
from models_src.data import SECONDS_PER_DAY, Interactions
from models_src.recency import popularity_scores

PERIOD_SECONDS = {"day": SECONDS_PER_DAY, "week": 7 * SECONDS_PER_DAY}


def period_cuts(ts: np.ndarray, start: float, period: str, nights: int | None = None) -> list[int]:
    """The cut points of the replay: night i's history ends at cuts[i] and it is judged on
    [cuts[i], cuts[i + 1]). `start`: the share of the events (by time) before the first cut.
    Months are calendar months; the last period may be short."""
    ts = np.sort(ts)
    first = int(ts[min(len(ts) - 1, int(len(ts) * start))])
    end = int(ts[-1]) + 1
    if period == "month":
        month = np.datetime64(first, "s").astype("datetime64[M]")
        cuts = [first]
        while cuts[-1] < end:
            month = month + 1
            cuts.append(int(month.astype("datetime64[s]").astype(np.int64)))
    else:
        step = PERIOD_SECONDS[period]
        cuts = list(range(first, end + step, step))
    cuts[-1] = min(cuts[-1], end)
    if nights is not None:
        cuts = cuts[: nights + 1]
    return cuts


@dataclass
class NextPeriod:
    """The judged users of one night: each user's history (CSR over items) and relevant items."""

    users: np.ndarray  # active users, ascending
    relevant: list[np.ndarray]  # per active user: items new to them in the period
    history_rowptr: np.ndarray  # CSR over every user of the replay: items in H
    history_items: np.ndarray
    seen_users: np.ndarray  # bool per active user: had history before the cut
    new_items: float  # share of the relevant (user, item) pairs whose item H never saw

    @classmethod
    def build(cls, history: Interactions, period: Interactions) -> NextPeriod:
        n_items = history.num_items
        history_keys = np.unique(history.user * n_items + history.item)
        period_keys = np.unique(period.user * n_items + period.item)
        fresh = period_keys[~np.isin(period_keys, history_keys, assume_unique=True)]
        users, items = fresh // n_items, fresh % n_items
        active, starts = np.unique(users, return_index=True)
        relevant = np.split(items, starts[1:]) if len(active) else []
        counts = np.bincount(history_keys // n_items, minlength=history.num_users)
        rowptr = np.concatenate([[0], np.cumsum(counts)])
        item_seen = np.bincount(history.item, minlength=n_items) > 0
        return cls(
            active,
            relevant,
            rowptr,
            history_keys % n_items,
            counts[active] > 0,
            float((~item_seen[items]).mean()) if len(items) else 0.0,
        )

    def history_of(self, user: int) -> np.ndarray:
        return self.history_items[self.history_rowptr[user] : self.history_rowptr[user + 1]]

    def score(self, lists: dict[int, np.ndarray], k: int = 10) -> dict[str, np.ndarray]:
        """Per active user Recall@K and NDCG@K of `lists` (user -> ranked items)."""
        recall, ndcg = np.zeros(len(self.users)), np.zeros(len(self.users))
        discounts = 1.0 / np.log2(np.arange(2, k + 2))
        for row, (user, relevant) in enumerate(zip(self.users, self.relevant, strict=True)):
            ranked = lists.get(int(user))
            if ranked is None or not len(ranked):
                continue
            hits = np.isin(ranked[:k], relevant)
            recall[row] = hits.sum() / len(relevant)
            ndcg[row] = (hits * discounts[: len(hits)]).sum() / discounts[
                : min(k, len(relevant))
            ].sum()
        return {f"recall@{k}": recall, f"ndcg@{k}": ndcg}


def top_k_lists(
    score_users: Callable[[np.ndarray], np.ndarray],
    judged: NextPeriod,
    k: int = 10,
    batch: int = 512,
) -> dict[int, np.ndarray]:
    """Each active user's top K of `score_users` (users -> (users, items) scores), their
    history excluded."""
    lists = {}
    for start in range(0, len(judged.users), batch):
        users = judged.users[start : start + batch]
        scores = np.array(score_users(users), dtype=np.float32, copy=True)
        for row, user in enumerate(users):
            scores[row, judged.history_of(int(user))] = -np.inf
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        for row, user in enumerate(users):
            keep = np.isfinite(scores[row, top[row]])
            lists[int(user)] = top[row][keep]
    return lists


# --- Peers: what a user would refit on the same schedule, hyperparameters chosen once. -------


def _with_fallback(
    personal: Callable[[np.ndarray], np.ndarray], history: Interactions
) -> Callable[[np.ndarray], np.ndarray]:
    """A personalised peer for users with history, all-time MostPopular for users without (the
    fallback a user of the library would write)."""
    popular = popularity_scores(history, None).numpy().astype(np.float32)
    has_history = np.bincount(history.user, minlength=history.num_users) > 0

    def score(users: np.ndarray) -> np.ndarray:
        rows = np.asarray(personal(users), dtype=np.float32)
        rows[~has_history[users]] = popular
        return rows

    return score


def most_popular_peer(history: Interactions, window_days: float | None = None):
    """Items by interactions, all time or in the last `window_days` (a hard window, as a user
    would write it: the issue's 28-day list), ties by all-time counts then index."""
    overall = np.bincount(history.item, minlength=history.num_items).astype(np.float64)
    recent = overall
    if window_days is not None:
        keep = history.ts >= int(history.ts.max()) - window_days * SECONDS_PER_DAY
        recent = np.bincount(history.item[keep], minlength=history.num_items).astype(np.float64)
    order = np.lexsort((np.arange(history.num_items), -overall, -recent))
    scores = np.empty(history.num_items, dtype=np.float32)
    scores[order] = np.arange(history.num_items, 0, -1, dtype=np.float32)
    return lambda users: np.broadcast_to(scores, (len(users), len(scores)))


def als_peer(history: Interactions, regularization: float, alpha: float, seed: int = 0):
    from models_src.baselines import fit_als

    fitted = fit_als(history, regularization, alpha, seed=seed)
    user_emb, item_emb = fitted.buffers["user_emb"].numpy(), fitted.buffers["item_emb"].numpy()
    return _with_fallback(lambda users: user_emb[users] @ item_emb.T, history)


def ease_peer(history: Interactions, lam: float):
    from models_src.item_item import ease_weights

    weights, matrix = ease_weights(history, lam).numpy(), user_items_matrix(history)
    return _with_fallback(lambda users: matrix[users] @ weights, history)


def rp3beta_peer(history: Interactions, alpha: float, beta: float, neighbours: int = 200):
    """RP3beta (Paudel et al. 2016): item-item transition probabilities through users, raised to
    `alpha`, divided by the target item's popularity to the `beta`, top `neighbours` per item."""
    from scipy.sparse import csr_matrix, diags

    matrix = user_items_matrix(history)
    user_degree = np.asarray(matrix.sum(1)).ravel()
    item_degree = np.asarray(matrix.sum(0)).ravel()
    p_ui = diags(1.0 / np.maximum(user_degree, 1)) @ matrix
    p_iu = diags(1.0 / np.maximum(item_degree, 1)) @ matrix.T
    p_ui.data **= alpha
    p_iu.data **= alpha
    weights = (p_iu @ p_ui).toarray().astype(np.float32)
    weights /= np.maximum(item_degree, 1)[np.newaxis, :] ** beta
    np.fill_diagonal(weights, 0.0)
    if neighbours < weights.shape[1]:
        cut = np.argpartition(-weights, neighbours, axis=1)[:, neighbours:]
        np.put_along_axis(weights, cut, 0.0, axis=1)
    sparse = csr_matrix(weights)
    return _with_fallback(lambda users: (matrix[users] @ sparse).toarray(), history)


# The recent MostPopular peer's windows, in days.
PEER_WINDOWS = (7.0, 14.0, 28.0, 56.0, 112.0)
# Settings tried once on the forward holdout before the replay's start.
PEER_GRIDS: dict[str, tuple[dict, ...]] = {
    "MostPopular (all time)": ({},),
    "MostPopular (recent)": tuple({"window_days": w} for w in PEER_WINDOWS),
    "implicit ALS": (
        {"regularization": 10.0, "alpha": 3.0},
        {"regularization": 30.0, "alpha": 10.0},
        {"regularization": 100.0, "alpha": 10.0},
    ),
    "EASE^R": ({"lam": 50.0}, {"lam": 200.0}, {"lam": 500.0}, {"lam": 2000.0}),
    "RP3beta": (
        {"alpha": 1.0, "beta": 0.3},
        {"alpha": 0.75, "beta": 0.6},
        {"alpha": 1.0, "beta": 0.6},
    ),
}
PEER_FITTERS = {
    "MostPopular (all time)": most_popular_peer,
    "MostPopular (recent)": most_popular_peer,
    "implicit ALS": als_peer,
    "EASE^R": ease_peer,
    "RP3beta": rp3beta_peer,
}
# EASE^R and RP3beta hold a dense items x items matrix: past this many items they are skipped.
DENSE_PEER_MAX_ITEMS = 20_000


def peers_for(num_items: int) -> list[str]:
    dense = ("EASE^R", "RP3beta")
    return [p for p in PEER_GRIDS if p not in dense or num_items <= DENSE_PEER_MAX_ITEMS]


def choose_peer_settings(
    history: Interactions, holdout: NextPeriod, k: int = 10, names: list[str] | None = None
) -> dict[str, dict]:
    """Each peer's setting of best Recall@K on `holdout` (the period before the replay starts),
    fitted on `history`; the same settings then serve every night."""
    chosen = {}
    for name in names or peers_for(history.num_items):
        best, best_value = None, -1.0
        for setting in PEER_GRIDS[name]:
            lists = top_k_lists(PEER_FITTERS[name](history, **setting), holdout, k)
            value = float(holdout.score(lists, k)[f"recall@{k}"].mean())
            if value > best_value:
                best, best_value = setting, value
        chosen[name] = {"params": best, "holdout_recall": best_value}
    return chosen


def paired_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean of a - b over the same users, and its standard error."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if len(diff) < 2:
        return float(diff.mean()) if len(diff) else 0.0, float("nan")
    return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))


def as_interactions(
    user: np.ndarray, item: np.ndarray, ts: np.ndarray, num_users: int, num_items: int
) -> Interactions:
    return Interactions(user, item, num_users, num_items, ts=np.asarray(ts, dtype=np.int64))
