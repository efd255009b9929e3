"""The rating model contains its bias baseline (issue 36): the factors learn the residuals of the
closed-form biases, so with no factors it *is* the baseline, and trained it never ends worse on
val than the baseline it starts from."""

from __future__ import annotations

import numpy as np
import torch

from models_src.baselines import bias_on_val, predict_ratings
from models_src.config import TrainConfig
from models_src.data import Interactions, split_interactions
from models_src.rating_learner import RatingLearner
from models_src.trainers import AdvancedTrainer


def biased_tastes(n_users: int = 200, n_items: int = 120, per_user: int = 30, seed: int = 0):
    """Ratings = 3 + user bias + item bias + a taste term (even users like even items) + noise:
    structure the biases cannot explain and the factors can."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), per_user)
    items = np.concatenate([rng.choice(n_items, per_user, replace=False) for _ in range(n_users)])
    user_bias, item_bias = rng.normal(0, 0.5, n_users), rng.normal(0, 0.5, n_items)
    taste = np.where(users % 2 == items % 2, 0.8, -0.8)
    rating = 3 + user_bias[users] + item_bias[items] + taste + rng.normal(0, 0.3, len(users))
    rating = np.clip(np.round(rating * 2) / 2, 1, 5).astype(np.float32)
    ts = 1_700_000_000 + np.arange(len(users))
    return Interactions(
        users, items, n_users, n_items, rating, ts, None, {"rating_scale": [1.0, 5.0]}
    )


def _rmse(predicted: torch.Tensor, data: Interactions) -> float:
    return float(torch.sqrt(((predicted.double() - torch.from_numpy(data.rating)) ** 2).mean()))


def test_without_factors_the_model_is_its_bias_baseline(tmp_path):
    splits = split_interactions(biased_tastes(), "hash", 0.15, 0.15)
    config = TrainConfig(model="rating", embedding_dim=0, epochs=2, device="cpu")
    learner = RatingLearner(splits, config, torch.device("cpu"))
    baseline = bias_on_val(splits)
    val = splits["val"]
    users, items = torch.from_numpy(val.user), torch.from_numpy(val.item)
    ours = _rmse(learner.model.predict(users, items), val)
    theirs = _rmse(predict_ratings(baseline, val).clamp(1.0, 5.0), val)
    assert abs(ours - theirs) < 1e-4
    # Trained (nothing to learn), it stays the baseline.
    final = AdvancedTrainer(
        learner, config, tmp_path, score_start=True, artifacts={}, log=lambda _: None
    ).fit()
    assert abs(final["val"]["rmse"] - theirs) < 1e-4


def test_with_factors_it_beats_the_baseline_it_starts_from(tmp_path):
    splits = split_interactions(biased_tastes(), "hash", 0.15, 0.15)
    config = TrainConfig(
        model="rating", embedding_dim=8, epochs=30, lr=0.01, l2=0.05, batch_size=256, device="cpu"
    )
    learner = RatingLearner(splits, config, torch.device("cpu"))
    final = AdvancedTrainer(
        learner, config, tmp_path, score_start=True, artifacts={}, log=lambda _: None
    ).fit()
    baseline = _rmse(predict_ratings(bias_on_val(splits), splits["val"]).clamp(1, 5), splits["val"])
    assert final["start_val"]["rmse"] >= final["val"]["rmse"]  # never ends worse than its start
    assert final["val"]["rmse"] < baseline - 0.1  # the taste term is ±0.8: factors find it
