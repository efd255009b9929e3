"""The promotion gate: should tonight's challenger replace the champion?

A pure function of metric tables, so every verdict can be unit-tested and explained. Both models
are scored now on tonight's val and test splits (the stable splits keep that fair: the champion
never trained on them). The challenger is promoted when:
- every evaluation it has is a finite number (NaN or a missing metric rejects);
- on each of val/test x Recall@K/NDCG@K it is at least the champion's value minus `tolerance`;
- on the primary metric (test Recall@K) it is at least the champion's plus `min_gain`;
- for the rating model, its test RMSE is at most the champion's plus `rmse_tolerance`;
- it beats the trivial baseline of its own task (the floor, which alone decides on the first
  night, when there is no champion): a ranking model MostPopular's test Recall@K by
  `popularity_margin`; a rating model the training mean's test RMSE by `baseline_rmse_margin`.

Why the rating model's floor is RMSE and not MostPopular: it is trained to predict how much a
user will like an item, and its top-K ranks every unseen item by predicted rating, which favours
rarely-rated, well-liked items. On the built-in sample that ranking is far below MostPopular
(test Recall@10 0.028 vs 0.205 after early stopping), so a popularity floor would never let a
rating model serve. Its ranking against MostPopular is still reported,
and against the champion it is still required (`tolerance`), so a rating model whose lists got
worse does not pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

SPLITS = ("val", "test")


@dataclass(frozen=True)
class GateThresholds:
    tolerance: float = 0.005  # how much worse than the champion a secondary metric may be
    min_gain: float = 0.0  # how much better the primary metric must be (0: ties promote)
    rmse_tolerance: float = 0.005
    popularity_margin: float = 0.01
    baseline_rmse_margin: float = 0.0  # rating model: how far below the mean predictor's RMSE
    k: int = 10

    @property
    def primary(self) -> str:
        return f"recall@{self.k}"


@dataclass
class Verdict:
    promote: bool
    reasons: list[str] = field(default_factory=list)
    compared: list[dict] = field(default_factory=list)  # one row per check, for the log


def _value(metrics: dict | None, split: str, name: str) -> float:
    try:
        value = float(metrics[split][name])
    except (KeyError, TypeError, ValueError):
        return math.nan
    return value


def _check(verdict: Verdict, name: str, value: float, bound: float, ok: bool, says: str) -> None:
    verdict.compared.append({"check": name, "value": value, "bound": bound, "passed": ok})
    if not ok:
        verdict.promote = False
    verdict.reasons.append(("ok: " if ok else "REJECT: ") + says)


def _rating_floor(verdict: Verdict, challenger: dict, baseline: dict, t: GateThresholds) -> None:
    """A rating model must predict ratings better than the training mean does."""
    rmse, mean_rmse = _value(challenger, "test", "rmse"), _value(baseline, "test", "rmse")
    bound = mean_rmse - t.baseline_rmse_margin
    _check(
        verdict,
        "beats the mean predictor",
        rmse,
        bound,
        math.isfinite(bound) and rmse <= bound,
        f"test RMSE {rmse:.4f} vs training mean {mean_rmse:.4f} - {t.baseline_rmse_margin:g}",
    )
    primary, popular = _value(challenger, "test", t.primary), _value(baseline, "test", t.primary)
    verdict.reasons.append(
        f"note: test {t.primary} {primary:.4f} vs MostPopular {popular:.4f} (reported, not"
        " required of a rating model)"
    )


def decide(
    challenger: dict,
    champion: dict | None,
    popularity: dict,
    thresholds: GateThresholds | None = None,
    rating_model: bool = False,
) -> Verdict:
    """`challenger`, `champion` and `popularity` map split -> metric -> value; for a rating
    model `popularity` also holds the training mean's `rmse` (the baseline predictor)."""
    t = thresholds or GateThresholds()
    ranking_metrics = (f"recall@{t.k}", f"ndcg@{t.k}")
    needed = [(s, m) for s in SPLITS for m in ranking_metrics]
    if rating_model:
        needed.append(("test", "rmse"))
    verdict = Verdict(promote=True)
    missing = [f"{s} {m}" for s, m in needed if not math.isfinite(_value(challenger, s, m))]
    if missing:
        verdict.promote = False
        verdict.reasons.append(
            f"REJECT: challenger evaluation is NaN or empty: {', '.join(missing)}"
        )
        return verdict
    primary = _value(challenger, "test", t.primary)
    if rating_model:
        _rating_floor(verdict, challenger, popularity, t)
    else:
        floor = _value(popularity, "test", t.primary) + t.popularity_margin
        _check(
            verdict,
            "beats popularity",
            primary,
            floor,
            primary >= floor,
            f"test {t.primary} {primary:.4f} vs MostPopular + {t.popularity_margin:g}"
            f" = {floor:.4f}",
        )
    if champion is None:
        verdict.reasons.append("first night: no champion, the baseline floor alone decides")
        return verdict
    for split in SPLITS:
        for metric in ranking_metrics:
            new, old = _value(challenger, split, metric), _value(champion, split, metric)
            if not math.isfinite(old):
                verdict.reasons.append(f"note: champion has no {split} {metric}; not compared")
                continue
            bound = old - t.tolerance
            _check(
                verdict,
                f"{split} {metric} within tolerance",
                new,
                bound,
                new >= bound,
                f"{split} {metric} {new:.4f} vs champion {old:.4f} - {t.tolerance:g}",
            )
    old_primary = _value(champion, "test", t.primary)
    if math.isfinite(old_primary):
        bound = old_primary + t.min_gain
        _check(
            verdict,
            "primary gain",
            primary,
            bound,
            primary >= bound,
            f"test {t.primary} {primary:.4f} vs champion {old_primary:.4f} + {t.min_gain:g}",
        )
    if rating_model:
        new_rmse, old_rmse = _value(challenger, "test", "rmse"), _value(champion, "test", "rmse")
        if math.isfinite(old_rmse):
            bound = old_rmse + t.rmse_tolerance
            _check(
                verdict,
                "rmse not worse",
                new_rmse,
                bound,
                new_rmse <= bound,
                f"test RMSE {new_rmse:.4f} vs champion {old_rmse:.4f} + {t.rmse_tolerance:g}",
            )
    return verdict
