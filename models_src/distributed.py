"""Data-parallel training with torch.distributed, for runs launched by `torchrun`.

    torchrun --standalone --nproc-per-node 2 -m models_src.train_improved --data export.parquet

Every process holds the whole model and graph and takes the same global batches in the same
order (same seed); each computes the loss of its shard of the batch, and
DistributedDataParallel averages the gradients, so a step equals the single-process step on
the whole batch (up to float summation order). The backend is `gloo` on CPU and `nccl` on GPU.
Outside torchrun (no WORLD_SIZE, or 1) nothing here does anything: one process, the same code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DataParallel:
    """This process's place in a data-parallel run (rank 0 of 1 when there is none)."""

    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes checkpoints, metrics and logs."""
        return self.rank == 0

    def shard(self, size: int) -> slice:
        """This process's contiguous share of a batch of `size` (shares differ by at most 1)."""
        base, extra = divmod(size, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def mean(self, value: Tensor) -> Tensor:
        """The mean of `value` over processes (itself when alone)."""
        if not self.enabled:
            return value
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value / self.world_size

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


SINGLE_PROCESS = DataParallel()


def current() -> DataParallel:
    """The run's DataParallel: from the initialised process group, else single-process."""
    if dist.is_available() and dist.is_initialized():
        return DataParallel(dist.get_rank(), dist.get_world_size())
    return SINGLE_PROCESS


def init_from_torchrun(device: str = "auto") -> DataParallel:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK,
    MASTER_ADDR...); `gloo` on CPU, `nccl` on CUDA with one GPU per process (LOCAL_RANK)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return SINGLE_PROCESS
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return current()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
