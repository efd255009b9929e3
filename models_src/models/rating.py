"""The rating model: user and item embeddings plus biases around the global mean (MSE).

prediction(u, i) = μ + b_u + b_i + p_u · q_i, clipped to the source's scale when predicting.
It also ranks: top-K by predicted rating, with relevant = rating ≥ a threshold.

μ, b_u and b_i are the bias baseline's, fitted in closed form (`set_biases`) and then frozen:
the factors learn the residuals, with their own per-example L2. Trained end to end from zero
biases under one penalty (as before issue 36), the factors overfit before the biases converged
and the model lost to the very bias term it contains; this way, with the factors at zero (or
their dimension 0) it *is* the bias baseline, and early stopping from that starting point can
only keep or improve its val RMSE.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RatingModel(nn.Module):
    def __init__(
        self,
        num_users: int,
        num_items: int,
        embedding_dim: int = 50,
        global_mean: float = 0.0,
        rating_range: tuple[float, float] = (1.0, 5.0),
    ) -> None:
        super().__init__()
        self.num_users, self.num_items, self.embedding_dim = num_users, num_items, embedding_dim
        self.user_embedding = nn.Embedding(num_users, embedding_dim)
        self.item_embedding = nn.Embedding(num_items, embedding_dim)
        self.user_bias = nn.Embedding(num_users, 1)
        self.item_bias = nn.Embedding(num_items, 1)
        self.register_buffer("global_mean", torch.tensor(float(global_mean)))
        self.register_buffer("rating_range", torch.tensor(rating_range, dtype=torch.float32))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.user_embedding.weight, std=0.01)
        nn.init.normal_(self.item_embedding.weight, std=0.01)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)

    @torch.no_grad()
    def set_biases(self, global_mean: float, user_bias: Tensor, item_bias: Tensor) -> None:
        """Take the bias baseline's μ, b_u, b_i and freeze them (the factors learn the rest)."""
        self.global_mean.fill_(float(global_mean))
        self.user_bias.weight.copy_(user_bias.reshape(-1, 1).to(self.user_bias.weight))
        self.item_bias.weight.copy_(item_bias.reshape(-1, 1).to(self.item_bias.weight))
        self.user_bias.weight.requires_grad_(False)
        self.item_bias.weight.requires_grad_(False)

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        """Unclipped predicted ratings of (user, item) pairs (training uses these)."""
        dot = (self.user_embedding(users) * self.item_embedding(items)).sum(dim=-1)
        return (
            self.global_mean
            + self.user_bias(users).squeeze(-1)
            + self.item_bias(items).squeeze(-1)
            + dot
        )

    @torch.no_grad()
    def predict(self, users: Tensor, items: Tensor) -> Tensor:
        """Predicted ratings clipped to the source's scale."""
        low, high = self.rating_range
        return self.forward(users, items).clamp(low, high)

    def score_all(self, users: Tensor) -> Tensor:
        """Predicted rating of every item for each user (for top-K ranking)."""
        scores = self.user_embedding(users) @ self.item_embedding.weight.T
        return scores + self.item_bias.weight.T + self.user_bias(users) + self.global_mean

    @torch.no_grad()
    def recommend(
        self, users: Tensor, k: int, exclude: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        scores = self.score_all(users)
        if exclude is not None:
            scores = scores.masked_fill(exclude, float("-inf"))
        top = torch.topk(scores, k, dim=1)
        return top.indices, top.values

    def penalty(self, users: Tensor, items: Tensor) -> Tensor:
        """L2 on the factor rows a batch touches (per-example weight decay, as SGD matrix
        factorisation does): a rarely-seen user is not shrunk at every step it is absent from.
        Biases that are still trained (not set by `set_biases`) are penalised alike."""
        rows = [self.user_embedding(users), self.item_embedding(items)]
        if self.user_bias.weight.requires_grad:
            rows += [self.user_bias(users), self.item_bias(items)]
        return sum(row.pow(2).sum(-1) for row in rows).mean()

    def loss(
        self, predicted: Tensor, target: Tensor, users: Tensor, items: Tensor, l2: float = 0.0
    ) -> Tensor:
        """MSE plus `l2` times the batch's penalty."""
        return torch.mean((predicted - target) ** 2) + l2 * self.penalty(users, items)
