"""The rating model's epoch and evaluation: MSE on the train ratings around the closed-form
biases, RMSE/MAE and top-K on the held-out ones."""

from __future__ import annotations

import math

import numpy as np
import torch

from models_src.config import (
    TrainConfig,
    like_threshold,
    rating_scale,
    training_autocast,
)
from models_src.data import Interactions
from models_src.distributed import current as current_data_parallel
from models_src.evaluation import Protocol, rating_summary
from models_src.learner_base import Learner, _batches
from models_src.models import RatingModel
from models_src.seeding import run_generator, seeded_global_rng


class RatingLearner(Learner):
    """The rating model on explicit ratings: MSE on the train ratings; RMSE/MAE and top-K on
    the held-out ones (relevant = rating at or above the threshold)."""

    mode = "min"
    monitor = "rmse"

    def __init__(self, splits: dict[str, Interactions], config: TrainConfig, device: torch.device):
        train = splits["train"]
        if train.rating is None:
            raise ValueError("the rating model needs explicit ratings; this source has none")
        if current_data_parallel().enabled:
            raise ValueError("data-parallel (torchrun) training is implemented for GAT-BPR only")
        self.splits, self.config, self.device = splits, config, device
        self.rating_range = rating_scale(train)
        self.threshold = like_threshold(train, config.rating_threshold)
        with seeded_global_rng(config.seed):
            model = RatingModel(
                train.num_users,
                train.num_items,
                config.embedding_dim,
                global_mean=float(train.rating.mean()),
                rating_range=self.rating_range,
            )
        self.bias_fit = self._fit_biases(splits, config)
        buffers = self.bias_fit.buffers
        model.set_biases(buffers["offset"], buffers["user_bias"], buffers["item_bias"])
        self.model = model.to(device)
        self.generator = run_generator(config.seed, device)
        self.tensors = {
            name: tuple(
                torch.from_numpy(np.asarray(a)).to(device)
                for a in (data.user, data.item, data.rating)
            )
            for name, data in splits.items()
        }
        self.protocol = Protocol(splits, self.threshold)

    # The model starts as its bias baseline: the trainer scores that start as epoch 0, the one
    # to beat (models_src/runs.py), so training never ends worse than the baseline on val.
    starts_from_baseline = True

    @staticmethod
    def _fit_biases(splits: dict[str, Interactions], config: TrainConfig):
        """The closed-form bias baseline the factors start from: its regularisation chosen on
        val like the gate's own bias baseline, or, without val (a serving refit), the one the
        gated run chose (`config.bias_regularization`)."""
        from models_src.baselines import bias_baseline, bias_on_val

        if config.bias_regularization is not None:
            return bias_baseline(splits["train"], config.bias_regularization)
        if "val" not in splits:
            return bias_baseline(splits["train"])
        return bias_on_val(splits)

    def model_args(self) -> dict:
        m = self.model
        return {
            "num_users": m.num_users,
            "num_items": m.num_items,
            "embedding_dim": m.embedding_dim,
            "global_mean": float(m.global_mean),
            "rating_range": list(self.rating_range),
        }

    def train_epoch(self, optimizer: torch.optim.Optimizer, epoch: int) -> float:
        self.model.train()
        users, items, ratings = self.tensors["train"]
        total, count = 0.0, 0
        for batch in _batches(len(users), self.config.batch_size, f"epoch {epoch}", self.generator):
            u, i = users[batch], items[batch]
            with training_autocast(self.device, self.config.precision):
                predicted = self.model(u, i)
            # .float(): the loss in fp32 whatever autocast produced (a no-op in fp32).
            loss = self.model.loss(predicted.float(), ratings[batch], u, i, self.config.l2)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
            count += len(batch)
        return total / max(count, 1)

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        self.model.eval()
        users, items, ratings = self.tensors[split]
        result = rating_summary(self.model.predict(users, items), ratings)
        ranking = self.protocol.evaluate(
            self.model.score_all,
            split,
            k=self.config.k,
            batch_size=self.config.eval_batch_size,
            device=self.device,
        )
        result.update(ranking.summary)
        if math.isnan(result["rmse"]):
            raise FloatingPointError("rating model diverged (RMSE is NaN); lower --lr")
        return result
