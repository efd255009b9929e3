"""Peer baselines for the training benchmark, scored by the same split and metric code as Encore.

Ranking peers (MostPopular, PyG LightGCN, implicit ALS / BPR) return val and test metrics from
`ranking_eval` (Encore's evaluation module), so a difference between two rows is the model's, not
the protocol's: full ranking over all items, train items excluded on val, train and val items
excluded on test. Rating peers
(global mean, bias baseline, Surprise SVD and SVD++) return RMSE/MAE on val and test with
predictions clipped to the train rating range. None of them is Encore's code: a peer written with
Encore's own model (embeddings and biases under MSE) would compare Encore with itself.

Every hyper-parameter choice is made on val only; test is reported for the chosen setting.

Threads: the peers leave torch's thread count alone (the caller sets it for every model alike).
On a two-core machine shared with another busy process, torch with two threads ran LightGCN's
sparse propagation 30-40x slower than with one (spinning OpenMP workers); with the machine idle,
one and two threads were equally fast at these sizes.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from models_src.config import Precision, training_autocast
from models_src.data import Interactions, bipartite_edge_index
from models_src.evaluation import HELD_OUT, Protocol
from models_src.metrics import mae, rmse

NUM_THREADS = 2
Scorer = Callable[[torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------
# Shared evaluation
# ---------------------------------------------------------------------------------------------


PAIRED_METRICS = ("recall@10", "ndcg@10")


def ranking_eval(
    score_users: Scorer,
    split: dict[str, Interactions],
    k: int = 10,
    protocol: Protocol | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Val and test metrics under Encore's one evaluation protocol (models_src/evaluation.py),
    the same for every model. `protocol` lets a caller that evaluates often build it once.
    `device`: where the scorer's tables live (users are moved there, top-K comes back).

    "test_per_user" keeps each test user's Recall@10 and NDCG@10 (users in the protocol's
    order, the same for every model on the split), so the report can give standard errors and
    paired differences between two models."""
    protocol = protocol or Protocol(split)
    results = protocol.evaluate_parts(score_users, HELD_OUT, k, device=device)
    metrics: dict[str, Any] = {part: r.summary for part, r in results.items()}
    metrics["test_per_user"] = per_user_lists(results["test"].per_user)
    return metrics


def per_user_lists(per_user: dict[str, np.ndarray]) -> dict[str, list[float]]:
    """The paired metrics' per-user values as JSON-ready lists."""
    return {name: per_user[name].astype(float).round(6).tolist() for name in PAIRED_METRICS}


def _val_recall(score_users: Scorer, protocol: Protocol, device: str = "cpu") -> float:
    """Val Recall@10 alone: the early-stopping and grid-selection signal."""
    return protocol.evaluate(score_users, "val", 10, device=device).summary["recall@10"]


def _ranking_result(
    model: str,
    metrics: dict[str, dict[str, float]],
    train_seconds: float,
    seconds_per_epoch: float | None = None,
    time_to_best: float | None = None,
    epochs: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "model": model,
        "val": metrics["val"],
        "test": metrics["test"],
        "test_per_user": metrics["test_per_user"],
        "train_seconds": train_seconds,
        "seconds_per_epoch": seconds_per_epoch,
        "time_to_best_val_seconds": time_to_best,
        "epochs": epochs,
        **extra,
    }


def _unique_pairs(data: Interactions) -> tuple[np.ndarray, np.ndarray]:
    """(user, item) pairs once each: a repeated interaction is one positive."""
    pairs = np.unique(np.stack([data.user, data.item], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]


# ---------------------------------------------------------------------------------------------
# Ranking peers
# ---------------------------------------------------------------------------------------------


def most_popular(split: dict[str, Interactions], seed: int = 0) -> dict[str, Any]:
    """The same list for everyone, by train interaction count: the floor any model must beat."""
    started = time.perf_counter()
    train = split["train"]
    counts = torch.from_numpy(np.bincount(train.item, minlength=train.num_items)).float()
    seconds = time.perf_counter() - started
    metrics = ranking_eval(lambda users: counts.expand(len(users), -1), split)
    return _ranking_result("MostPopular", metrics, seconds)


def _normalized_adjacency(train: Interactions) -> torch.Tensor:
    """D^-1/2 A D^-1/2 of the undirected user-item graph as a sparse CSR tensor.

    Normalizing once (LGConv(normalize=False)) instead of in every layer of every step keeps an
    ml-100k epoch well under a second on two cores; the propagation is the same as LightGCN's.
    The matrix is symmetric, so it is also the transposed adjacency (adj_t) PyG expects.
    """
    n_nodes = train.num_users + train.num_items
    edge_index = bipartite_edge_index(train, with_groups=False)
    degree = torch.bincount(edge_index[0], minlength=n_nodes).float()
    inv_sqrt = degree.clamp(min=1).pow(-0.5)
    weight = inv_sqrt[edge_index[0]] * inv_sqrt[edge_index[1]]
    adj = torch.sparse_coo_tensor(edge_index, weight, (n_nodes, n_nodes), check_invariants=True)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": CSR spmm is what we want
        warnings.simplefilter("ignore", UserWarning)
        return adj.coalesce().to_sparse_csr()


def _bpr_step(
    model: torch.nn.Module,
    adj: torch.Tensor,
    users: torch.Tensor,
    items: torch.Tensor,
    n_users: int,
    n_items: int,
    lambda_reg: float,
    generator: torch.Generator,
    precision: Precision = "fp32",
) -> torch.Tensor:
    """One full-graph propagation and the BPR loss of a batch of positives against uniformly
    sampled negatives (PyG's `recommendation_loss`, L2 on the batch's layer-0 embeddings).
    bf16: the propagation under autocast, as Encore's GAT-BPR step; the loss in fp32."""
    device = generator.device
    negatives = torch.randint(0, n_items, (len(users),), generator=generator, device=device)
    with training_autocast(device, precision):
        emb = model.get_embedding(adj)
    emb = emb.float()
    user_emb = emb[users]
    pos = (user_emb * emb[n_users + items]).sum(-1)
    neg = (user_emb * emb[n_users + negatives]).sum(-1)
    node_id = torch.cat([users, n_users + items, n_users + negatives]).unique()
    return model.recommendation_loss(pos, neg, node_id=node_id, lambda_reg=lambda_reg)


def _lightgcn_scorer(model: torch.nn.Module, adj: torch.Tensor, n_users: int) -> Scorer:
    with torch.no_grad():
        emb = model.get_embedding(adj)
    user_emb, item_emb = emb[:n_users], emb[n_users:]
    return lambda users: user_emb[users] @ item_emb.T


def _early_stopping(
    run_epoch: Callable[[], None],
    val_score: Callable[[], float],
    model: torch.nn.Module,
    max_epochs: int,
    patience: int,
    higher_is_better: bool = True,
    eval_every: int = 1,
    max_seconds: float = float("inf"),
) -> dict[str, Any]:
    """Train until `patience` evaluations bring no new best val score, then restore the best
    weights. Shared by LightGCN and MF, so both report time the same way: `seconds` is the whole
    loop (val evaluations included, as a user would wait for them), `seconds_per_epoch` the
    training steps only, `time_to_best` the loop time when the best evaluation finished."""
    sign = 1.0 if higher_is_better else -1.0
    best = {"score": -float("inf"), "epoch": 0, "seconds": 0.0, "state": None}
    started, step_seconds, epoch, stale, capped = time.perf_counter(), 0.0, 0, 0, False
    while epoch < max_epochs and stale < patience:
        epoch += 1
        epoch_start = time.perf_counter()
        model.train()
        run_epoch()
        step_seconds += time.perf_counter() - epoch_start
        if epoch % eval_every and epoch < max_epochs:
            continue
        model.eval()
        score = sign * val_score()
        stale += 1
        if score > best["score"]:
            state = copy.deepcopy(model.state_dict())
            best = {"score": score, "epoch": epoch, "state": state}
            best["seconds"], stale = time.perf_counter() - started, 0
        if time.perf_counter() - started > max_seconds:
            capped = True
            break
    model.load_state_dict(best["state"])
    model.eval()
    return {
        "seconds": time.perf_counter() - started,
        "seconds_per_epoch": step_seconds / epoch,
        "time_to_best": best["seconds"],
        "epochs": epoch,
        "best_epoch": best["epoch"],
        "best_val": sign * best["score"],
        "stopped_by_time_cap": capped,
    }


def lightgcn(
    split: dict[str, Interactions],
    seed: int = 0,
    dim: int = 64,
    layers: int = 3,
    lr: float = 1e-2,
    lambda_reg: float = 1e-3,
    batch_size: int = 8192,
    max_epochs: int = 300,
    patience: int = 10,
    eval_every: int = 1,
    max_seconds: float = 240.0,
    device: str = "cpu",
    precision: Precision = "fp32",
) -> dict[str, Any]:
    """PyG's LightGCN trained with BPR, early-stopped on val Recall@10 (best weights restored).

    `patience` counts evaluations without a new best; `max_seconds` caps the wall time so a slow
    machine still finishes (the result says whether the cap stopped training). Times include
    building the normalized graph. lambda_reg 1e-3 was chosen over 1e-4 and 1e-2 on val Recall@10
    (tied on ml-100k, +0.011 on Last.fm); lr 1e-2 over 5e-3 (stalled early) and 2e-2 (worse).

    `device` holds the model, the graph and the batches (the random streams are then that
    device's, so a CUDA run draws other batches than a CPU one); `precision` bf16 runs the
    propagation under autocast, on CUDA only: torch has no bf16 sparse CSR product on CPU.
    """
    from torch_geometric.nn import LightGCN

    on = torch.device(device)
    if precision == "bf16" and on.type == "cpu":
        raise ValueError("LightGCN in bf16 needs CUDA: torch's CPU sparse product has no bf16")
    torch.manual_seed(seed)
    generator = torch.Generator(device=on).manual_seed(seed)
    train = split["train"]
    n_users, n_items = train.num_users, train.num_items
    protocol = Protocol(split)
    started = time.perf_counter()
    adj = _normalized_adjacency(train).to(on)
    pos_users, pos_items = (torch.from_numpy(a).to(on) for a in _unique_pairs(train))
    model = LightGCN(n_users + n_items, dim, layers, normalize=False).to(on)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def run_epoch() -> None:
        order = torch.randperm(len(pos_users), generator=generator, device=on)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            users, items = pos_users[batch], pos_items[batch]
            optimizer.zero_grad()
            loss = _bpr_step(
                model, adj, users, items, n_users, n_items, lambda_reg, generator, precision
            )
            loss.backward()
            optimizer.step()

    def val_recall() -> float:
        return _val_recall(_lightgcn_scorer(model, adj, n_users), protocol, device)

    setup = time.perf_counter() - started
    run = _early_stopping(
        run_epoch, val_recall, model, max_epochs, patience, True, eval_every, max_seconds - setup
    )
    scorer = _lightgcn_scorer(model, adj, n_users)
    metrics = ranking_eval(scorer, split, protocol=protocol, device=device)
    params = {"dim": dim, "layers": layers, "lr": lr, "lambda_reg": lambda_reg}
    return _ranking_result(
        "LightGCN (PyG)",
        metrics,
        setup + run["seconds"],
        run["seconds_per_epoch"],
        setup + run["time_to_best"],
        run["epochs"],
        best_epoch=run["best_epoch"],
        stopped_by_time_cap=run["stopped_by_time_cap"],
        params={**params, "batch_size": batch_size, "patience": patience},
    )


def _user_items(train: Interactions, counts: bool = False):
    """User x item CSR of train positives: 1 per pair (repeats collapse), or with `counts` the
    log of 1 + the pair's summed weight (Last.fm listen counts as ALS confidence)."""
    from scipy.sparse import csr_matrix

    if counts and train.rating is not None:
        matrix = csr_matrix(
            (train.rating.astype(np.float32), (train.user, train.item)),
            shape=(train.num_users, train.num_items),
        )  # duplicate (user, item) entries are summed
        matrix.data = np.log1p(matrix.data)
        return matrix
    users, items = _unique_pairs(train)
    ones = np.ones(len(users), dtype=np.float32)
    return csr_matrix((ones, (users, items)), shape=(train.num_users, train.num_items))


def _factor_scorer(user_factors: np.ndarray, item_factors: np.ndarray) -> Scorer:
    users_t = torch.from_numpy(np.ascontiguousarray(user_factors, dtype=np.float32))
    items_t = torch.from_numpy(np.ascontiguousarray(item_factors, dtype=np.float32))
    return lambda users: users_t[users] @ items_t.T


def _implicit_grid(
    name: str,
    make: Callable[..., Any],
    grid: list[dict[str, Any]],
    split: dict[str, Interactions],
    iterations: int,
    counts: bool = False,
) -> dict[str, Any]:
    """Fit each setting of an `implicit` model, keep the best on val Recall@10, report its test.

    BLAS is held to one thread while implicit runs its own `NUM_THREADS` workers, as implicit
    asks; `train_seconds` is the chosen setting's fit, the grid's own cost is under "tuning".
    """
    from threadpoolctl import threadpool_limits

    protocol = Protocol(split)
    user_items = _user_items(split["train"], counts)
    tried, best = [], None
    for params in grid:
        with threadpool_limits(limits=1, user_api="blas"):
            model = make(**params)  # implicit checks the BLAS threads when it is built
            started = time.perf_counter()
            model.fit(user_items, show_progress=False)
            seconds = time.perf_counter() - started
        scorer = _implicit_scorer(model, user_items)
        recall = _val_recall(scorer, protocol)
        tried.append({**params, "val_recall@10": recall, "train_seconds": seconds})
        if best is None or recall > best[0]:
            best = (recall, params, scorer, seconds)
    _, params, scorer, seconds = best
    metrics = ranking_eval(scorer, split, protocol=protocol)
    tuning = {"grid": tried, "chosen": params, "seconds": sum(t["train_seconds"] for t in tried)}
    return _ranking_result(
        name, metrics, seconds, seconds / iterations, None, iterations, tuning=tuning
    )


def _implicit_scorer(model: Any, user_items: Any) -> Scorer:
    """Full score rows of an `implicit` model: factors for the matrix factorisations, the
    user's train row times the item-item similarity for the nearest-neighbour models (what
    their own `recommend` computes)."""
    if hasattr(model, "similarity"):
        similarity = model.similarity.tocsr()

        def score(users: torch.Tensor) -> torch.Tensor:
            rows = user_items[users.numpy()] @ similarity
            return torch.from_numpy(np.asarray(rows.todense(), dtype=np.float32))

        return score
    return _factor_scorer(model.user_factors, model.item_factors)


ALS_GRID = [
    {"factors": factors, "regularization": regularization, "alpha": alpha}
    for factors in (64, 128)
    for regularization in (0.01, 0.1, 1.0)
    for alpha in (1.0, 10.0, 40.0)
]


def implicit_als(
    split: dict[str, Interactions],
    seed: int = 0,
    iterations: int = 15,
    grid: list[dict[str, float]] | None = None,
    counts: bool = False,
    name: str = "implicit ALS",
) -> dict[str, Any]:
    """implicit's ALS (conjugate gradient) on train positives, binary or, with `counts`, the
    log of 1 + the listen count; implicit scales that confidence by alpha.

    The grid over (factors, regularization, alpha) is chosen on val Recall@10."""
    from implicit.cpu.als import AlternatingLeastSquares

    def make(**params: float) -> AlternatingLeastSquares:
        return AlternatingLeastSquares(
            iterations=iterations, num_threads=NUM_THREADS, random_state=seed, **params
        )

    return _implicit_grid(name, make, grid or ALS_GRID, split, iterations, counts)


def implicit_als_listen_counts(split: dict[str, Interactions], seed: int = 0) -> dict[str, Any]:
    """ALS with listen counts as confidence: only where the train part carries weights
    (bench.datasets loads Last.fm's counts for this peer)."""
    if split["train"].rating is None:
        raise ValueError("this dataset has no interaction weights")
    return implicit_als(split, seed, counts=True, name="implicit ALS (listen counts)")


KNN_GRID = [
    {"kind": kind, "K": neighbours}
    for kind in ("cosine", "bm25")
    for neighbours in (20, 50, 100, 200)
]


def item_knn(
    split: dict[str, Interactions], seed: int = 0, grid: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """implicit's item-item nearest neighbours (cosine or BM25-weighted), K and the weighting
    chosen on val Recall@10."""
    from implicit.nearest_neighbours import BM25Recommender, CosineRecommender
    from implicit.utils import ParameterWarning

    # Its fit converts its own weighted matrix to CSR and warns about it on every call.
    warnings.filterwarnings("ignore", category=ParameterWarning)

    def make(kind: str, K: int) -> Any:
        model = BM25Recommender if kind == "bm25" else CosineRecommender
        return model(K=K, num_threads=NUM_THREADS)

    return _implicit_grid("item-kNN (implicit)", make, grid or KNN_GRID, split, 1)


EASE_LAMBDAS = (50.0, 200.0, 500.0, 1500.0)


def ease(
    split: dict[str, Interactions], seed: int = 0, lambdas: tuple[float, ...] = EASE_LAMBDAS
) -> dict[str, Any]:
    """EASE^R (Steck 2019), closed form: B = I - P diag(1/diag P), P = (X'X + lambda I)^-1,
    over the items seen in train; lambda chosen on val Recall@10.

    Its item x item inverse is what limits it: fine for these catalogues (Last.fm's 17k items
    take a ~1.2 GB matrix), not for a 100k-item one."""
    protocol = Protocol(split)
    train = split["train"]
    started = time.perf_counter()
    users, items = (torch.from_numpy(a) for a in _unique_pairs(train))
    active = torch.unique(items)
    column = torch.full((train.num_items,), -1, dtype=torch.long)
    column[active] = torch.arange(len(active))
    x = torch.zeros(train.num_users, len(active))
    x[users, column[items]] = 1.0
    gram = x.T @ x
    setup = time.perf_counter() - started
    tried, best = [], None
    for lam in lambdas:
        fit_start = time.perf_counter()
        regularised = gram.clone()
        regularised.diagonal().add_(lam)
        inverse = torch.cholesky_inverse(torch.linalg.cholesky(regularised))
        del regularised
        weights = inverse / -inverse.diagonal()
        weights.diagonal().zero_()
        del inverse
        seconds = setup + time.perf_counter() - fit_start
        scorer = _ease_scorer(x, weights, active, train.num_items)
        recall = _val_recall(scorer, protocol)
        tried.append({"lambda": lam, "val_recall@10": recall, "train_seconds": seconds})
        if best is None or recall > best[0]:
            best = (recall, lam, scorer, seconds)
        else:
            del weights, scorer
    _, lam, scorer, seconds = best
    metrics = ranking_eval(scorer, split, protocol=protocol)
    total = sum(t["train_seconds"] for t in tried)
    tuning = {"grid": tried, "chosen": {"lambda": lam}, "seconds": total}
    return _ranking_result("EASE^R", metrics, seconds, None, None, None, tuning=tuning)


def _ease_scorer(
    x: torch.Tensor, weights: torch.Tensor, active: torch.Tensor, num_items: int
) -> Scorer:
    """Scores over the whole catalogue; items never seen in train rank last."""

    def score(users: torch.Tensor) -> torch.Tensor:
        full = torch.full((len(users), num_items), -1e9)
        full[:, active] = x[users] @ weights
        return full

    return score


def implicit_bpr(
    split: dict[str, Interactions],
    seed: int = 0,
    factors: int = 64,
    iterations: int = 100,
    grid: list[dict[str, float]] | None = None,
) -> dict[str, Any]:
    """implicit's BPR (SGD, verified negatives) on binary train positives; item factors carry a
    bias column, so scores are user_factors @ item_factors.T as they are.

    With two threads the SGD is Hogwild, so the result varies slightly between runs."""
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    grid = grid or [
        {"learning_rate": 0.005, "regularization": 0.01},
        {"learning_rate": 0.005, "regularization": 0.001},
        {"learning_rate": 0.01, "regularization": 0.01},
        {"learning_rate": 0.01, "regularization": 0.001},
    ]

    def make(**params: float) -> BayesianPersonalizedRanking:
        return BayesianPersonalizedRanking(
            factors=factors,
            iterations=iterations,
            num_threads=NUM_THREADS,
            random_state=seed,
            **params,
        )

    return _implicit_grid("implicit BPR", make, grid, split, iterations)


# ---------------------------------------------------------------------------------------------
# Rating peers
# ---------------------------------------------------------------------------------------------


def _scale(train: Interactions) -> tuple[float, float]:
    """The rating scale, read from train (never from val or test)."""
    return float(train.rating.min()), float(train.rating.max())


def _rating_metrics(predicted: np.ndarray, data: Interactions, scale: tuple[float, float]) -> dict:
    clipped = torch.from_numpy(np.clip(np.asarray(predicted, dtype=np.float64), *scale))
    target = torch.from_numpy(data.rating.astype(np.float64))
    return {"rmse": rmse(clipped, target), "mae": mae(clipped, target)}


def _rating_result(
    model: str,
    predict: Callable[[Interactions], np.ndarray],
    split: dict[str, Interactions],
    train_seconds: float,
    **extra: Any,
) -> dict[str, Any]:
    scale = _scale(split["train"])
    return {
        "model": model,
        "val": _rating_metrics(predict(split["val"]), split["val"], scale),
        "test": _rating_metrics(predict(split["test"]), split["test"], scale),
        "train_seconds": train_seconds,
        **extra,
    }


def global_mean(split: dict[str, Interactions], seed: int = 0) -> dict[str, Any]:
    """Every prediction is the train mean: the floor for RMSE."""
    started = time.perf_counter()
    mu = float(split["train"].rating.astype(np.float64).mean())
    seconds = time.perf_counter() - started
    return _rating_result("GlobalMean", lambda data: np.full(len(data), mu), split, seconds)


def bias_baseline(
    split: dict[str, Interactions], seed: int = 0, regs: tuple[float, ...] | None = None
) -> dict[str, Any]:
    """The gate's own bias baseline (models_src/baselines.py: mu + b_u + b_i, Koren's baseline
    predictor) with the regularization chosen on val RMSE: a baseline, not a peer written to be
    independent of Encore, so the table shows what the nightly's rating gate compares against."""
    from models_src.baselines import BIAS_REGULARIZATION, predict_ratings
    from models_src.baselines import bias_baseline as fit_bias_baseline

    train, val = split["train"], split["val"]
    scale = _scale(train)
    tried, best = [], None
    for reg in regs or BIAS_REGULARIZATION:
        fitted = fit_bias_baseline(train, reg)

        def predict(data: Interactions, fitted=fitted) -> np.ndarray:
            return predict_ratings(fitted, data).numpy()

        score = _rating_metrics(predict(val), val, scale)["rmse"]
        tried.append({"reg": reg, "val_rmse": score, "train_seconds": fitted.seconds})
        if best is None or score < best[0]:
            best = (score, reg, predict, fitted.seconds)
    _, reg, predict, seconds = best
    tuning = {"grid": tried, "chosen": {"reg": reg}}
    return _rating_result("BiasBaseline", predict, split, seconds, tuning=tuning)


def surprise_svd(
    split: dict[str, Interactions], seed: int = 0, grid: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Surprise's SVD (Funk's biased MF by SGD), its defaults unless a grid is given."""
    from surprise import SVD

    return _surprise("Surprise SVD", SVD, split, seed, grid)


def surprise_svdpp(
    split: dict[str, Interactions], seed: int = 0, grid: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Surprise's SVD++ (Koren 2008: SVD plus each user's implicit feedback, the items they
    rated), its defaults unless a grid is given."""
    from surprise import SVDpp

    return _surprise("Surprise SVD++", SVDpp, split, seed, grid)


def _surprise(
    name: str,
    algorithm: type,
    split: dict[str, Interactions],
    seed: int,
    grid: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    """A Surprise algorithm fitted on train for each grid setting, the best val RMSE kept.

    Raw ids are our dense indices; `predict` maps them to Surprise's inner ids and falls back to
    the global mean (plus whichever bias is known) for users or items missing from train."""
    import pandas as pd
    from surprise import Dataset, Reader

    train = split["train"]
    scale = _scale(train)
    frame = pd.DataFrame({"user": train.user, "item": train.item, "rating": train.rating})
    trainset = Dataset.load_from_df(frame, Reader(rating_scale=scale)).build_full_trainset()
    tried, best = [], None
    for params in grid or [{}]:
        started = time.perf_counter()
        algo = algorithm(random_state=seed, **params)
        algo.fit(trainset)
        seconds = time.perf_counter() - started

        def predict(data: Interactions, algo=algo) -> np.ndarray:
            pairs = zip(data.user.tolist(), data.item.tolist(), strict=True)
            return np.array([algo.predict(u, i).est for u, i in pairs])

        score = _rating_metrics(predict(split["val"]), split["val"], scale)["rmse"]
        tried.append({**params, "val_rmse": score, "train_seconds": seconds})
        if best is None or score < best[0]:
            best = (score, params, predict, seconds)
    _, params, predict, seconds = best
    tuning = {"grid": tried, "chosen": params}
    return _rating_result(name, predict, split, seconds, tuning=tuning)


RANKING_PEERS: dict[str, Callable[..., dict[str, Any]]] = {
    "MostPopular": most_popular,
    "LightGCN (PyG)": lightgcn,
    "implicit ALS": implicit_als,
    "implicit ALS (listen counts)": implicit_als_listen_counts,
    "implicit BPR": implicit_bpr,
    "item-kNN (implicit)": item_knn,
    "EASE^R": ease,
}
# Peers that need the dataset's interaction weights (listen counts); run only where it has them.
WEIGHTED_PEERS = ("implicit ALS (listen counts)",)
RATING_PEERS: dict[str, Callable[..., dict[str, Any]]] = {
    "GlobalMean": global_mean,
    "BiasBaseline": bias_baseline,
    "Surprise SVD": surprise_svd,
    "Surprise SVD++": surprise_svdpp,
}
