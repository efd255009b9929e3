"""Metrics and the evaluation protocol on hand-computed cases, and against torchmetrics'
independent implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.functional.retrieval import retrieval_normalized_dcg, retrieval_recall
from torchmetrics.retrieval import RetrievalRecall

from models_src.data import Interactions
from models_src.evaluation import Protocol, SliceSettings, sorted_isin
from models_src.metrics import (
    hit_rate_at_k,
    mae,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
    rmse,
)
from models_src.serving import ServedModel


def test_hand_computed_ranking_metrics():
    hits = torch.tensor([[1, 0, 1], [0, 0, 0], [0, 1, 0]])
    relevant = torch.tensor([2, 1, 5])
    assert recall_at_k(hits, relevant).tolist() == pytest.approx([1.0, 0.0, 0.2])
    # user 0: DCG = 1 + 1/log2(4) = 1.5, IDCG = 1 + 1/log2(3); user 2: IDCG over min(3, 5) hits
    expected_0 = 1.5 / (1 + 1 / math.log2(3))
    expected_2 = (1 / math.log2(3)) / (1 + 1 / math.log2(3) + 0.5)
    ndcg = ndcg_at_k(hits, relevant).tolist()
    assert math.isclose(ndcg[0], expected_0, rel_tol=1e-6) and ndcg[1] == 0
    assert math.isclose(ndcg[2], expected_2, rel_tol=1e-6)
    assert hit_rate_at_k(hits, relevant).tolist() == [1.0, 0.0, 1.0]
    assert mrr_at_k(hits, relevant).tolist() == [1.0, 0.0, 0.5]


def test_rating_errors():
    predicted, target = torch.tensor([3.0, 4.0, 5.0]), torch.tensor([4.0, 4.0, 3.0])
    assert math.isclose(rmse(predicted, target), math.sqrt(5 / 3))
    assert math.isclose(mae(predicted, target), 1.0)


def interactions(
    pairs: list[tuple[int, int]], users: int, items: int, ratings=None
) -> Interactions:
    user, item = zip(*pairs, strict=True) if pairs else ((), ())
    rating = None if ratings is None else np.asarray(ratings, dtype=np.float32)
    return Interactions(np.array(user), np.array(item), users, items, rating=rating)


def test_protocol_excludes_what_came_before_and_skips_users_without_relevant():
    splits = {
        "train": interactions([(0, 0), (1, 1)], 3, 4),
        # user 0 listens to train item 0 again: a repeat, not something to find
        "val": interactions([(0, 0), (0, 1), (2, 3)], 3, 4),
        "test": interactions([(0, 1), (0, 2), (1, 1)], 3, 4),
    }
    protocol = Protocol(splits)
    assert protocol.users_with_relevant("val").tolist() == [0, 2]
    assert protocol.users_with_relevant("test").tolist() == [
        0
    ]  # item 1 was in val; user 1's in train
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.0], [0.0, 0.1, 0.2, 0.3], [1.0, 0.0, 0.0, 0.0]])
    val = protocol.evaluate(lambda users: scores[users], "val", k=1)
    # user 0: item 0 excluded (train), item 1 ranks first (hit); user 2 ranks item 0 first (miss)
    assert val.per_user["recall@1"].tolist() == [1.0, 0.0]
    assert val.summary["recall@1"] == 0.5 and val.summary["users"] == 2
    assert val.summary["coverage@1"] == 0.5
    test = protocol.evaluate(lambda users: scores[users], "test", k=1)
    # user 0: items 0 (train) and 1 (val) excluded, item 2 first: a hit
    assert test.per_user["recall@1"].tolist() == [1.0]


def test_liked_items_are_the_relevant_ones_of_explicit_data():
    splits = {
        "train": interactions([(0, 0)], 1, 4, [5.0]),
        "val": interactions([(0, 1), (0, 2)], 1, 4, [2.0, 4.0]),
        "test": interactions([(0, 3)], 1, 4, [1.0]),
    }
    protocol = Protocol(splits, like_threshold=3.4)
    assert protocol.relevant["val"][1].tolist() == [2]
    assert protocol.users_with_relevant("test").tolist() == []  # disliked: nothing to find
    # ...but a disliked val item is still excluded when scoring test (the user has seen it)
    assert protocol.exclude["test"][1].tolist() == [0, 1, 2]


def test_slices_cold_users_long_tail_and_popularity():
    # 6 items; train users per item: item 0 has 3, item 1 has 2, items 2-5 one each (user 0).
    train = [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1)] + [(0, i) for i in range(2, 6)]
    splits = {
        "train": interactions(train, 3, 6),
        "val": interactions([(1, 5), (2, 4)], 3, 6),
        "test": interactions([], 3, 6),
    }
    protocol = Protocol(splits, slices=SliceSettings(cold_user_max=2, head_share=0.34))
    assert protocol.tail.tolist() == [False, False, True, True, True, True]
    scores = torch.tensor([[0.0, 0, 0, 0, 0, 0], [0.0, 0, 0, 0, 1, 2], [9.0, 0, 0, 0, 1, 0]])
    result = protocol.evaluate(lambda users: scores[users], "val", k=1)
    # user 1 (2 train items: cold) finds item 5; for user 2 (1 train item: cold) item 0 is
    # excluded (train), so item 4 ranks first: a hit too. Both are tail items.
    assert result.cold.tolist() == [True, True]
    assert result.summary["cold_recall@1"] == 1.0 and result.summary["cold_users"] == 2
    assert result.summary["tail_recall@1"] == 1.0
    assert result.summary["popularity@1"] == pytest.approx(1 / 3)  # 1 of 3 train users each


def test_matches_torchmetrics_per_user_on_random_scores():
    torch.manual_seed(0)
    users, items, k = 50, 40, 10
    scores = torch.randn(users, items)
    pairs = [
        (u, i)
        for u in range(users)
        for i in torch.randperm(items)[: int(torch.randint(1, 8, (1,)))].tolist()
    ]
    splits = {
        "train": interactions([], users, items),
        "val": interactions(pairs, users, items),
        "test": interactions([], users, items),
    }
    ours = Protocol(splits).evaluate(lambda u: scores[u], "val", k=k)
    target = torch.zeros(users, items, dtype=torch.bool)
    for u, i in pairs:
        target[u, i] = True
    for user in range(users):
        recall = retrieval_recall(scores[user], target[user], top_k=k)
        ndcg = retrieval_normalized_dcg(scores[user], target[user], top_k=k)
        assert math.isclose(ours.per_user[f"recall@{k}"][user], float(recall), rel_tol=1e-5)
        assert math.isclose(ours.per_user[f"ndcg@{k}"][user], float(ndcg), rel_tol=1e-5)
    indexes = torch.arange(users).unsqueeze(1).expand(users, items)
    mean_recall = RetrievalRecall(top_k=k)(
        scores.flatten(), target.flatten(), indexes=indexes.flatten()
    )
    assert math.isclose(ours.summary[f"recall@{k}"], float(mean_recall), rel_tol=1e-5)


def test_sorted_isin_is_isin():
    rng = np.random.default_rng(0)
    haystack = torch.from_numpy(np.unique(rng.integers(0, 500, 120)))
    keys = torch.from_numpy(rng.integers(-5, 520, (30, 10)))
    assert torch.equal(sorted_isin(keys, haystack), torch.isin(keys, haystack))
    assert not sorted_isin(keys, haystack[:0]).any()


def _ranked_alone(scores, splits, part, k):
    """Per-user Recall/NDCG/MRR@K of `part`, each user ranked alone: a row of scores, everything
    of the earlier parts at -inf, top-K, hits looked up in a Python set."""
    earlier = {"val": ("train",), "test": ("train", "val")}[part]
    seen = {(u, i) for p in earlier for u, i in zip(splits[p].user, splits[p].item, strict=True)}
    relevant: dict[int, set] = {}
    for u, i in zip(splits[part].user, splits[part].item, strict=True):
        if (u, i) not in seen:
            relevant.setdefault(int(u), set()).add(int(i))
    rows = {"recall": [], "ndcg": [], "mrr": []}
    for user in sorted(relevant):
        row = scores[user].clone()
        row[[i for u, i in seen if u == user]] = float("-inf")
        top = torch.topk(row.unsqueeze(0), k, dim=1).indices[0].tolist()
        hits = torch.tensor([[item in relevant[user] for item in top]])
        n = torch.tensor([len(relevant[user])])
        for name, metric in (("recall", recall_at_k), ("ndcg", ndcg_at_k), ("mrr", mrr_at_k)):
            rows[name].append(float(metric(hits, n)[0]))
    return sorted(relevant), rows


def test_parts_evaluated_together_rank_as_each_part_alone():
    """Each user is scored once for val and test, masked part after part: the vectors must be
    those of ranking every user alone for each part, ties included (scores of a few levels)."""
    torch.manual_seed(1)
    users, items, k = 40, 25, 5
    scores = torch.randint(0, 3, (users, items)).float()  # many ties
    rng = np.random.default_rng(1)
    pairs = {part: rng.integers(0, [users, items], (n, 2)) for part, n in (
        ("train", 200), ("val", 60), ("test", 60))}  # fmt: skip
    splits = {part: interactions([tuple(p) for p in pairs[part]], users, items) for part in pairs}
    calls = []

    def score(batch):
        calls.append(len(batch))
        return scores[batch]

    protocol = Protocol(splits)
    together = protocol.evaluate_parts(score, ("val", "test"), k=k, batch_size=7)
    union = np.union1d(protocol.users_with_relevant("val"), protocol.users_with_relevant("test"))
    assert sum(calls) == len(union)  # scored once, whatever the parts
    for part in ("val", "test"):
        evaluated, expected = _ranked_alone(scores, splits, part, k)
        assert together[part].users.tolist() == evaluated
        for name in ("recall", "ndcg", "mrr"):
            assert together[part].per_user[f"{name}@{k}"].tolist() == pytest.approx(
                expected[name], abs=0
            )
        alone = protocol.evaluate(score, part, k=k, batch_size=7)
        assert alone.summary == together[part].summary


def test_a_large_catalogue_is_scored_in_smaller_blocks_to_the_same_ranking():
    """Past `score_block_cells` the users are scored a few at a time: the same top K and the
    same summaries (ties included) as one block of `batch_size` users."""
    torch.manual_seed(2)
    users, items, k = 40, 25, 5
    scores = torch.randint(0, 3, (users, items)).float()
    rng = np.random.default_rng(2)
    pairs = {part: rng.integers(0, [users, items], (n, 2)) for part, n in (
        ("train", 200), ("val", 60), ("test", 60))}  # fmt: skip
    splits = {part: interactions([tuple(p) for p in pairs[part]], users, items) for part in pairs}
    blocks: list[int] = []

    def score(batch):
        blocks.append(len(batch))
        return scores[batch]

    protocol = Protocol(splits)
    whole = protocol.rank(score, ("val", "test"), k, batch_size=64)
    whole_results = protocol.evaluate_parts(score, k=k, batch_size=64)
    assert max(blocks) > 3
    protocol.score_block_cells = 3 * items + 1  # three users' scores at a time
    blocks.clear()
    small = protocol.rank(score, ("val", "test"), k, batch_size=64)
    assert max(blocks) == 3
    for part in ("val", "test"):
        assert torch.equal(small[part], whole[part])
    small_results = protocol.evaluate_parts(score, k=k, batch_size=64)
    for part in ("val", "test"):
        assert small_results[part].summary == whole_results[part].summary


def test_one_ranking_shared_by_every_user_is_ranked_without_a_matrix_as_the_full_ranking():
    """`rank_alike` (MostPopular, the bias baseline) against `rank` of the same scores repeated
    for every user: the same top K for users with K items left, the same metric vectors for all,
    including a user who has had all but two items; ties go to the lower index."""
    users, items, k = 30, 40, 5
    rng = np.random.default_rng(3)
    train = [tuple(p) for p in rng.integers(0, [users, items], (300, 2))]
    train += [(0, i) for i in range(items - 2)]  # user 0: two items left, fewer than K
    pairs = {"train": train}
    pairs |= {part: [tuple(p) for p in rng.integers(0, [users, items], (90, 2))]
              for part in ("val", "test")}  # fmt: skip
    pairs["val"].append((0, items - 2))  # and finds one of them in each part
    pairs["test"].append((0, items - 1))
    splits = {part: interactions(p, users, items) for part, p in pairs.items()}
    protocol = Protocol(splits)
    item_scores = torch.from_numpy(rng.permutation(items).astype(np.float32))  # no ties
    full = protocol.evaluate_parts(lambda u: item_scores.expand(len(u), -1), k=k, batch_size=7)
    alike = protocol.evaluate_parts(None, k=k, batch_size=7, same_for_everyone=item_scores)
    tops_full = protocol.rank(lambda u: item_scores.expand(len(u), -1), ("val", "test"), k, 7)
    tops_alike = protocol.rank_alike(item_scores, ("val", "test"), k, 7)
    for part in ("val", "test"):
        assert alike[part].users.tolist() == full[part].users.tolist()
        for name, vector in full[part].per_user.items():
            np.testing.assert_array_equal(alike[part].per_user[name], vector, err_msg=name)
        left = items - np.bincount(protocol._exclude_keys[part] // items, minlength=users)
        enough = torch.from_numpy(left[full[part].users] >= k)
        assert torch.equal(tops_alike[part][enough], tops_full[part][enough])
        assert not bool(enough[0])  # user 0's short list was exercised
    tied = torch.zeros(items)
    top = protocol.rank_alike(tied, ("val",), k)["val"]
    first = int(protocol.users_with_relevant("val")[1])
    keys = protocol._exclude_keys["val"]
    had = set(keys[keys // items == first] % items)
    assert top[1].tolist() == [i for i in range(items) if i not in had][:k]


def test_a_served_model_ranks_alike_for_everyone_only_without_taste_vectors_or_unknown_ids():
    from models_src.baselines import _buffers

    popularity = torch.tensor([5, 1, 3, 0])
    flat = _buffers(torch.zeros(3, 1), torch.zeros(4, 1), torch.randn(3), torch.randn(4))
    served = ServedModel(flat, popularity)
    assert torch.equal(served.ranking_for_everyone(3), flat["item_bias"])
    assert served.ranking_for_everyone(4) is None  # user 3 unknown: the popularity fallback
    tasteful = _buffers(torch.ones(3, 1), torch.ones(4, 1))
    assert ServedModel(tasteful, popularity).ranking_for_everyone(3) is None
    fewer_items = _buffers(torch.zeros(3, 1), torch.zeros(3, 1))
    assert ServedModel(fewer_items, popularity).ranking_for_everyone(3) is None
