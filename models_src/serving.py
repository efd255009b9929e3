"""How a trained model's embeddings are served on a later night, and scored for the gate.

A model trained on an earlier snapshot knows a prefix of tonight's ids (indices are append-only).
It is evaluated exactly as it would serve: users it knows get their embedding scores over the
items it knows; items it has never seen cannot be recommended by it (score -inf, so they only
count against it as misses); users it does not know, and users with no history in what it is
judged after (a forward holdout's new users), get the cold-start list that batch scoring gives
users it has never seen (`ColdStart`: recent popularity, its half-life chosen on val), or all-time
popularity when none is given. The rating model predicts an unknown pair from whatever it knows
of the pair (global mean + known biases), as its pair scorer does.

A GAT-BPR blended with EASE^R's item-item weights (models_src/item_item.py) carries them as the
`item_item` and `blend_weight` buffers (past the dense cap, as the `neighbour_items` and
`neighbour_weights` lists of models_src/neighbours.py); it also needs each user's history,
which it gets as the scorer does: the user's 0/1 row of the interactions it may not recommend
again (here, train).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from models_src.data import Interactions
from models_src.evaluation import Protocol, SplitResult
from models_src.item_item import blend, history_matrix, item_item_component, item_item_scores
from models_src.recency import choose_half_life, popularity_scores

# Fewer val users than this with no train history: the cold-start half-life is chosen on the cold
# users (models_src/evaluation.py's SliceSettings) instead, whose lists it most resembles.
MIN_NEW_USERS = 30


@dataclass
class ColdStart:
    """What a user without history gets: one list for all (item scores), and who those users
    are tonight (bool per user: no train interaction)."""

    scores: Tensor
    no_history: Tensor
    half_life_days: float | None = None
    tried: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"half_life_days": self.half_life_days, "val": self.tried}


def cold_start_on_val(
    splits: dict[str, Interactions], protocol: Protocol, k: int = 10
) -> ColdStart:
    """The cold-start list: recent popularity with the half-life of best val Recall@K over the
    val users with no train history (or the cold users, when fewer than MIN_NEW_USERS)."""
    train = splits["train"]
    no_history = protocol.train_items_per_user == 0
    users = protocol.users_with_relevant("val")
    judged = no_history[users]
    if judged.sum() < MIN_NEW_USERS:
        judged = protocol.cold_users("val")

    def val_recall(item_scores: Tensor) -> float:
        result = protocol.evaluate_parts(None, ("val",), k, same_for_everyone=item_scores.float())
        per_user = result["val"].per_user[f"recall@{k}"]
        return float(per_user[judged].mean()) if judged.any() else float(per_user.mean())

    choice = choose_half_life(train, val_recall)
    return ColdStart(
        popularity_scores(train, choice.half_life_days).float(),
        torch.from_numpy(no_history),
        choice.half_life_days,
        choice.tried,
    )


class ServedModel:
    def __init__(
        self,
        buffers: dict[str, Tensor],
        popularity: Tensor,
        rating_range: tuple[float, float] | None = None,
        history: Interactions | None = None,
        cold_start: ColdStart | None = None,
    ) -> None:
        self.user_emb, self.item_emb = buffers["user_emb"], buffers["item_emb"]
        self.user_bias, self.item_bias = buffers["user_bias"], buffers["item_bias"]
        self.offset = float(buffers["offset"])
        self.popularity = popularity.float()
        self.cold_start = cold_start
        self.rating_range = rating_range
        self.item_item = item_item_component(buffers)  # dense B, neighbour lists, or None
        self.blend_weight = float(buffers.get("blend_weight", 0.0))
        self.history = None
        if self.item_item is not None:
            if history is None:
                raise ValueError("a blended model is scored with the users' history")
            self.history = history_matrix(history, self.known_users, self.known_items)

    @property
    def known_users(self) -> int:
        return len(self.user_emb)

    @property
    def known_items(self) -> int:
        return len(self.item_emb)

    @property
    def fallback_scores(self) -> Tensor:
        """The list of users the model cannot serve: the cold-start list, or all-time
        popularity."""
        if self.cold_start is not None:
            return self.cold_start.scores
        return torch.log1p(self.popularity)

    def _served_by_model(self, users: Tensor) -> Tensor:
        known = users < self.known_users
        if self.cold_start is not None:
            known &= ~self.cold_start.no_history[users]
        return known

    def score_users(self, users: Tensor) -> Tensor:
        """(batch, tonight's items) scores as served."""
        known = self._served_by_model(users)
        if bool(known.all()) and self.known_items == len(self.popularity):
            return self._known_scores(users)  # nothing unknown to fill in: no second matrix
        scores = torch.full((len(users), len(self.popularity)), float("-inf"))
        if known.any():
            scores[known, : self.known_items] = self._known_scores(users[known])
        scores[~known] = self.fallback_scores
        return scores

    def ranking_for_everyone(self, num_users: int) -> Tensor | None:
        """Item scores that rank tonight's items alike for all `num_users` users, or None when
        the ranking depends on the user. It does not when no user has a taste vector (all zero:
        MostPopular, the bias baseline, whose user bias shifts a whole row) and every user and
        item is known (an unknown user gets the popularity fallback instead), and no user goes
        to a cold-start list."""
        if self.item_item is not None or self.known_users < num_users:
            return None
        if self.cold_start is not None and bool(self.cold_start.no_history.any()):
            return None
        if self.known_items != len(self.popularity) or bool(self.user_emb.any()):
            return None
        return self.item_bias

    def _known_scores(self, u: Tensor) -> Tensor:
        """(users, known items) scores of users the model knows. The additions run in place on
        the product, in the order of u . i + b_u + b_i + offset."""
        block = self.user_emb[u] @ self.item_emb.T
        block.add_(self.user_bias[u].unsqueeze(1)).add_(self.item_bias).add_(self.offset)
        if self.item_item is not None:
            learned = item_item_scores(self.history, u, self.item_item)
            block = blend(block, learned, self.blend_weight)
        return block

    def predict_pairs(self, users: Tensor, items: Tensor) -> Tensor:
        """Ratings for (user, item) pairs, with the bias fallback for unknown ids, clipped."""
        known_u, known_i = users < self.known_users, items < self.known_items
        u, i = users.clamp(max=self.known_users - 1), items.clamp(max=self.known_items - 1)
        dot = (self.user_emb[u] * self.item_emb[i]).sum(-1) * (known_u & known_i)
        prediction = self.offset + self.user_bias[u] * known_u + self.item_bias[i] * known_i + dot
        low, high = self.rating_range or (-float("inf"), float("inf"))
        return prediction.clamp(low, high)


def evaluate_served(
    protocol: Protocol, model: ServedModel, parts: tuple[str, ...], k: int
) -> dict[str, SplitResult]:
    """`model` on `parts` of `protocol`, as it serves: what the gate compares, wherever it is
    computed (the gate itself, or the task that fitted a baseline)."""
    alike = model.ranking_for_everyone(protocol.num_users)
    return protocol.evaluate_parts(model.score_users, parts, k, same_for_everyone=alike)


def tables_digest(buffers: dict[str, Tensor]) -> str:
    """A fingerprint of a scorer's tables (names, types, shapes and values): a ranking saved
    for these tables stands for them only."""
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(buffers):
        array = np.ascontiguousarray(buffers[name].detach().cpu().numpy())
        digest.update(f"{name}:{array.dtype}:{array.shape};".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def popularity_counts(train: Interactions) -> Tensor:
    return torch.bincount(torch.from_numpy(train.item), minlength=train.num_items)
