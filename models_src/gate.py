"""The promotion gate: which model serves tonight? A pure function of per-user metric vectors.

Contenders, all evaluated under one protocol (models_src/evaluation.py) on tonight's split:
tonight's challenger (GAT-BPR or the rating model), tonight's baselines (MostPopular and ALS for
lists, the bias baseline for ratings; models_src/baselines.py) and the champion, when it was
evaluated under the same split settings and protocol version. Every comparison is paired: two
models on the same users (ratings), resampled together (models_src/significance.py), so the
verdict rests on an interval of the difference, not on two means that noise moves apart.

Rules, in the order they apply:
1. A contender whose evaluation is NaN or empty is out.
2. Baseline floor: a contender significantly worse than tonight's best baseline on any gated val
   metric (the interval of the difference entirely below zero) does not serve.
3. With a comparable champion, a contender is promotable when, against the champion,
   - it is non-inferior on every gated val metric: the interval's lower bound is above
     -tolerance x the champion's value (relative, so one default holds for Recall@10 of 0.05 on
     a sparse catalogue and of 0.25 on MovieLens);
   - and it is significantly better on the primary val metric by a margin that matters (the
     lower bound above `min_gain` x the champion's value: two retrainings of one model on the
     same data differ a little on a fixed val set, and a paired test over a thousand users calls
     that significant; bench/results/gate.md), or the champion is stale (its data is
     `max_champion_age_days` older than tonight's, or tonight has `max_data_growth` more
     interactions): then non-inferior is enough, so a fresher model that knows tonight's users
     serves;
   - test shows no significant regression on any gated metric (test confirms, never selects);
   - (ranking) cold users' val Recall@K shows no significant regression, when the guardrail is on.
   The best promotable contender by val primary mean is promoted (with `prefer_trained`, the
   challenger whenever it is promotable); otherwise the champion keeps serving. Tonight's
   baselines are contenders like the challenger: a champion that has fallen below a simple
   model is replaced by it under these same rules (and when val and test disagree about it, the
   champion stays).
4. Without a comparable champion (the first night, or a champion evaluated under other split
   settings or another protocol version: first-night rules), the best contender by val primary
   mean among those that pass the floor and show no significant test regression against the best
   baseline serves (with `prefer_trained`, the challenger whenever it is among them). The best
   baseline always qualifies, so users always get something.
`prefer_trained` (on by default): a baseline serves only when the trained model cannot, i.e. when
a baseline is significantly better on val (the floor), test regresses, or it is not promotable
against the champion. A baseline ahead by a val mean that the paired interval cannot tell from
noise does not displace the model: on a forward holdout's few days the ranks of close contenders
flip from night to night, and the trained model is the one that carries what users like.
Whenever a baseline serves, the verdict carries a warning saying why the challenger does not.
Ties in the val mean go to the earlier contender: the challenger before the baselines.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from models_src.baselines import BASELINE_FAMILIES, RATING_BASELINE
from models_src.significance import (
    Comparison,
    Resamples,
    mean_statistic,
    paired_bootstrap,
    rmse_statistic,
)

SPLITS = ("val", "test")
CHALLENGER, CHAMPION, BASELINE = "challenger", "champion", "baseline"
NOT_WORSE, NON_INFERIOR, BETTER = "not worse", "non-inferior", "better"
# The rules a verdict can end on (logged with it, shown by `encore models`).
BETTER_RULE = "significantly better than the champion"
STALE_RULE = "non-inferior to a stale champion"
KEPT_RULE = "no contender beat the champion; it keeps serving"
FIRST_NIGHT_RULE = "first night: the best contender on val that passes the floor"


def _passes(test: str, c: Comparison, higher_is_better: bool, margin: float) -> tuple[bool, str]:
    """Whether the interval of a - b passes `test`, and the condition in words (metric units)."""
    if higher_is_better:
        conditions = {
            NOT_WORSE: (c.high >= 0, "upper bound >= 0"),
            NON_INFERIOR: (c.low > -margin, f"lower bound > {-margin:+.4f}"),
            BETTER: (c.low > margin, f"lower bound > {margin:+.4f}"),
        }
    else:
        conditions = {
            NOT_WORSE: (c.low <= 0, "lower bound <= 0"),
            NON_INFERIOR: (c.high < margin, f"upper bound < {margin:+.4f}"),
            BETTER: (c.high < -margin, f"upper bound < {-margin:+.4f}"),
        }
    ok, needs = conditions[test]
    return bool(ok), needs


@dataclass(frozen=True)
class GateThresholds:
    k: int = 10
    confidence: float = 0.95  # two-sided interval of every paired difference
    tolerance: float = 0.05  # non-inferiority margin on ranking metrics, share of the champion's
    rmse_tolerance: float = 0.01  # non-inferiority margin on RMSE, share of the champion's
    min_gain: float = 0.02  # superiority: the lower bound above this share of the champion's
    rmse_min_gain: float = 0.005  # the same, on RMSE
    max_champion_age_days: float = 7.0
    max_data_growth: float = 0.2
    cold_user_guardrail: bool = True
    prefer_trained: bool = True  # the challenger before a baseline that is not significantly better
    resamples: int = 1000
    seed: int = 0


@dataclass(frozen=True)
class GatedMetric:
    name: str  # as reported: "recall@10", "rmse"
    vector: str  # the per-unit vector it is computed from
    higher_is_better: bool
    statistic: Callable[[np.ndarray, np.ndarray], np.ndarray] = mean_statistic


def ranking_metrics(k: int) -> tuple[GatedMetric, ...]:
    """Recall@K (primary) and NDCG@K over users."""
    return (
        GatedMetric(f"recall@{k}", f"recall@{k}", True),
        GatedMetric(f"ndcg@{k}", f"ndcg@{k}", True),
    )


def rating_metrics() -> tuple[GatedMetric, ...]:
    """RMSE over ratings (from per-rating squared errors)."""
    return (GatedMetric("rmse", "squared_error", False, rmse_statistic),)


@dataclass
class Contender:
    """One model's per-unit vectors: part -> vector name -> values, aligned across contenders."""

    name: str  # how the verdict names it: "challenger v12", "champion v9", "als"
    role: str  # challenger | champion | baseline
    family: str  # gat-bpr, rating, als, most-popular, bias
    vectors: dict[str, dict[str, np.ndarray]]

    def value(self, part: str, metric: GatedMetric) -> float:
        values = self.vectors.get(part, {}).get(metric.vector)
        if values is None or len(values) == 0:
            return math.nan
        kept = values[~np.isnan(values)]
        if len(kept) == 0:
            return math.nan
        return float(metric.statistic(kept, np.arange(len(kept))))


@dataclass(frozen=True)
class Staleness:
    """How far tonight's data is ahead of the champion's (None when unknown)."""

    age_days: float | None = None
    growth: float | None = None

    def stale(self, t: GateThresholds) -> str | None:
        """Why the champion is stale, or None."""
        if self.age_days is not None and self.age_days >= t.max_champion_age_days:
            return f"its data is {self.age_days:.1f} days older than tonight's"
        if self.growth is not None and self.growth >= t.max_data_growth:
            return f"tonight has {self.growth:.0%} more interactions than its snapshot"
        return None


@dataclass
class Verdict:
    serve: str | None  # name of the contender that serves tonight (None: nothing can)
    serve_role: str | None = None
    serve_family: str | None = None
    promote: bool = False  # tonight's serving model is not the champion of yesterday
    rule: str = ""
    reasons: list[str] = field(default_factory=list)
    compared: list[dict] = field(default_factory=list)  # every paired comparison, for the log
    warnings: list[str] = field(default_factory=list)


class _Judge:
    """The comparisons of one night, remembered so each pair is resampled once."""

    def __init__(self, metrics: tuple[GatedMetric, ...], t: GateThresholds) -> None:
        self.metrics, self.t = metrics, t
        self.primary = metrics[0]
        self.verdict = Verdict(serve=None)
        self._cache: dict[tuple, Comparison] = {}
        self._resamples = Resamples()

    def compare(
        self, a: Contender, b: Contender, part: str, metric: GatedMetric, mask=None
    ) -> Comparison:
        """a's statistic minus b's, in the metric's own units (for RMSE, negative is better)."""
        key = (a.name, b.name, part, metric.name, mask is not None)
        if key not in self._cache:
            va, vb = a.vectors[part][metric.vector], b.vectors[part][metric.vector]
            if mask is not None:
                va, vb = va[mask], vb[mask]
            self._cache[key] = paired_bootstrap(
                va,
                vb,
                metric.statistic,
                self.t.confidence,
                self.t.resamples,
                self.t.seed,
                self._resamples,
            )
        return self._cache[key]

    def check(
        self,
        check: str,
        test: str,
        a: Contender,
        b: Contender,
        part: str,
        metric: GatedMetric,
        margin: float = 0.0,
        mask=None,
        label: str | None = None,
    ) -> bool:
        """One paired comparison of a against b, logged with its interval, p-value and verdict.

        `test`: NOT_WORSE (the interval reaches the no-difference line or beyond, in a's favour),
        NON_INFERIOR (the interval stays within `margin` of no difference on a's bad side) or
        BETTER (the interval is past `margin` on a's good side). A comparison with no unit (no
        cold user, say) passes: there is nothing to hold against a."""
        c = self.compare(a, b, part, metric, mask)
        passed, needs = _passes(test, c, metric.higher_is_better, margin)
        ok = True if c.units == 0 else passed
        what = label or f"{part} {metric.name}"
        self.verdict.compared.append(
            {
                "check": check,
                "contender": a.name,
                "against": b.name,
                "part": part,
                "metric": what,
                "difference": c.difference,
                "low": c.low,
                "high": c.high,
                "p_value": c.p_value,
                "units": c.units,
                "needs": needs,
                "passed": ok,
            }
        )
        better = "higher" if metric.higher_is_better else "lower"
        self.verdict.reasons.append(
            f"{'ok' if ok else 'NO'}: {check}: {a.name} - {b.name}, {what} ({better} is better):"
            f" {c.describe()}; needs {needs}"
            if c.units
            else f"ok: {check}: {a.name} vs {b.name}, {what}: no unit to compare"
        )
        return ok

    def margin(self, champion: Contender, metric: GatedMetric) -> float:
        """How much worse than the champion is still non-inferior (metric units)."""
        tolerance = self.t.tolerance if metric.higher_is_better else self.t.rmse_tolerance
        return tolerance * abs(champion.value("val", metric))

    def gain(self, champion: Contender, metric: GatedMetric) -> float:
        """How much better than the champion is better enough to replace it (metric units)."""
        share = self.t.min_gain if metric.higher_is_better else self.t.rmse_min_gain
        return share * abs(champion.value("val", metric))

    # --- the rules -----------------------------------------------------------------------

    def finite(self, c: Contender) -> bool:
        missing = [
            f"{part} {m.name}"
            for part in SPLITS
            for m in self.metrics
            if not math.isfinite(c.value(part, m))
        ]
        if missing:
            self.verdict.reasons.append(
                f"NO: {c.name} is out: its evaluation is NaN or empty ({', '.join(missing)})"
            )
        return not missing

    def passes_floor(self, c: Contender, best: Contender | None) -> bool:
        """Not significantly worse than the best baseline on any gated val metric."""
        if best is None or c is best:
            return True
        return all(
            [self.check("baseline floor", NOT_WORSE, c, best, "val", m) for m in self.metrics]
        )

    def no_test_regression(self, c: Contender, against: Contender) -> bool:
        return all(
            [self.check("test confirms", NOT_WORSE, c, against, "test", m) for m in self.metrics]
        )

    def promotable(
        self, c: Contender, champion: Contender, stale: str | None, cold: np.ndarray | None
    ) -> str | None:
        """The rule under which `c` may replace the champion, or None."""
        non_inferior = [
            self.check(
                "non-inferior", NON_INFERIOR, c, champion, "val", m, self.margin(champion, m)
            )
            for m in self.metrics
        ]
        if not all(non_inferior):
            return None
        better = self.check(
            "significantly better",
            BETTER,
            c,
            champion,
            "val",
            self.primary,
            self.gain(champion, self.primary),
        )
        if not better and stale is None:
            return None
        if not better:
            self.verdict.reasons.append(f"ok: champion is stale ({stale}): non-inferior suffices")
        if not self.no_test_regression(c, champion):
            return None
        guarded = (
            cold is None
            or not self.t.cold_user_guardrail
            or self.check(
                "cold-user guardrail",
                NOT_WORSE,
                c,
                champion,
                "val",
                self.primary,
                mask=cold,
                label=f"cold users' val {self.primary.name}",
            )
        )
        if not guarded:
            return None
        return BETTER_RULE if better else STALE_RULE

    def winner(self, contenders: list[Contender]) -> Contender | None:
        """Who serves among contenders that all qualify: the challenger when it is one of them
        and `prefer_trained` is on, else the best by val primary mean."""
        challenger = next((c for c in contenders if c.role == CHALLENGER), None)
        if challenger is None or not self.t.prefer_trained:
            return self.best(contenders)
        best = self.best(contenders)
        if best is not challenger:
            self.verdict.reasons.append(
                f"{challenger.name} serves before {best.name}, ahead on val by a mean the"
                " paired interval cannot tell from noise (prefer_trained)"
            )
        return challenger

    def best(self, contenders: list[Contender]) -> Contender | None:
        """Highest val primary (lowest, for RMSE); ties go to the earlier contender."""
        if not contenders:
            return None
        sign = 1.0 if self.primary.higher_is_better else -1.0
        return max(
            enumerate(contenders),
            key=lambda pair: (sign * pair[1].value("val", self.primary), -pair[0]),
        )[1]

    def serve(self, c: Contender, rule: str) -> Verdict:
        v = self.verdict
        v.serve, v.serve_role, v.serve_family, v.rule = c.name, c.role, c.family, rule
        v.promote = c.role != CHAMPION
        v.reasons.append(f"=> {c.name} serves: {rule}")
        return v


def decide(
    challenger: Contender | None,
    baselines: list[Contender],
    champion: Contender | None = None,
    thresholds: GateThresholds | None = None,
    metrics: tuple[GatedMetric, ...] | None = None,
    staleness: Staleness | None = None,
    cold: np.ndarray | None = None,
    incomparable: str | None = None,
) -> Verdict:
    """Which contender serves tonight, and why (see the module docstring for the rules).

    `cold` is the val cold-user mask (ranking only); `incomparable` says why a champion that
    exists cannot be compared (then first-night rules apply, and `champion` must be None).
    """
    t = thresholds or GateThresholds()
    judge = _Judge(metrics or ranking_metrics(t.k), t)
    contenders = [c for c in [challenger, *baselines] if c is not None and judge.finite(c)]
    usable_baselines = [c for c in contenders if c.role == BASELINE]
    best_baseline = judge.best(usable_baselines)
    if best_baseline is not None:
        judge.verdict.reasons.append(
            f"best baseline on val {judge.primary.name}: {best_baseline.name}"
            f" ({best_baseline.value('val', judge.primary):.4f})"
        )
    floored = [c for c in contenders if judge.passes_floor(c, best_baseline)]
    if champion is not None and judge.finite(champion):
        verdict = _against_champion(judge, floored, champion, staleness, cold, t)
    else:
        if incomparable:
            judge.verdict.reasons.append(f"first-night rules: {incomparable}")
        verdict = _first_night(judge, floored, best_baseline)
    _warn_when_a_baseline_serves(verdict, challenger)
    return verdict


def _against_champion(
    judge: _Judge,
    floored: list[Contender],
    champion: Contender,
    staleness: Staleness | None,
    cold: np.ndarray | None,
    t: GateThresholds,
) -> Verdict:
    stale = (staleness or Staleness()).stale(t)
    rules = {c.name: judge.promotable(c, champion, stale, cold) for c in floored}
    promotable = [c for c in floored if rules[c.name]]
    if promotable:
        winner = judge.winner(promotable)
        return judge.serve(winner, rules[winner.name])
    return judge.serve(champion, KEPT_RULE)


def _first_night(
    judge: _Judge, floored: list[Contender], best_baseline: Contender | None
) -> Verdict:
    confirmed = [
        c
        for c in floored
        if best_baseline is None or c is best_baseline or judge.no_test_regression(c, best_baseline)
    ]
    winner = judge.winner(confirmed)
    if winner is None:
        judge.verdict.reasons.append("nothing can serve: no contender has a finite evaluation")
        judge.verdict.rule = "nothing to serve"
        return judge.verdict
    return judge.serve(winner, FIRST_NIGHT_RULE)


def _warn_when_a_baseline_serves(verdict: Verdict, challenger: Contender | None) -> None:
    if verdict.serve_family not in (*BASELINE_FAMILIES, RATING_BASELINE):
        return
    if challenger is None:
        why = "tonight's model has no evaluation"
    elif verdict.serve_role == CHAMPION:
        why = f"it is the champion, and {challenger.name} did not replace it"
    else:
        why = f"{challenger.name} did not pass the floor or did not win on val"
    verdict.warnings.append(
        f"the {verdict.serve_family} baseline serves, not a trained model: {why}"
    )
