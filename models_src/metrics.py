"""Ranking and rating metrics, RecBole-style: one small pure function per metric.

Conventions (DESIGN.md): full ranking over all items; the user's train items are excluded (and
val items when scoring test); Recall@K = hits / |relevant|; NDCG@K binary with the ideal DCG over
min(K, |relevant|). Users with no relevant item are left out of the averages.

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


def _csr_rows(rowptr: torch.Tensor, col: torch.Tensor, users: torch.Tensor):
    """(row index within the batch, column) pairs of the given users' CSR rows."""
    starts, ends = rowptr[users], rowptr[users + 1]
    lengths = ends - starts
    rows = torch.repeat_interleave(torch.arange(len(users)), lengths)
    offsets = torch.arange(int(lengths.sum())) - torch.repeat_interleave(
        torch.cumsum(lengths, 0) - lengths, lengths
    )
    return rows, col[torch.repeat_interleave(starts, lengths) + offsets]


def evaluate_ranking(
    score_users: Callable[[torch.Tensor], torch.Tensor],
    relevant: tuple[torch.Tensor, torch.Tensor],
    exclude: list[tuple[torch.Tensor, torch.Tensor]],
    num_items: int,
    k: int = 10,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Full-ranking evaluation, batched over users so memory stays users_batch x items.

    Args:
        score_users: maps a batch of user indices to a (batch, num_items) score tensor.
        relevant: CSR (rowptr, col) of each user's relevant items in the evaluated split.
        exclude: CSR pairs of items never to rank (train; train and val for test).
        num_items: catalogue size.
    Returns the mean of each metric over users with at least one relevant item, plus
    `coverage` (share of the catalogue that appears in some top-K) and `users` evaluated.
    """
    rel_ptr, rel_col = relevant
    n_relevant_all = rel_ptr[1:] - rel_ptr[:-1]
    users_all = torch.nonzero(n_relevant_all > 0).flatten()
    sums = {name: 0.0 for name in RANKING_METRICS}
    recommended = torch.zeros(num_items, dtype=torch.bool, device=device)
    for start in range(0, len(users_all), batch_size):
        users = users_all[start : start + batch_size]
        scores = score_users(users.to(device)).float().clone()
        for ptr, col in exclude:
            rows, cols = _csr_rows(ptr, col, users)
            scores[rows.to(device), cols.to(device)] = float("-inf")
        top = torch.topk(scores, k, dim=1).indices
        recommended[top.flatten()] = True
        relevant_mask = torch.zeros_like(scores, dtype=torch.bool)
        rows, cols = _csr_rows(rel_ptr, rel_col, users)
        relevant_mask[rows.to(device), cols.to(device)] = True
        hits = torch.gather(relevant_mask, 1, top)
        n_rel = n_relevant_all[users].to(device)
        for name, metric in RANKING_METRICS.items():
            sums[name] += float(metric(hits, n_rel).sum())
    n = max(len(users_all), 1)
    result = {f"{name}@{k}": value / n for name, value in sums.items()}
    result[f"coverage@{k}"] = float(recommended.float().mean())
    result["users"] = int(len(users_all))
    return result
