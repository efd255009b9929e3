"""A run's learner from its config: the data loaded and split, the model's learner built on the
chosen device. The learners themselves: the interface in learner_base.py, GAT-BPR's in
bpr_learner.py, the rating model's in rating_learner.py.
"""

from __future__ import annotations

import torch

from models_src.bpr_learner import BPRLearner
from models_src.config import (
    TrainConfig,
    resolve_device,
)
from models_src.data import Interactions, split_interactions
from models_src.datasets import load_source
from models_src.learner_base import Learner
from models_src.rating_learner import RatingLearner


def split_for_training(data: Interactions, config: TrainConfig) -> dict[str, Interactions]:
    """The run's train/val/test, from the config's split settings (stable across nights)."""
    return split_interactions(
        data,
        config.split,
        config.val_ratio,
        config.test_ratio,
        config.split_salt,
        config.holdout_days,
    )


def prepare_learner(config: TrainConfig, data_source: str, holdout: bool = True):
    """Load, split (or not: the simple trainer uses all data), build the learner on the chosen
    device (seeded from config.seed); also return what a checkpoint must carry (data, snapshot,
    id maps)."""
    data = load_source(data_source)
    splits = split_for_training(data, config) if holdout else {"train": data}
    artifacts = {
        "data": data_source,
        "snapshot_id": data.meta.get("snapshot_id"),
        "user_ids": data.meta.get("user_ids", []),
        "item_ids": data.meta.get("item_ids", []),
        "group_ids": data.meta.get("group_ids", []),
    }
    return make_learner(splits, config, resolve_device(config.device)), artifacts


def make_learner(
    splits: dict[str, Interactions], config: TrainConfig, device: torch.device
) -> Learner:
    learners = {"gat-bpr": BPRLearner, "rating": RatingLearner}
    return learners[config.model](splits, config, device)
