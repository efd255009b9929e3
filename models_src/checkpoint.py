"""Checkpoints: one dict per file (model, optimizer, scheduler, epoch, best metric, history,
config, id maps), written atomically and read back with `weights_only=True`, so loading a
checkpoint never runs code from the file."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def save_checkpoint(path: Path, state: dict) -> None:
    """Write to a temp name then rename: a crash mid-write never leaves a torn checkpoint."""
    partial = path.with_suffix(path.suffix + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)
