"""Recent popularity: what most people took up lately, the strongest simple list for the next days.

Replaying MovieLens 100K week by week, a 28-day MostPopular beat every personalised model on the
next week's interactions (issue 34): what users take up next follows what others took up lately.
This module weighs each interaction by its age, halving every `half_life_days` before the
data's newest event (the val cut for a forward holdout's train part, tonight for the serving
refit), and chooses the half-life on val. On the weekly replay of MovieLens 100K a decay
predicted the next week better than hard windows of the same length (issue 34's closing note).
Three users of it:

- the `recent-popular` baseline (models_src/baselines.py): the same list for everyone;
- the cold-start list: what users with no history get (users never seen, users whose events are
  all in a held-out part), chosen on val among the users with the least history;
- GAT-BPR's recency prior (`prior_bias`): the decayed popularity added to the served scores as
  an item bias, with its weight chosen on val (models_src/runs.py).

Data without timestamps has one choice, no decay: the same as MostPopular.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from models_src.data import SECONDS_PER_DAY, Interactions

# Half-lives tried on val, in days; None is no decay (all time counts alike).
HALF_LIVES: tuple[float | None, ...] = (3.0, 7.0, 14.0, 28.0, 56.0, None)
# Weights of the recency prior tried on val, as a share of the spread of the model's own scores
# (see `prior_bias`); 0 is the model alone.
PRIOR_WEIGHTS: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
# Users whose rows measure the spread of a model's scores for the prior's scale.
SPREAD_SAMPLE_USERS = 1024


def recent_counts(data: Interactions, half_life_days: float | None) -> np.ndarray:
    """Interactions per item, each weighted 0.5 ** (its age before the data's newest event /
    `half_life_days`); plain counts when the half-life is None or the data has no timestamps."""
    if half_life_days is None or data.ts is None or not len(data.ts):
        return np.bincount(data.item, minlength=data.num_items).astype(np.float64)
    age_days = (int(data.ts.max()) - data.ts) / SECONDS_PER_DAY
    weights = np.exp2(-age_days / half_life_days)
    return np.bincount(data.item, weights, minlength=data.num_items)


def popularity_scores(data: Interactions, half_life_days: float | None) -> Tensor:
    """log1p of the decayed counts, plus a small share of all-time popularity so items the decay
    has all but forgotten still rank by it, ties broken towards the lower index (as MostPopular
    does)."""
    recent = np.log1p(recent_counts(data, half_life_days))
    overall = np.log1p(recent_counts(data, None))
    tie_break = np.arange(data.num_items) / (10.0 * max(1, data.num_items))
    scale = 1e-3 / max(1.0, float(overall.max()))
    return torch.from_numpy(recent + scale * (overall - tie_break))


def half_life_label(half_life_days: float | None) -> str:
    return "no decay" if half_life_days is None else f"half-life {half_life_days:g} days"


@dataclass
class HalfLifeChoice:
    """The half-life chosen on val, and what each tried scored there."""

    half_life_days: float | None
    tried: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"half_life_days": self.half_life_days, "val": self.tried}


def candidate_half_lives(data: Interactions) -> tuple[float | None, ...]:
    """The half-lives worth trying on `data`: none at or past its time span, and only no decay
    without timestamps."""
    if data.ts is None or not len(data.ts):
        return (None,)
    span_days = (int(data.ts.max()) - int(data.ts.min())) / SECONDS_PER_DAY
    return tuple(w for w in HALF_LIVES if w is None or w < span_days)


def choose_half_life(
    train: Interactions, evaluate: Callable[[Tensor], float], half_lives=None
) -> HalfLifeChoice:
    """The half-life whose list scores best by `evaluate` (item scores -> a val metric, higher
    is better); ties go to the shorter one."""
    half_lives = half_lives or candidate_half_lives(train)
    best, best_value, tried = HalfLifeChoice(half_lives[0]), -np.inf, {}
    for half_life in half_lives:
        value = evaluate(popularity_scores(train, half_life))
        tried[half_life_label(half_life)] = value
        if value > best_value:  # a NaN (nobody to judge on) never wins: the first one stays
            best_value, best = value, HalfLifeChoice(half_life)
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
    """The recency prior's half-life and weight chosen on val (weight 0: the model alone)."""

    half_life_days: float | None = None
    weight: float = 0.0
    val: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def label(self) -> str:
        return half_life_label(self.half_life_days)

    def to_dict(self) -> dict:
        return {"half_life_days": self.half_life_days, "weight": self.weight, "val": self.val,
                "seconds": self.seconds}  # fmt: skip


def choose_prior(
    compose: Callable[[Tensor | None], Callable[[Tensor], Tensor]],
    positives: Interactions,
    spread: float,
    evaluate_val: Callable[[Callable[[Tensor], Tensor]], float],
    alone: float,
    weights: tuple[float, ...] = PRIOR_WEIGHTS,
) -> tuple[PriorChoice, Tensor | None]:
    """The prior's half-life and weight on val for the scorer `compose(item bias)`: each
    half-life at weight 1, then each weight at the best half-life (a coordinate search: 11
    rankings of val instead of 36, each a blended model's full ranking). Returns the best and
    its item bias (None when the model alone, val `alone`, won)."""
    import time

    started = time.perf_counter()
    best, best_value, best_bias = PriorChoice(val={"model alone": alone}), alone, None

    def trial(half_life: float | None, weight: float) -> None:
        nonlocal best_value, best_bias
        label = f"{half_life_label(half_life)}, weight={weight:g}"
        if label in best.val:
            return
        bias = prior_bias(popularity_scores(positives, half_life), weight, spread)
        value = evaluate_val(compose(bias))
        best.val[label] = value
        if value > best_value:
            best_value, best_bias = value, bias
            best.half_life_days, best.weight = half_life, weight

    half_lives = candidate_half_lives(positives)
    for half_life in half_lives:
        trial(half_life, 1.0)
    leading = max(
        half_lives, key=lambda h: best.val[f"{half_life_label(h)}, weight=1"]
    )  # the best half-life at weight 1, even when the model alone beat it
    for weight in weights:
        if weight != 0.0:
            trial(leading, weight)
    best.seconds = time.perf_counter() - started
    return best, best_bias
