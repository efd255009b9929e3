"""Peer baselines on tiny data: sane ranking metrics, an exact MostPopular ranking, and rating
peers that find planted biases (bias baseline and MF beat the global mean)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench import peers
from models_src.data import Interactions, split_interactions


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors gain nothing from threads, and two threads on a shared two-core machine
    can run ten times slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _clustered(n_users: int = 120, n_items: int = 90, per_user: int = 15) -> Interactions:
    """Users of cluster c pick most items from cluster c: structure a model can learn."""
    rng = np.random.default_rng(0)
    clusters = 3
    users, items = [], []
    for user in range(n_users):
        own = np.arange(user % clusters, n_items, clusters)
        picks = rng.choice(own, size=per_user, replace=False)
        users += [user] * per_user
        items += picks.tolist()
    return Interactions(np.array(users), np.array(items), n_users, n_items)


def _check_ranking(result: dict) -> None:
    assert set(result) >= {"model", "val", "test", "train_seconds", "seconds_per_epoch"}
    for part in ("val", "test"):
        for name, value in result[part].items():
            if name in ("users", "cold_users"):
                continue
            if name.startswith(("cold_", "tail_")) and math.isnan(value):
                continue  # an empty slice (no cold user, no long-tail relevant item)
            assert math.isfinite(value) and 0.0 <= value <= 1.0, (part, name, value)
        assert result[part]["users"] > 0
    assert result["train_seconds"] >= 0


@pytest.fixture(scope="module")
def clustered_split() -> dict[str, Interactions]:
    return split_interactions(_clustered(), "hash", 0.1, 0.1)


def test_ranking_eval_protocol_excludes_train_and_val(clustered_split) -> None:
    """An oracle that scores exactly the held-out items gets recall 1 on val and on test."""
    split = clustered_split
    truth = torch.zeros(split["train"].num_users, split["train"].num_items)
    truth[split["val"].user, split["val"].item] = 1.0
    truth[split["test"].user, split["test"].item] = 2.0
    truth[split["train"].user, split["train"].item] = 3.0  # excluded, so never ranked
    metrics = peers.ranking_eval(lambda users: truth[users], split)
    assert metrics["test"]["recall@10"] == pytest.approx(1.0)
    assert metrics["val"]["hit_rate@10"] == pytest.approx(1.0)


def test_most_popular_matches_hand_ranking() -> None:
    """Filler users 0..10 each hold items 0..k, so train counts fall strictly with the item
    index (item 0: 13, item 1: 11, item 2: 9, ..., item 11: 0): the ranking is 0, 1, 2, ..."""
    users = [k for k in range(11) for _ in range(k + 1)] + [11, 11, 12]
    items = [i for k in range(11) for i in range(k + 1)] + [0, 1, 0]
    train = Interactions(users, items, 13, 12)
    val = Interactions([11], [5], 13, 12)
    test = Interactions([11, 11, 12, 12], [2, 11, 4, 11], 13, 12)
    result = peers.most_popular({"train": train, "val": val, "test": test})
    # Val, train excluded: user 11 sees 2, 3, 4, 5 -> its val item at rank 4.
    assert result["val"]["users"] == 1
    assert result["val"]["mrr@10"] == pytest.approx(1 / 4)
    assert result["val"]["ndcg@10"] == pytest.approx(1 / math.log2(5))
    # Test, train and val excluded: user 11 sees 2, 3, 4, 6, ..., 11 -> hits at ranks 1 and 9;
    # user 12 sees 1, 2, ..., 11 -> item 4 at rank 4, item 11 at rank 11 (outside the top 10).
    ideal = 1 + 1 / math.log2(3)
    assert result["test"]["recall@10"] == pytest.approx((1.0 + 0.5) / 2)
    assert result["test"]["mrr@10"] == pytest.approx((1.0 + 1 / 4) / 2)
    ndcg_11 = (1 + 1 / math.log2(10)) / ideal
    ndcg_12 = (1 / math.log2(5)) / ideal
    assert result["test"]["ndcg@10"] == pytest.approx((ndcg_11 + ndcg_12) / 2)


def test_mostpopular_and_implicit_peers_give_sane_metrics(clustered_split) -> None:
    popular = peers.most_popular(clustered_split)
    for name in ("MostPopular", "implicit BPR", "item-kNN (implicit)", "EASE^R"):
        result = peers.RANKING_PEERS[name](clustered_split, seed=0)
        _check_ranking(result)
        assert result["model"] == name
        users = result["test"]["users"]
        assert len(result["test_per_user"]["recall@10"]) == users
        if name != "MostPopular":
            assert result["tuning"]["chosen"] in [
                {k: v for k, v in row.items() if k not in ("val_recall@10", "train_seconds")}
                for row in result["tuning"]["grid"]
            ]
        if name in ("item-kNN (implicit)", "EASE^R"):  # both see the clusters
            assert result["test"]["recall@10"] > 1.5 * popular["test"]["recall@10"], name


def test_als_with_listen_counts_uses_them_and_refuses_data_without(clustered_split) -> None:
    grid = [{"factors": 8, "regularization": 0.1, "alpha": 10.0}]
    plain = peers.implicit_als(clustered_split, grid=grid)
    _check_ranking(plain)
    with pytest.raises(ValueError, match="no interaction weights"):
        peers.implicit_als_listen_counts(clustered_split)
    weighted = {
        name: Interactions(
            part.user,
            part.item,
            part.num_users,
            part.num_items,
            rating=np.random.default_rng(0).integers(1, 500, len(part.user)).astype(np.float32),
        )
        for name, part in clustered_split.items()
    }
    counts = peers._user_items(weighted["train"], counts=True)
    assert np.allclose(np.sort(counts.data), np.sort(np.log1p(weighted["train"].rating)))
    _check_ranking(peers.implicit_als(weighted, grid=grid, counts=True))


def test_lightgcn_learns_the_clusters(clustered_split) -> None:
    result = peers.lightgcn(clustered_split, seed=0, dim=16, max_epochs=20, patience=5)
    _check_ranking(result)
    popular = peers.most_popular(clustered_split)
    assert result["test"]["recall@10"] > popular["test"]["recall@10"]
    assert 1 <= result["best_epoch"] <= result["epochs"] <= 20


def _biased_ratings(n_users: int = 150, n_items: int = 100, n: int = 6_000) -> Interactions:
    """ratings = 3 + user bias + item bias + noise, on a 1-5 scale."""
    rng = np.random.default_rng(1)
    user_bias, item_bias = rng.normal(0, 0.7, n_users), rng.normal(0, 0.7, n_items)
    pairs = np.unique(rng.integers(0, [n_users, n_items], size=(n, 2)), axis=0)
    users, items = pairs[:, 0], pairs[:, 1]
    raw = 3 + user_bias[users] + item_bias[items] + rng.normal(0, 0.3, len(users))
    rating = np.clip(raw, 1, 5).astype(np.float32)
    return Interactions(users, items, n_users, n_items, rating=rating)


def test_rating_peers_find_the_biases() -> None:
    split = split_interactions(_biased_ratings(), "hash", 0.1, 0.1)
    results = {name: fn(split, seed=0) for name, fn in peers.RATING_PEERS.items()}
    floor = results["GlobalMean"]["test"]["rmse"]
    for result in results.values():
        assert set(result) >= {"model", "val", "test", "train_seconds"}
        assert all(math.isfinite(result[p][m]) for p in ("val", "test") for m in ("rmse", "mae"))
    assert results["BiasBaseline"]["test"]["rmse"] < 0.6 * floor
    assert results["Surprise SVD"]["test"]["rmse"] < floor
    assert results["Surprise SVD++"]["test"]["rmse"] < floor


def test_report_gives_standard_errors_paired_differences_and_ratios() -> None:
    from bench import bench_train

    mean, se = bench_train.mean_and_se([0.0, 1.0, 0.0, 1.0])
    assert mean == 0.5 and se == pytest.approx(np.std([0, 1, 0, 1], ddof=1) / 2)
    encore = {
        "model": bench_train.ENCORE_RANKING,
        "dataset": "d",
        "test": {"recall@10": 0.3, "ndcg@10": 0.2},
        "val": {"recall@10": 0.3},
        "test_per_user": {"recall@10": [0.4, 0.2], "ndcg@10": [0.3, 0.1]},
    }
    peer = {
        "model": "EASE^R",
        "dataset": "d",
        "test": {"recall@10": 0.2, "ndcg@10": 0.25},
        "val": {"recall@10": 0.2},
        "test_per_user": {"recall@10": [0.2, 0.2], "ndcg@10": [0.3, 0.2]},
    }
    assert bench_train.paired_difference(encore, peer, "recall@10") == "+0.1000 ± 0.1000"
    table = "\n".join(bench_train.comparison([encore, peer]))
    assert "| d | recall@10 | EASE^R (0.2000) | 1.500 |" in table
    assert "| d | ndcg@10 | EASE^R (0.2500) | 0.800 |" in table and "| no |" in table
    assert "1.50× / 0.80×" in bench_train.readme_table([encore, peer])


def test_readme_quality_table_is_generated_from_the_committed_results() -> None:
    import json
    import re
    from pathlib import Path

    from bench import bench_train

    page = (Path(bench_train.__file__).parents[1] / "docs" / "quality.md").read_text()
    found = re.search(r"<!-- quality:start -->\n(.*?)\n<!-- quality:end -->", page, re.S)
    results = json.loads((bench_train.RESULTS / "train.json").read_text())
    assert found and found.group(1) == bench_train.readme_table(results), (
        "regenerate: python -m bench.bench_train --readme docs/quality.md"
    )
