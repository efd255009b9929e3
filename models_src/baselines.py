"""Tonight's baselines: simple models fitted in seconds on the same train split as the challenger.

They are the gate's safety net (models_src/gate.py): a learned model that is significantly worse
than the best of them does not serve, and when nothing learned passes, the best baseline's lists
are what users get. Every baseline ends in the same form as a trained model's scorer, the
embedding tables of `TopKScorer` (score = user_emb[u] . item_emb[i] + user_bias[u] +
item_bias[i] + offset), so it is evaluated, exported to ONNX and batch-scored like any model.

- MostPopular: the same list for everyone, by train interactions.
- Recent MostPopular: the same, each interaction weighted by its age (a half-life chosen on val,
  models_src/recency.py); on a forward holdout it is the list to beat for the next days.
- ALS: implicit's alternating least squares (Hu, Koren & Volinsky 2008) on the binary train
  pairs, with a small grid over (regularization, alpha) chosen on val; it scales to catalogues of
  100k+ items, where EASE^R's item x item matrix would not fit.
- Bias baseline (ratings): global mean + regularised user and item biases, the floor a rating
  model must beat.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from models_src.data import Interactions, pair_keys
from models_src.evaluation import Protocol, SplitResult

BASELINE_FAMILIES = ("most-popular", "recent-popular", "als")
RATING_BASELINE = "bias"

# (regularization, alpha) settings tried on val. implicit does not scale the regularisation by
# the number of interactions, and the best setting moves with density (dense MovieLens ratings
# want less confidence than sparse Last.fm listens); the grid brackets both, and the run report
# says which one each night chose.
ALS_GRID: tuple[dict[str, float], ...] = (
    {"regularization": 10.0, "alpha": 3.0},
    {"regularization": 30.0, "alpha": 3.0},
    {"regularization": 30.0, "alpha": 10.0},
    {"regularization": 100.0, "alpha": 10.0},
)
ALS_FACTORS = 64
ALS_ITERATIONS = 15


@dataclass
class FittedBaseline:
    """A fitted baseline in scorer form, with how it was chosen."""

    family: str
    buffers: dict[str, Tensor]
    params: dict = field(default_factory=dict)
    seconds: float = 0.0
    # Parts already evaluated under the night's protocol while choosing it (ALS: val), kept so
    # that they are not ranked again.
    evaluated: dict[str, SplitResult] = field(default_factory=dict)

    def score_users(self, users: Tensor) -> Tensor:
        """The scores as served (models_src/serving.py adds in the same order, to the same
        floats), so a ranking made while choosing the baseline stands for the gate's."""
        b = self.buffers
        scores = b["user_emb"][users] @ b["item_emb"].T
        return (
            scores.add_(b["user_bias"][users].unsqueeze(1))
            .add_(b["item_bias"])
            .add_(float(b["offset"]))
        )


def _buffers(
    user_emb: Tensor,
    item_emb: Tensor,
    user_bias: Tensor | None = None,
    item_bias: Tensor | None = None,
    offset: float = 0.0,
) -> dict[str, Tensor]:
    n_users, n_items = len(user_emb), len(item_emb)
    return {
        "user_emb": user_emb.float().contiguous(),
        "item_emb": item_emb.float().contiguous(),
        "user_bias": (torch.zeros(n_users) if user_bias is None else user_bias).float(),
        "item_bias": (torch.zeros(n_items) if item_bias is None else item_bias).float(),
        "offset": torch.tensor(float(offset)),
    }


def most_popular(train: Interactions) -> FittedBaseline:
    """Items by train interactions (log-scaled; ties go to the lower index)."""
    started = time.perf_counter()
    counts = np.bincount(train.item, minlength=train.num_items).astype(np.float64)
    tie_break = np.arange(train.num_items) / (10.0 * max(1, train.num_items))
    scores = torch.from_numpy(np.log1p(counts) - tie_break)
    buffers = _buffers(
        torch.zeros(train.num_users, 1), torch.zeros(train.num_items, 1), None, scores
    )
    return FittedBaseline("most-popular", buffers, {}, time.perf_counter() - started)


def recent_popular(
    train: Interactions, half_life_days: float | None, params: dict | None = None
) -> FittedBaseline:
    """Items by train interactions, each halved every `half_life_days` of its age."""
    from models_src.recency import popularity_scores

    started = time.perf_counter()
    buffers = _buffers(
        torch.zeros(train.num_users, 1),
        torch.zeros(train.num_items, 1),
        None,
        popularity_scores(train, half_life_days),
    )
    params = {**(params or {}), "half_life_days": half_life_days}
    return FittedBaseline("recent-popular", buffers, params, time.perf_counter() - started)


def recent_popular_on_val(
    splits: dict[str, Interactions], protocol: Protocol, k: int = 10
) -> FittedBaseline:
    """Recent MostPopular with the half-life of best val Recall@K (never test)."""
    from models_src.recency import choose_half_life

    started = time.perf_counter()

    def val_recall(item_scores: Tensor) -> float:
        result = protocol.evaluate_parts(None, ("val",), k, same_for_everyone=item_scores.float())
        return result["val"].summary[f"recall@{k}"]

    choice = choose_half_life(splits["train"], val_recall)
    fitted = recent_popular(splits["train"], choice.half_life_days, {"grid": choice.tried})
    fitted.seconds = time.perf_counter() - started
    return fitted


def user_items_matrix(train: Interactions):
    """Binary users x items CSR of the train pairs (repeats collapse to 1)."""
    from scipy.sparse import csr_matrix

    keys = pair_keys(train)
    users, items = keys // train.num_items, keys % train.num_items
    ones = np.ones(len(keys), dtype=np.float32)
    return csr_matrix((ones, (users, items)), shape=(train.num_users, train.num_items))


def fit_als(
    train: Interactions,
    regularization: float,
    alpha: float,
    factors: int = ALS_FACTORS,
    iterations: int = ALS_ITERATIONS,
    seed: int = 0,
) -> FittedBaseline:
    """implicit's CPU ALS; deterministic for a seed (each user's and item's solve is independent
    of thread order)."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    started = time.perf_counter()
    # implicit runs its own threads and asks for single-threaded BLAS beside them.
    with threadpool_limits(limits=1, user_api="blas"):
        model = AlternatingLeastSquares(
            factors=factors,
            regularization=regularization,
            alpha=alpha,
            iterations=iterations,
            calculate_training_loss=False,
            random_state=seed,
        )
        model.fit(user_items_matrix(train), show_progress=False)
    buffers = _buffers(
        torch.from_numpy(np.ascontiguousarray(model.user_factors)),
        torch.from_numpy(np.ascontiguousarray(model.item_factors)),
    )
    params = {
        "regularization": regularization,
        "alpha": alpha,
        "factors": factors,
        "iterations": iterations,
        "seed": seed,
    }
    return FittedBaseline("als", buffers, params, time.perf_counter() - started)


def als_on_val(
    splits: dict[str, Interactions],
    protocol: Protocol,
    k: int = 10,
    grid: tuple[dict[str, float], ...] = ALS_GRID,
    seed: int = 0,
) -> FittedBaseline:
    """Fit every grid setting on train, keep the best val Recall@K (never test)."""
    best, tried = None, []
    started = time.perf_counter()
    for setting in grid:
        fitted = fit_als(splits["train"], seed=seed, **setting)
        val = protocol.evaluate(fitted.score_users, "val", k)
        recall = val.summary[f"recall@{k}"]
        tried.append({**setting, f"val_recall@{k}": recall})
        if best is None or recall > best[0]:
            best = (recall, fitted, val)
    fitted = best[1]
    fitted.params["grid"] = tried
    fitted.evaluated = {"val": best[2]}
    fitted.seconds = time.perf_counter() - started
    return fitted


def fit_ranking_baselines(
    splits: dict[str, Interactions],
    protocol: Protocol,
    families: tuple[str, ...] = BASELINE_FAMILIES,
    k: int = 10,
    seed: int = 0,
) -> dict[str, FittedBaseline]:
    """Tonight's ranking baselines on the train split, hyperparameters (if any) chosen on val."""
    fitters: dict[str, Callable[[], FittedBaseline]] = {
        "most-popular": lambda: most_popular(splits["train"]),
        "recent-popular": lambda: recent_popular_on_val(splits, protocol, k),
        "als": lambda: als_on_val(splits, protocol, k, seed=seed),
    }
    unknown = set(families) - set(fitters)
    if unknown:
        raise ValueError(f"unknown baseline {sorted(unknown)}; choose from {sorted(fitters)}")
    return {family: fitters[family]() for family in families}


def refit_on_all(baseline: FittedBaseline, data: Interactions) -> FittedBaseline:
    """The same baseline with the same settings (and seed), fitted on every interaction, for
    serving."""
    if baseline.family == "most-popular":
        return most_popular(data)
    if baseline.family == "recent-popular":
        return recent_popular(data, baseline.params["half_life_days"])
    if baseline.family == "als":
        settings = {k: baseline.params[k] for k in ("regularization", "alpha", "factors", "seed")}
        return fit_als(data, iterations=baseline.params["iterations"], **settings)
    if baseline.family == RATING_BASELINE:
        return bias_baseline(data, baseline.params["regularization"])
    raise ValueError(f"no refit for baseline family {baseline.family!r}")


def bias_baseline(
    train: Interactions, regularization: float = 10.0, sweeps: int = 10
) -> FittedBaseline:
    """μ + b_u + b_i by alternating regularised means (Koren 2010's baseline predictor)."""
    started = time.perf_counter()
    ratings = train.rating.astype(np.float64)
    mu = float(ratings.mean())
    user_bias, item_bias = np.zeros(train.num_users), np.zeros(train.num_items)
    user_count = np.bincount(train.user, minlength=train.num_users)
    item_count = np.bincount(train.item, minlength=train.num_items)
    for _ in range(sweeps):
        residual = ratings - mu - user_bias[train.user]
        item_bias = np.bincount(train.item, residual, train.num_items) / (
            item_count + regularization
        )
        residual = ratings - mu - item_bias[train.item]
        user_bias = np.bincount(train.user, residual, train.num_users) / (
            user_count + regularization
        )
    buffers = _buffers(
        torch.zeros(train.num_users, 1),
        torch.zeros(train.num_items, 1),
        torch.from_numpy(user_bias),
        torch.from_numpy(item_bias),
        mu,
    )
    params = {"regularization": regularization}
    return FittedBaseline(RATING_BASELINE, buffers, params, time.perf_counter() - started)


BIAS_REGULARIZATION = (1.0, 3.0, 10.0, 30.0)


def predict_ratings(fitted: FittedBaseline, data: Interactions) -> Tensor:
    """The bias baseline's rating for each (user, item) of `data` (unclipped)."""
    b = fitted.buffers
    users, items = torch.from_numpy(data.user), torch.from_numpy(data.item)
    return b["offset"] + b["user_bias"][users] + b["item_bias"][items]


def bias_on_val(splits: dict[str, Interactions]) -> FittedBaseline:
    """The bias baseline with the regularisation of lowest val RMSE (never test)."""
    best, tried = None, []
    target = torch.from_numpy(splits["val"].rating.astype(np.float32)).double()
    for regularization in BIAS_REGULARIZATION:
        fitted = bias_baseline(splits["train"], regularization)
        error = float(torch.sqrt(((predict_ratings(fitted, splits["val"]) - target) ** 2).mean()))
        tried.append({"regularization": regularization, "val_rmse": error})
        if best is None or error < best[0]:
            best = (error, fitted)
    best[1].params["grid"] = tried
    return best[1]
