"""The learner interface the trainers drive: a model, its data on the device, `train_epoch`
and `evaluate` (models_src/trainers.py owns the loop, early stopping, the LR schedule and
checkpoints, so every model shares them)."""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from tqdm import tqdm

from models_src.config import TrainConfig
from models_src.data import Interactions
from models_src.distributed import SINGLE_PROCESS, DataParallel


def _batches(n: int, batch_size: int, desc: str, generator: torch.Generator) -> Iterator[Tensor]:
    """Shuffled index batches (on the generator's device); a progress bar only when a person
    watches a terminal."""
    order = torch.randperm(n, generator=generator, device=generator.device)
    starts = range(0, n, batch_size)
    bar = tqdm(starts, desc=desc, leave=False, disable=not sys.stderr.isatty())
    for start in bar:
        yield order[start : start + batch_size]


class Learner(ABC):
    """The interface trainers use; see BPRLearner and RatingLearner."""

    model: nn.Module
    device: torch.device
    monitor: str
    mode: str  # "max" or "min": the direction in which `monitor` improves
    parallel: DataParallel = SINGLE_PROCESS  # this process's share of a torchrun run
    generator: torch.Generator | None = None  # the run's own random stream (models_src/seeding.py)

    @abstractmethod
    def train_epoch(self, optimizer: torch.optim.Optimizer, epoch: int) -> float:
        """One pass over the training data; returns the mean loss."""

    @abstractmethod
    def evaluate(self, split: str) -> dict[str, float]:
        """Metrics on `split` ("train", "val" or "test")."""

    @abstractmethod
    def model_args(self) -> dict:
        """The constructor arguments that rebuild the model from a checkpoint."""

    def rng_state(self) -> dict[str, Tensor]:
        """Where the run's random streams stand, for a checkpoint to resume from."""
        return {} if self.generator is None else {"generator": self.generator.get_state()}

    def set_rng_state(self, state: dict[str, Tensor]) -> None:
        if self.generator is not None and "generator" in state:
            # .cpu(): a checkpoint loaded with map_location="cuda" moves the state tensors too.
            self.generator.set_state(state["generator"].cpu())


def training_positives(
    train: Interactions, config: TrainConfig, threshold: float | None
) -> Interactions:
    """The pairs BPR learns from: every train interaction, or on explicit data with
    `positives = "liked"` only those rated at or above the like threshold."""
    if threshold is None or config.positives == "all":
        return train
    return train.subset(train.rating >= threshold)
