"""Paired comparisons of two models on the same users (or ratings): how sure is a difference?

The gate asks two kinds of question about challenger - champion on the same evaluated units:
"is it at least not worse by more than a margin?" (non-inferiority: the interval's lower bound
above -margin) and "is it better?" (superiority: the lower bound above 0). Both read one paired
bootstrap: resample the units with replacement, recompute the statistic of each model on the
same resample, and take percentiles of the difference.

Why a bootstrap and not a Wilcoxon signed-rank test: the figure users read is a mean (Recall@10
averaged over users) or an RMSE, and the bootstrap interval is an interval of exactly that
difference, in its units, so it can be set against a tolerance in the same units. Wilcoxon tests
a shift of the median of per-user differences, which for Recall@K is mostly ties at zero. The
resampling is seeded, so the same vectors always give the same interval and p-value.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

RESAMPLES = 1000
# Units drawn per chunk of resamples: bounds memory at ~8 MB of indices whatever the size.
_CHUNK_DRAWS = 1_000_000


def mean_statistic(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Mean of `values` over each row of resampled indices."""
    return values[index].mean(axis=-1)


def rmse_statistic(squared_errors: np.ndarray, index: np.ndarray) -> np.ndarray:
    """RMSE of each resample, from per-rating squared errors."""
    return np.sqrt(squared_errors[index].mean(axis=-1))


@dataclass(frozen=True)
class Comparison:
    """Statistic of A minus that of B, with a two-sided interval and p-value (H0: no difference)."""

    difference: float
    low: float
    high: float
    p_value: float
    units: int
    confidence: float

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self, digits: int = 4) -> str:
        pct = f"{100 * self.confidence:g} %"
        return (
            f"{self.difference:+.{digits}f} [{pct} CI {self.low:+.{digits}f},"
            f" {self.high:+.{digits}f}], p = {self.p_value:.3g}, n = {self.units:,}"
        )


Statistic = Callable[[np.ndarray, np.ndarray], np.ndarray]


class Resamples:
    """Statistics of unit vectors on the seeded resamples, kept by content.

    Every comparison of one gate draws the same resamples (one seed, one count, paired vectors of
    one length), so a contender's statistic over them is the same in every comparison it enters:
    kept here, it is computed once per gate rather than once per comparison. Vectors computed
    together share one pass of draws.
    """

    def __init__(self) -> None:
        self._kept: dict[tuple, np.ndarray] = {}

    def statistics(
        self, vectors: list[tuple[np.ndarray, Statistic]], resamples: int, seed: int
    ) -> list[np.ndarray]:
        """statistic(values, index) for each resample, per (values, statistic): float64 vectors of
        one length. The same numbers as drawing for each vector alone."""
        keys = [(statistic, resamples, seed, _digest(values)) for values, statistic in vectors]
        missing = {
            key: pair for key, pair in zip(keys, vectors, strict=True) if key not in self._kept
        }
        if missing:
            computed = _resampled(list(missing.values()), resamples, seed)
            self._kept.update(zip(missing, computed, strict=True))
        return [self._kept[key] for key in keys]


def _digest(values: np.ndarray) -> tuple[int, bytes]:
    """A vector's identity by content, without keeping a copy of it."""
    return len(values), hashlib.blake2b(np.ascontiguousarray(values), digest_size=16).digest()


def _resampled(
    vectors: list[tuple[np.ndarray, Statistic]], resamples: int, seed: int
) -> list[np.ndarray]:
    """Each vector's statistic on `resamples` draws of its units with replacement, all vectors on
    the same draws (drawn in chunks, to bound the memory of the indices)."""
    n = len(vectors[0][0])
    rng = np.random.default_rng(seed)
    per_chunk = max(1, _CHUNK_DRAWS // n)
    draws: list[list[np.ndarray]] = [[] for _ in vectors]
    for start in range(0, resamples, per_chunk):
        index = rng.integers(0, n, size=(min(per_chunk, resamples - start), n))
        for kept, (values, statistic) in zip(draws, vectors, strict=True):
            kept.append(statistic(values, index))
    return [np.concatenate(kept) for kept in draws]


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    statistic: Statistic = mean_statistic,
    confidence: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = 0,
    kept: Resamples | None = None,
) -> Comparison:
    """statistic(a) - statistic(b), where a[i] and b[i] belong to the same unit (user, rating).

    Units where either value is NaN (e.g. a user with no long-tail item) are dropped. With no
    unit left, every field is NaN: the caller decides what "unknown" means. `kept` reuses the
    resampled statistics of vectors already seen (the gate compares each contender many times).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired vectors differ in length: {a.shape} vs {b.shape}")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    n = len(a)
    if n == 0:
        return Comparison(math.nan, math.nan, math.nan, math.nan, 0, confidence)
    everyone = np.arange(n)
    observed = float(statistic(a, everyone) - statistic(b, everyone))
    of_a, of_b = (kept or Resamples()).statistics([(a, statistic), (b, statistic)], resamples, seed)
    differences = of_a - of_b
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(differences, [tail, 1.0 - tail])
    # Two-sided percentile p-value with the +1 correction, so it is never reported as 0.
    below = (np.sum(differences <= 0) + 1) / (resamples + 1)
    above = (np.sum(differences >= 0) + 1) / (resamples + 1)
    p_value = min(1.0, 2.0 * min(below, above))
    return Comparison(observed, float(low), float(high), float(p_value), n, confidence)
