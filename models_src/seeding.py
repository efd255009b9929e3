"""Reproducible training when one process does several things at once.

Training can run on one thread while other threads of the process do other work: a Dask
worker with several threads (`threads_per_worker`) trains one model beside another model's
baselines or user ranges. Anything that draws from, reseeds, or saves
and restores torch's *global* RNG in one thread moves the stream another thread draws from (the
torch.onnx exporter Encore once used did the last: a training run beside an export was not
reproducible from its seed). So a training run draws from generators of its own
(`Learner.generator`, the neighbour sampler's), and the one thing that must use the global RNG,
module initialisation inside the model constructors (PyTorch and PyG draw their initial weights
from it), runs under `seeded_global_rng`, which holds a process-wide lock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

# Held by everything in this process that seeds, draws from or saves/restores torch's global RNG.
GLOBAL_RNG_LOCK = threading.RLock()


@contextmanager
def seeded_global_rng(seed: int) -> Iterator[None]:
    """Seed torch's global CPU RNG for the block (a model's construction), restore the previous
    state after it, and keep the other users of the global RNG in this process out meanwhile."""
    with GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def run_generator(seed: int, device: torch.device) -> torch.Generator:
    """A training run's own random stream, on the device its tensors live on."""
    return torch.Generator(device=device).manual_seed(seed)
