"""How far recency and personalisation together can go on the replay, with every setting chosen
on the judged periods themselves (an upper bound no model trained before the period can pass).

Issue 34 asks Encore's next-period lists to reach 1.05x the best peer, a recent MostPopular
included. This study answers whether any list built from the models Encore blends can: on the
replay's schedule (bench_replay.REPLAYS), each night refits EASE^R (the strongest personalised
peer on these datasets) on the history and scores the next period with

- recent MostPopular, every window of the replay's peer grid;
- EASE^R + a recency prior (decayed popularity, standardised, times the weight times EASE^R's
  own score spread: models_src/recency.py's arithmetic), each half-life and weight;
- two-stage: EASE^R's ranking within the N most recently popular items;
- the same prior anchored at each user's own last event instead of tonight.

Users never seen before the night get the 28-day MostPopular list in every contender (what
Encore's cold-start list gives them). The table reports each family's best over its settings,
pooled over (user, night) pairs: a family whose best stays below recent MostPopular cannot meet
the target, whatever the gate chooses.

`python -m bench.bench_replay --ceiling` writes bench/results/replay_ceiling.{json,md}.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bench.datasets import load_dataset
from models_src.baselines import user_items_matrix
from models_src.data import SECONDS_PER_DAY, Interactions
from models_src.item_item import ease_weights
from models_src.recency import popularity_scores
from models_src.replay import PEER_WINDOWS, NextPeriod, most_popular_peer, period_cuts, top_k_lists

Scorer = Callable[[np.ndarray], np.ndarray]
# dataset of bench.datasets -> the replay it mirrors and EASE^R's lambda (bench_replay's choice
# on the holdout before the start: results/replay_<dataset>.json).
CEILING_REPLAYS = {
    "ml-100k": ("ml-100k-implicit", 2000.0),
    "ml-latest-small": ("ml-latest-small-implicit", 200.0),
}
HALF_LIVES = (7.0, 28.0)
PRIOR_WEIGHTS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
CANDIDATES = (15, 20, 30, 50)
COLD_WINDOW_DAYS = 28.0


def _standardised(rows: np.ndarray) -> np.ndarray:
    centred = rows - rows.mean(axis=-1, keepdims=True)
    return centred / np.maximum(centred.std(axis=-1, keepdims=True), 1e-12)


def anchored_popularity(
    history: Interactions, half_life_days: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per user a row index into a (days, items) table of log1p popularity decayed both ways
    from that day: each user's row is the day of their last event (tonight for users without)."""
    last = np.full(history.num_users, -1, dtype=np.int64)
    np.maximum.at(last, history.user, history.ts)
    last = np.where(last >= 0, last, history.ts.max()) // SECONDS_PER_DAY
    days, row_of_user = np.unique(last, return_inverse=True)
    table = np.empty((len(days), history.num_items))
    for row, day in enumerate(days):
        age = np.abs(history.ts - (day + 0.5) * SECONDS_PER_DAY) / SECONDS_PER_DAY
        counts = np.bincount(history.item, np.exp2(-age / half_life_days), history.num_items)
        table[row] = np.log1p(counts)
    return _standardised(table), row_of_user


def contenders(history: Interactions, lam: float) -> dict[str, Scorer]:
    """Every (family, setting) scorer of one night, fitted on `history`."""
    weights, matrix = ease_weights(history, lam).numpy(), user_items_matrix(history)

    def ease(users: np.ndarray) -> np.ndarray:
        return np.asarray(matrix[users] @ weights)

    spread = float(ease(np.arange(min(512, history.num_users))).std(axis=1).mean())
    found: dict[str, Scorer] = {"EASE^R alone": ease}
    for window in PEER_WINDOWS:
        found[f"recent MostPopular | window {window:g} days"] = most_popular_peer(history, window)
    for half_life in HALF_LIVES:
        prior = _standardised(popularity_scores(history, half_life).numpy())
        table, row_of_user = anchored_popularity(history, half_life)
        order = np.argsort(-prior, kind="stable")
        for weight in PRIOR_WEIGHTS:
            setting = f"half-life {half_life:g} days, weight {weight:g}"
            found[f"EASE^R + recency prior | {setting}"] = lambda u, w=weight, p=prior: (
                ease(u) + w * spread * p
            )
            found[f"EASE^R + prior at the user's last event | {setting}"] = (
                lambda u, w=weight, t=table, r=row_of_user: ease(u) + w * spread * t[r[u]]
            )
        for n in CANDIDATES:
            outside = np.full(history.num_items, -1e9)
            outside[order[:n]] = 0.0
            found[f"EASE^R within the top N recent | half-life {half_life:g} days, N {n}"] = (
                lambda u, o=outside: _standardised(ease(u)) + o
            )
    return found


def _served(scorer: Scorer, history: Interactions, cold_list: Scorer) -> Scorer:
    known = np.bincount(history.user, minlength=history.num_users) > 0

    def score(users: np.ndarray) -> np.ndarray:
        rows = np.array(scorer(users), dtype=np.float32)
        rows[~known[users]] = cold_list(users[:1])[0]
        return rows

    return score


def replay_ceiling(dataset: str, start: float, period: str) -> dict:
    """Per contender the next-period Recall@10 / NDCG@10 pooled over (user, night) pairs."""
    name, lam = CEILING_REPLAYS[dataset]
    data = load_dataset(name)
    cuts = period_cuts(data.ts, start, period)
    per_contender: dict[str, dict[str, list[np.ndarray]]] = {}
    for night in range(len(cuts) - 1):
        history = data.subset(data.ts < cuts[night])
        judged = NextPeriod.build(
            history, data.subset((data.ts >= cuts[night]) & (data.ts < cuts[night + 1]))
        )
        cold_list = most_popular_peer(history, COLD_WINDOW_DAYS)
        for label, scorer in contenders(history, lam).items():
            scores = judged.score(top_k_lists(_served(scorer, history, cold_list), judged))
            into = per_contender.setdefault(label, {"recall@10": [], "ndcg@10": []})
            for metric in into:
                into[metric].append(scores[metric])
    table = {
        label: {metric: float(np.concatenate(values).mean()) for metric, values in m.items()}
        for label, m in per_contender.items()
    }
    return {"dataset": dataset, "nights": len(cuts) - 1, "period": period, "contenders": table}


def best_per_family(result: dict) -> dict[str, tuple[str, dict]]:
    """family -> (its best setting by Recall@10, that setting's figures)."""
    best: dict[str, tuple[str, dict]] = {}
    for label, figures in result["contenders"].items():
        family, _, setting = label.partition(" | ")
        if family not in best or figures["recall@10"] > best[family][1]["recall@10"]:
            best[family] = (setting or "–", figures)
    return best


def markdown(results: list[dict]) -> str:
    lines = [
        "# Replay ceiling: recency and personalisation with settings chosen on the judged periods",
        "",
        "`python -m bench.bench_replay --ceiling` (bench/replay_ceiling.py), this machine, one run."
        " Each family's best setting *on the next periods themselves* (an upper bound); never-seen"
        f" users get the {COLD_WINDOW_DAYS:g}-day MostPopular list in every row.",
    ]
    for result in results:
        best = best_per_family(result)
        reference = best["recent MostPopular"][1]
        lines += [
            "",
            f"## {result['dataset']}: {result['nights']} nights, one {result['period']} each",
            "",
        ]
        lines += ["| family | best setting | Recall@10 | NDCG@10 | x recent MostPopular (R / N) |"]
        lines += ["|---|---|---:|---:|---:|"]
        for family, (setting, figures) in sorted(best.items(), key=lambda f: -f[1][1]["recall@10"]):
            ratio = " / ".join(
                f"{figures[m] / reference[m]:.2f}x" for m in ("recall@10", "ndcg@10")
            )
            lines.append(
                f"| {family} | {setting} | {figures['recall@10']:.4f} | {figures['ndcg@10']:.4f}"
                f" | {ratio} |"
            )
    return "\n".join(lines)
