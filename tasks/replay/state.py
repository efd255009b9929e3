"""The replay's own state, so a killed replay resumes: its settings, the cut points, the peers'
settings, and one record per judged night (per-user vectors in `nights/night-NNNN.npz`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tasks.files import write_atomically, write_text_atomically


@dataclass
class ReplayState:
    dataset: str
    start: float
    period: str
    cuts: list[int]
    peers: dict[str, dict]  # name -> {"params", "holdout_recall"}
    source: dict  # what reading the source found (files, rows, rejects)
    nights: list[dict] = field(default_factory=list)
    frozen: dict | None = None  # the first night's serving version: artifact_dir, cold list

    @staticmethod
    def folder(home: Path, dataset: str) -> Path:
        return home / "replay" / dataset

    @classmethod
    def load(cls, folder: Path) -> ReplayState | None:
        path = folder / "state.json"
        return cls(**json.loads(path.read_text())) if path.exists() else None

    def save(self, folder: Path) -> None:
        write_text_atomically(
            folder / "state.json", json.dumps(asdict(self), indent=1, default=float)
        )

    def settings_differ(self, start: float, period: str) -> str | None:
        if (self.start, self.period) != (start, period):
            return (
                f"this replay home was started with start {self.start:g}, period {self.period};"
                f" resume with those, or use another --home for start {start:g}, period {period}"
            )
        return None

    @property
    def done(self) -> set[int]:
        return {night["night"] for night in self.nights}


SEEN = "seen before the night"


def save_vectors(
    folder: Path, night: int, vectors: dict[str, dict[str, np.ndarray]], seen: np.ndarray
) -> None:
    """Per-user metric vectors of every contender, aligned on the night's active users, and
    whether each of those users was seen before the night."""
    flat = {f"{name}|{metric}": v for name, by in vectors.items() for metric, v in by.items()}
    flat[SEEN] = seen

    def write(partial: Path) -> None:
        with partial.open("wb") as out:  # a file object: np.savez adds no suffix to it
            np.savez(out, **flat)

    write_atomically(folder / "nights" / f"night-{night:04d}.npz", write)


def load_vectors(folder: Path, night: int) -> tuple[dict[str, dict[str, np.ndarray]], np.ndarray]:
    """(contender -> metric -> per-user values, seen-before flags) of one judged night."""
    vectors: dict[str, dict[str, np.ndarray]] = {}
    with np.load(folder / "nights" / f"night-{night:04d}.npz") as stored:
        seen = stored[SEEN]
        for key in stored.files:
            if key != SEEN:
                name, metric = key.split("|")
                vectors.setdefault(name, {})[metric] = stored[key]
    return vectors, seen
