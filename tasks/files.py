"""Crash-safe file writes: a reader (or the next night) sees the old file or the new one, never
half of one, even when the process is killed or the disk fills mid-write."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def partial_path(path: Path) -> Path:
    """Where `path` is written before the rename; a leftover one is a write that never ended."""
    return path.with_name(path.name + ".partial")


def write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """Call `write(partial)` and rename the result onto `path` (atomic on one filesystem).

    On any error the partial file is removed and `path` keeps its old content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    try:
        write(partial)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def write_text_atomically(path: Path, text: str) -> Path:
    return write_atomically(path, lambda partial: partial.write_text(text))
