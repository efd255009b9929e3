"""Recent popularity: what most people took up lately, the strongest simple list for the next days.

Replaying MovieLens 100K week by week, a 28-day MostPopular beat every personalised model on the
next week's interactions (issue 34): what users take up next follows what others took up lately.
This module counts each item's interactions over a window that ends where the data ends (the val
cut for a forward holdout's train part, tonight for the serving refit), and chooses the window on
val. Three users of it:

- the `recent-popular` baseline (models_src/baselines.py): the same list for everyone;
- the cold-start list: what users with no history get (users never seen, users whose events are
  all in a held-out part), chosen on val among the users with the least history;
- GAT-BPR's recency prior (`prior_bias`): the window's popularity added to the served scores as
  an item bias, with its weight chosen on val (models_src/runs.py).

Data without timestamps has one window, all time: the same as MostPopular.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from models_src.data import SECONDS_PER_DAY, Interactions

# Windows tried on val, in days; None is all time. 7 to 112 days brackets what the replay of
# MovieLens 100K (weekly) and latest-small (monthly) found useful.
WINDOWS: tuple[float | None, ...] = (7.0, 14.0, 28.0, 56.0, 112.0, None)
# Weights of the recency prior tried on val, as a share of the spread of the model's own scores
# (see `prior_bias`); 0 is the model alone.
PRIOR_WEIGHTS: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0)
# Users whose rows measure the spread of a model's scores for the prior's scale.
SPREAD_SAMPLE_USERS = 1024


def recent_counts(data: Interactions, window_days: float | None) -> np.ndarray:
    """Interactions per item in the `window_days` before the data's newest event (all of them
    when the window is None or the data has no timestamps)."""
    keep = slice(None)
    if window_days is not None and data.ts is not None and len(data.ts):
        keep = data.ts >= int(data.ts.max()) - window_days * SECONDS_PER_DAY
    return np.bincount(data.item[keep], minlength=data.num_items).astype(np.float64)


def popularity_scores(data: Interactions, window_days: float | None) -> Tensor:
    """log1p of the window's counts, ties broken towards the lower index (as MostPopular does),
    plus a small share of all-time popularity so items the window never saw still rank by it."""
    recent = np.log1p(recent_counts(data, window_days))
    overall = np.log1p(recent_counts(data, None))
    tie_break = np.arange(data.num_items) / (10.0 * max(1, data.num_items))
    # All-time popularity only orders items the window ties on (its scale: below one recent
    # interaction's worth, log1p(1) = 0.69).
    scale = 0.5 / max(1.0, float(overall.max()))
    return torch.from_numpy(recent + scale * overall - tie_break * scale)


def window_label(window_days: float | None) -> str:
    return "all time" if window_days is None else f"{window_days:g} days"


@dataclass
class WindowChoice:
    """The window chosen on val, and what each tried scored there."""

    window_days: float | None
    tried: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"window_days": self.window_days, "val": self.tried}


def candidate_windows(data: Interactions) -> tuple[float | None, ...]:
    """The windows worth trying on `data`: none shorter than makes a difference, and only all
    time without timestamps."""
    if data.ts is None or not len(data.ts):
        return (None,)
    span_days = (int(data.ts.max()) - int(data.ts.min())) / SECONDS_PER_DAY
    return tuple(w for w in WINDOWS if w is None or w < span_days)


def choose_window(
    train: Interactions, evaluate: Callable[[Tensor], float], windows=None
) -> WindowChoice:
    """The window whose list scores best by `evaluate` (item scores -> a val metric, higher is
    better); ties go to the shorter window."""
    windows = windows or candidate_windows(train)
    best, best_value, tried = WindowChoice(windows[0]), -np.inf, {}
    for window in windows:
        value = evaluate(popularity_scores(train, window))
        tried[window_label(window)] = value
        if value > best_value:  # a NaN (nobody to judge on) never wins: the first one stays
            best_value, best = value, WindowChoice(window)
    best.tried = tried
    return best


def score_spread(score_users: Callable[[Tensor], Tensor], num_users: int) -> float:
    """Mean per-user standard deviation of a scorer's rows over an even sample of users: the
    unit in which the recency prior's weight is expressed, so one weight grid fits models whose
    scores differ in scale by orders of magnitude."""
    users = torch.unique(torch.linspace(0, num_users - 1, SPREAD_SAMPLE_USERS).long())
    rows = score_users(users)
    finite = torch.where(torch.isfinite(rows), rows, torch.nan)
    spread = torch.nanmean((finite - torch.nanmean(finite, 1, keepdim=True)).pow(2), 1).sqrt()
    return float(torch.nanmean(spread)) if len(spread) else 1.0


def prior_bias(popularity: Tensor, weight: float, spread: float) -> Tensor:
    """The recency prior as an item bias: standardised log popularity x weight x `spread` (the
    model's own score spread), so weight 1 moves an item by as much as the model's typical
    difference between two items."""
    centred = popularity.double() - popularity.double().mean()
    scale = centred.pow(2).mean().sqrt().clamp(min=1e-12)
    return (centred / scale * weight * spread).float()


@dataclass
class PriorChoice:
    """The recency prior's window and weight chosen on val (weight 0: the model alone)."""

    window_days: float | None = None
    weight: float = 0.0
    val: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def label(self) -> str:
        return window_label(self.window_days)

    def to_dict(self) -> dict:
        return {"window_days": self.window_days, "weight": self.weight, "val": self.val,
                "seconds": self.seconds}  # fmt: skip


def choose_prior(
    compose: Callable[[Tensor | None], Callable[[Tensor], Tensor]],
    positives: Interactions,
    spread: float,
    evaluate_val: Callable[[Callable[[Tensor], Tensor]], float],
    alone: float,
    weights: tuple[float, ...] = PRIOR_WEIGHTS,
) -> tuple[PriorChoice, Tensor | None]:
    """Every (window, weight) on val for the scorer `compose(item bias)`; returns the best and
    its item bias (None when the model alone, val `alone`, won)."""
    import time

    started = time.perf_counter()
    best, best_value, best_bias = PriorChoice(val={"model alone": alone}), alone, None
    for window in candidate_windows(positives):
        popularity = popularity_scores(positives, window)
        for weight in weights:
            if weight == 0.0:
                continue
            bias = prior_bias(popularity, weight, spread)
            value = evaluate_val(compose(bias))
            best.val[f"{window_label(window)}, weight={weight:g}"] = value
            if value > best_value:
                best_value, best_bias = value, bias
                best.window_days, best.weight = window, weight
    best.seconds = time.perf_counter() - started
    return best, best_bias
