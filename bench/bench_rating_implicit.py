"""Does SVD++'s implicit signal (which items a user rated, not only how) help Encore's rating model?

Issue 36 asked for it to be measured on val against the plain model and kept only if it wins.
Both variants train with the rating model's own recipe (models_src/models/rating.py: the
closed-form biases frozen, per-example L2 on the factors, Adam at the tuned defaults, early
stopping on val RMSE with patience 5) on bench-train's hash 80/10/10 split; the SVD++ variant adds
|N(u)|^-1/2 * sum over the user's rated items j of y_j to the user's factors (Koren 2008).

    python -m bench.bench_rating_implicit [--datasets sample-ratings ml-100k-ratings ...]

Writes bench/results/rating_implicit.{json,md}.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from bench.bench_train import TEST_RATIO, VAL_RATIO
from bench.datasets import available, load_dataset
from bench.harness import RESULTS, save_results
from models_src.config import TrainConfig, tuned_defaults
from models_src.data import split_interactions
from models_src.rating_learner import RatingLearner

DATASETS = ("sample-ratings", "ml-100k-ratings", "ml-latest-small-ratings")
MAX_EPOCHS, PATIENCE = 40, 5


def _normalised_rated(train) -> torch.Tensor:
    """users x items, |N(u)|^-1/2 where u rated i: SVD++'s implicit neighbourhood."""
    counts = np.bincount(train.user, minlength=train.num_users).astype(np.float32)
    values = torch.from_numpy((1.0 / np.sqrt(np.maximum(counts, 1.0)))[train.user])
    index = torch.from_numpy(np.vstack([train.user, train.item]))
    shape = (train.num_users, train.num_items)
    return torch.sparse_coo_tensor(index, values, shape).coalesce().to_sparse_csr()


def run(dataset: str, implicit: bool, seed: int = 0) -> dict:
    split = split_interactions(load_dataset(dataset), "hash", VAL_RATIO, TEST_RATIO)
    config = TrainConfig.from_dict(
        {**tuned_defaults("rating"), "val_ratio": VAL_RATIO, "test_ratio": TEST_RATIO}
    )
    torch.manual_seed(seed)
    learner = RatingLearner(split, config, torch.device("cpu"))
    model, train = learner.model, split["train"]
    rated = _normalised_rated(train)
    implicit_items = nn.Embedding(train.num_items, config.embedding_dim)
    nn.init.normal_(implicit_items.weight, std=0.01)
    params = [model.user_embedding.weight, model.item_embedding.weight]
    optimizer = torch.optim.Adam(params + ([implicit_items.weight] if implicit else []), config.lr)

    def user_factors(users: torch.Tensor) -> torch.Tensor:
        factors = model.user_embedding(users)
        return (
            factors + torch.sparse.mm(rated, implicit_items.weight)[users] if implicit else factors
        )

    def predict(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        dot = (user_factors(users) * model.item_embedding(items)).sum(-1)
        return (
            model.global_mean
            + model.user_bias(users).squeeze(-1)
            + model.item_bias(items).squeeze(-1)
            + dot
        )

    @torch.no_grad()
    def rmse(part: str) -> float:
        data = split[part]
        users, items = torch.from_numpy(data.user), torch.from_numpy(data.item)
        low, high = learner.rating_range
        error = predict(users, items).clamp(low, high) - torch.from_numpy(data.rating)
        return float(error.pow(2).mean().sqrt())

    users, items, ratings = (
        torch.from_numpy(np.asarray(a)) for a in (train.user, train.item, train.rating)
    )
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    best = {"val": rmse("val"), "epoch": 0, "test": rmse("test")}
    bad = 0
    for epoch in range(1, MAX_EPOCHS + 1):
        for batch in torch.randperm(len(users), generator=generator).split(config.batch_size):
            u, i, r = users[batch], items[batch], ratings[batch]
            penalty = model.user_embedding(u).pow(2).sum(-1) + model.item_embedding(i).pow(2).sum(
                -1
            )
            if implicit:
                penalty = penalty + implicit_items(i).pow(2).sum(-1)
            loss = (predict(u, i) - r).pow(2).mean() + config.l2 * penalty.mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        val = rmse("val")
        if val < best["val"]:
            best, bad = {"val": val, "epoch": epoch, "test": rmse("test")}, 0
        else:
            bad += 1
            if bad >= PATIENCE:
                break
    return {
        "dataset": dataset,
        "implicit": implicit,
        **best,
        "seconds": time.perf_counter() - started,
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "# The rating model with and without SVD++'s implicit signal",
        "",
        "`python -m bench.bench_rating_implicit`: hash 80/10/10 split (bench-train's), the rating"
        " model's defaults and recipe, early stopping on val RMSE; one run each, 2-core CPU.",
        "",
        "| dataset | variant | val RMSE | test RMSE | best epoch | seconds |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        variant = "plus implicit (SVD++)" if row["implicit"] else "plain"
        lines.append(
            f"| {row['dataset']} | {variant} | {row['val']:.4f} | {row['test']:.4f} |"
            f" {row['epoch']} | {row['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS))
    args = parser.parse_args()
    rows = [
        run(name, implicit)
        for name in args.datasets
        if available(name)
        for implicit in (False, True)
    ]
    RESULTS.mkdir(exist_ok=True)
    save_results("rating_implicit", rows, markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
