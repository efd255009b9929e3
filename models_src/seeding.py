"""Reproducible training when one process does several things at once.

The in-process nightly run trains one model in a worker thread while the flow's thread exports
the previous model to ONNX, and torch's exporter saves and restores the *global* RNG state around
its tracing: measured, a thread drawing from the global RNG during one export left the stream
of an undisturbed run at its 304th draw. A training run that shuffles and samples from the
global RNG is then not reproducible from its seed (the rating model of an in-process night was
not: its epoch-1 loss differed from the same run's on Dask).

So a training run draws from generators of its own (`Learner.generator`, the neighbour sampler's),
and the one thing that must use the global RNG, module initialisation inside the model
constructors (PyTorch and PyG draw their initial weights from it), runs under
`seeded_global_rng`, which the ONNX export takes too.
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
