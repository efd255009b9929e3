"""Ranking and rating metrics, RecBole-style: one small pure function per metric.

Recall@K = hits / |relevant|; NDCG@K binary with the ideal DCG over min(K, |relevant|). What
counts as relevant and what is never ranked is the protocol's business (models_src/evaluation.py).

The per-user functions take `hits`: a (users, K) 0/1 tensor, hits[u, r] = 1 when the item ranked
r+1 for u is relevant, and `n_relevant`: (users,) counts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def recall_at_k(hits: torch.Tensor, n_relevant: torch.Tensor) -> torch.Tensor:
    """Recall@K = |top-K ∩ relevant| / |relevant|."""
    return hits.sum(dim=1) / n_relevant.clamp(min=1)


def ndcg_at_k(hits: torch.Tensor, n_relevant: torch.Tensor) -> torch.Tensor:
    """NDCG@K = Σ_r hit_r / log2(r + 1) over ranks r = 1..K, divided by the same sum for an
    ideal list with min(K, |relevant|) hits at the top."""
    k = hits.shape[1]
    discounts = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64, device=hits.device))
    dcg = (hits.double() * discounts).sum(dim=1)
    ideal_hits = torch.arange(k, device=hits.device).unsqueeze(0) < n_relevant.unsqueeze(1)
    idcg = (ideal_hits.double() * discounts).sum(dim=1)
    return (dcg / idcg.clamp(min=1e-12)).float()


def hit_rate_at_k(hits: torch.Tensor, n_relevant: torch.Tensor) -> torch.Tensor:
    """HitRate@K = 1 when at least one relevant item is in the top K."""
    return (hits.sum(dim=1) > 0).float()


def mrr_at_k(hits: torch.Tensor, n_relevant: torch.Tensor) -> torch.Tensor:
    """MRR@K = 1 / rank of the first relevant item in the top K (0 when there is none)."""
    k = hits.shape[1]
    ranks = torch.arange(1, k + 1, device=hits.device).float()
    reciprocal = hits.float() / ranks
    return reciprocal.max(dim=1).values


def rmse(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """RMSE = sqrt(mean((ŷ - y)²))."""
    return float(torch.sqrt(torch.mean((predicted.double() - target.double()) ** 2)))


def mae(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """MAE = mean(|ŷ - y|)."""
    return float(torch.mean((predicted.double() - target.double()).abs()))


RANKING_METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "recall": recall_at_k,
    "ndcg": ndcg_at_k,
    "hit_rate": hit_rate_at_k,
    "mrr": mrr_at_k,
}
