"""Metrics on hand-computed cases, and against torchmetrics' independent implementation."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.retrieval import RetrievalNormalizedDCG, RetrievalRecall

from models_src.metrics import (
    evaluate_ranking,
    hit_rate_at_k,
    mae,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
    rmse,
)


def csr(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(r) for r in rows])
    rowptr = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    return rowptr, torch.tensor([i for r in rows for i in r], dtype=torch.long)


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


def test_evaluate_ranking_excludes_train_items_and_skips_users_without_relevant():
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.0], [0.0, 0.1, 0.2, 0.3], [1.0, 0.0, 0.0, 0.0]])
    relevant = csr([[1], [], [3]])
    train = csr([[0], [], []])
    result = evaluate_ranking(lambda users: scores[users], relevant, [train], 4, k=1)
    # user 0: item 0 excluded, so item 1 ranks first (hit); user 2 ranks item 0 first (miss)
    assert result["recall@1"] == 0.5 and result["users"] == 2
    assert result["coverage@1"] == 0.5


def test_matches_torchmetrics_on_random_scores():
    torch.manual_seed(0)
    users, items, k = 50, 40, 10
    scores = torch.randn(users, items)
    relevant_rows = [
        torch.randperm(items)[: int(torch.randint(1, 8, (1,)))].tolist() for _ in range(users)
    ]
    ours = evaluate_ranking(lambda u: scores[u], csr(relevant_rows), [], items, k=k)
    target = torch.zeros(users, items, dtype=torch.bool)
    for u, row in enumerate(relevant_rows):
        target[u, row] = True
    indexes = torch.arange(users).unsqueeze(1).expand(users, items)
    recall = RetrievalRecall(top_k=k)(scores.flatten(), target.flatten(), indexes=indexes.flatten())
    ndcg = RetrievalNormalizedDCG(top_k=k)(
        scores.flatten(), target.flatten(), indexes=indexes.flatten()
    )
    assert math.isclose(ours[f"recall@{k}"], float(recall), rel_tol=1e-5)
    assert math.isclose(ours[f"ndcg@{k}"], float(ndcg), rel_tol=1e-5)
