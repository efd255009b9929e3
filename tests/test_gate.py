"""The promotion gate on constructed per-user vectors: every rule, and the paired statistics."""

from __future__ import annotations

import numpy as np
import pytest

from models_src.evaluation import PROTOCOL_VERSION, incompatibility
from models_src.gate import (
    BASELINE,
    CHALLENGER,
    CHAMPION,
    Contender,
    GateThresholds,
    Staleness,
    decide,
    rating_metrics,
)
from models_src.significance import paired_bootstrap, rmse_statistic

USERS = 1000
RNG = np.random.default_rng(7)
# Per-user Recall@10 and NDCG@10 of a reference model: most users low, some high, as in real runs.
BASE = {
    "recall@10": np.clip(RNG.beta(0.8, 3.0, USERS), 0, 1),
    "ndcg@10": np.clip(RNG.beta(0.8, 3.0, USERS), 0, 1),
}


def vectors(shift: float = 0.0, noise: float = 0.0, seed: int = 0, test_shift=None) -> dict:
    """BASE moved by `shift` with per-user noise, on val and test (test_shift for test). Not
    clipped to [0, 1]: clipping noise at 0 would shift the mean of the many near-zero users."""
    rng = np.random.default_rng(seed)
    parts = {}
    for part, moved in (("val", shift), ("test", shift if test_shift is None else test_shift)):
        parts[part] = {
            name: values + moved + rng.normal(0, noise, USERS) if noise or moved else values.copy()
            for name, values in BASE.items()
        }  # fmt: skip
    return parts


def model(name: str, role: str, family: str = "gat-bpr", **shape) -> Contender:
    return Contender(name, role, family, vectors(**shape))


def most_popular(shift: float = -0.08) -> Contender:
    return model("most-popular", BASELINE, "most-popular", shift=shift, noise=0.05, seed=11)


def test_significant_win_promotes_with_the_rule_interval_and_p_value():
    challenger = model("challenger v2", CHALLENGER, shift=0.03, noise=0.05, seed=1)
    verdict = decide(challenger, [most_popular()], model("champion v1", CHAMPION))
    assert verdict.promote and verdict.serve == "challenger v2"
    assert verdict.rule == "significantly better than the champion"
    better = next(r for r in verdict.compared if r["check"] == "significantly better")
    assert better["low"] > 0 and better["p_value"] < 0.05
    assert better["difference"] == pytest.approx(
        challenger.value("val", _recall()) - BASE["recall@10"].mean(), abs=1e-9
    )
    assert any(r.startswith("ok: significantly better") and "95 % CI" in r for r in verdict.reasons)


def _recall():
    from models_src.gate import ranking_metrics

    return ranking_metrics(10)[0]


def test_a_tie_keeps_the_champion():
    verdict = decide(
        model("challenger v2", CHALLENGER), [most_popular()], model("champion v1", CHAMPION)
    )
    assert not verdict.promote and verdict.serve == "champion v1"
    assert verdict.rule == "no contender beat the champion; it keeps serving"


def test_a_noise_level_win_does_not_promote():
    challenger = model("challenger v2", CHALLENGER, shift=0.002, noise=0.08, seed=3)
    assert challenger.value("val", _recall()) > BASE["recall@10"].mean()  # it is ahead on the mean
    verdict = decide(challenger, [most_popular()], model("champion v1", CHAMPION))
    assert not verdict.promote
    assert next(r for r in verdict.compared if r["check"] == "significantly better")["low"] < 0


def test_a_significant_but_tiny_win_does_not_promote():
    """Two retrainings of one model differ a little on a fixed val set, and a paired test over
    a thousand users calls that significant: it must also be large enough to matter."""
    challenger = model("challenger v2", CHALLENGER, shift=0.002, noise=0.001, seed=14)
    champion = model("champion v1", CHAMPION)
    verdict = decide(challenger, [most_popular()], champion)
    better = next(r for r in verdict.compared if r["check"] == "significantly better")
    assert better["low"] > 0 and better["p_value"] < 0.01  # significant...
    assert not verdict.promote  # ...but below 2 % of the champion's Recall@10
    assert better["needs"] == f"lower bound > {0.02 * BASE['recall@10'].mean():+.4f}"
    assert decide(challenger, [most_popular()], champion, GateThresholds(min_gain=0.0)).promote


def test_a_champion_below_tonights_baseline_is_replaced_by_it_unless_test_disagrees():
    champion = model("champion v1", CHAMPION, "gat-bpr")
    als = model("als", BASELINE, "als", shift=0.05, noise=0.02, seed=15)
    verdict = decide(model("challenger v2", CHALLENGER), [most_popular(), als], champion)
    assert verdict.serve == "als" and verdict.rule == "significantly better than the champion"
    assert verdict.warnings  # a baseline serves
    # Val says ALS, test says the champion: the champion stays.
    split = model("als", BASELINE, "als", shift=0.05, noise=0.02, seed=15, test_shift=-0.2)
    verdict = decide(model("challenger v2", CHALLENGER), [most_popular(), split], champion)
    assert verdict.serve == "champion v1"
    # A baseline only a hair better (significant, but below the 2 % margin) changes nothing.
    hair = model("als", BASELINE, "als", shift=0.002, noise=0.001, seed=17)
    verdict = decide(model("challenger v2", CHALLENGER), [hair], champion)
    assert verdict.serve == "champion v1" and verdict.rule.startswith("no contender beat")


def test_a_stale_champion_gives_way_to_a_non_inferior_challenger():
    challenger = model("challenger v2", CHALLENGER, shift=0.0, noise=0.03, seed=4)
    champion = model("champion v1", CHAMPION)
    fresh = decide(challenger, [most_popular()], champion, staleness=Staleness(1.0, 0.05))
    assert not fresh.promote
    stale = decide(challenger, [most_popular()], champion, staleness=Staleness(1.0, 0.35))
    assert stale.promote and stale.rule == "non-inferior to a stale champion"
    assert any("tonight has 35% more interactions" in r for r in stale.reasons)
    old = decide(challenger, [most_popular()], champion, staleness=Staleness(9.0, 0.0))
    assert old.promote and any("9.0 days older" in r for r in old.reasons)
    # Stale or not, a clearly worse challenger is not non-inferior.
    worse = model("challenger v3", CHALLENGER, shift=-0.04, noise=0.03, seed=5)
    assert not decide(worse, [most_popular()], champion, staleness=Staleness(30.0, 1.0)).promote


def test_a_significant_test_regression_rejects_a_val_winner():
    challenger = model(
        "challenger v2", CHALLENGER, shift=0.03, noise=0.05, seed=1, test_shift=-0.05
    )
    verdict = decide(challenger, [most_popular()], model("champion v1", CHAMPION))
    assert not verdict.promote and verdict.serve == "champion v1"
    failed = [r for r in verdict.compared if not r["passed"] and r["contender"] == challenger.name]
    assert failed and all(r["check"] == "test confirms" for r in failed)


def test_the_cold_user_guardrail_rejects_a_win_bought_from_cold_users():
    cold = np.zeros(USERS, dtype=bool)
    cold[:300] = True
    challenger = model("challenger v2", CHALLENGER, shift=0.12, noise=0.02, seed=6)
    for part in ("val", "test"):
        for name in BASE:
            challenger.vectors[part][name][cold] = 0.0  # cold users get nothing right
    verdict = decide(challenger, [most_popular(-0.5)], model("champion v1", CHAMPION), cold=cold)
    assert not verdict.promote
    checks = [r for r in verdict.compared if r["contender"] == challenger.name]
    assert checks[-1]["check"] == "cold-user guardrail" and not checks[-1]["passed"]
    assert all(r["passed"] for r in checks[:-1])
    off = GateThresholds(cold_user_guardrail=False)
    assert decide(
        challenger, [most_popular(-0.5)], model("champion v1", CHAMPION), off, cold=cold
    ).promote


def test_a_baseline_that_beats_the_challenger_serves_and_is_flagged():
    als = model("als", BASELINE, "als", shift=0.05, noise=0.03, seed=8)
    challenger = model("challenger v1", CHALLENGER, shift=0.0, noise=0.03, seed=9)
    verdict = decide(challenger, [most_popular(), als])
    assert verdict.serve == "als" and verdict.serve_role == BASELINE and verdict.promote
    assert verdict.warnings == [
        "the als baseline serves, not a trained model: challenger v1 did not pass the floor or did"
        " not win on val"
    ]
    # Against a champion too: the challenger beats it, but it is significantly below ALS, which
    # beats the champion, so ALS takes over.
    champion = model("champion v0", CHAMPION, shift=-0.03, noise=0.03, seed=10)
    verdict = decide(challenger, [most_popular(), als], champion)
    assert verdict.serve == "als" and verdict.warnings


def test_a_baseline_ahead_by_noise_does_not_displace_the_trained_model():
    # ALS ahead on val by less than the per-user noise lets the paired interval resolve
    als = model("als", BASELINE, "als", shift=0.006, noise=0.1, seed=8, test_shift=0.0)
    challenger = model("challenger v1", CHALLENGER, shift=0.0, noise=0.1, seed=9)
    assert als.value("val", _recall()) > challenger.value("val", _recall())
    verdict = decide(challenger, [most_popular(), als])
    assert verdict.serve == "challenger v1" and not verdict.warnings
    assert any("serves before als" in r and "prefer_trained" in r for r in verdict.reasons)
    # The same on a night with a stale champion: the challenger, not ALS, replaces it.
    champion = model("champion v0", CHAMPION, shift=-0.001, noise=0.1, seed=10)
    verdict = decide(challenger, [als], champion, staleness=Staleness(age_days=30.0))
    assert verdict.serve == "challenger v1"
    # Without the preference the better mean wins, as before.
    verdict = decide(
        challenger, [most_popular(), als], thresholds=GateThresholds(prefer_trained=False)
    )
    assert verdict.serve == "als" and verdict.warnings


def test_first_night_with_nothing_trained_passing_serves_most_popular_flagged():
    broken = model("challenger v1", CHALLENGER)
    broken.vectors["val"]["recall@10"] = np.full(USERS, np.nan)
    verdict = decide(broken, [most_popular()])
    assert verdict.serve == "most-popular" and verdict.promote
    assert "evaluation is NaN or empty (val recall@10)" in verdict.reasons[0]
    assert "tonight's model" not in verdict.warnings[0] and "most-popular" in verdict.warnings[0]
    weak = model("challenger v1", CHALLENGER, shift=-0.2, noise=0.02, seed=2)
    verdict = decide(weak, [most_popular()])
    assert verdict.serve == "most-popular" and verdict.warnings
    assert verdict.rule == "first night: the best contender on val that passes the floor"


def test_first_night_a_challenger_that_passes_and_leads_serves_without_warning():
    challenger = model("challenger v1", CHALLENGER, shift=0.01, noise=0.02, seed=12)
    verdict = decide(challenger, [most_popular()])
    assert verdict.serve == "challenger v1" and not verdict.warnings


def rating_model(name: str, role: str, error_scale: float, recall_shift: float, seed: int):
    rng = np.random.default_rng(seed)
    parts = vectors(shift=recall_shift, noise=0.02, seed=seed)
    for part in parts:
        parts[part]["squared_error"] = (rng.normal(0, 1, 5000) * error_scale) ** 2
    family = "bias" if role == BASELINE else "rating"
    return Contender(name, role, family, parts)


def test_a_rating_model_is_promoted_on_rmse_even_with_worse_lists():
    challenger = rating_model("challenger v2", CHALLENGER, 0.85, -0.1, seed=1)
    champion = rating_model("champion v1", CHAMPION, 0.95, 0.0, seed=2)
    bias = rating_model("bias", BASELINE, 1.0, 0.0, seed=3)
    verdict = decide(challenger, [bias], champion, metrics=rating_metrics())
    assert verdict.promote and verdict.serve == "challenger v2"
    assert {r["metric"] for r in verdict.compared} == {"val rmse", "test rmse"}
    worse = rating_model("challenger v3", CHALLENGER, 1.0, 0.2, seed=4)
    assert not decide(worse, [bias], champion, metrics=rating_metrics()).promote


def test_a_champion_under_other_settings_is_judged_by_first_night_rules():
    challenger = model("challenger v2", CHALLENGER, shift=-0.01, noise=0.02, seed=13)
    why = "champion v1 cannot be compared: its split was ... tonight's is ..."
    verdict = decide(challenger, [most_popular()], None, incomparable=why)
    assert verdict.serve == "challenger v2"  # a comparable champion v1 would have stayed
    assert f"first-night rules: {why}" in verdict.reasons


def record(**changes) -> dict:
    base = {
        "protocol": PROTOCOL_VERSION,
        "split": {"method": "hash", "val_ratio": 0.15, "test_ratio": 0.15, "salt": "encore"},
        "like_threshold": None,
        "k": 10,
    }
    return {**base, **changes}


def test_settings_that_differ_make_a_champion_incomparable():
    tonight = record()
    assert incompatibility(record(), tonight) is None
    assert "no evaluation record" in incompatibility(None, tonight)
    assert "protocol 1" in incompatibility(record(protocol=1), tonight)
    other_salt = record(split={**tonight["split"], "salt": "encore-2026"})
    assert "its split was" in incompatibility(other_salt, tonight)
    assert "like threshold" in incompatibility(record(like_threshold=4.0), tonight)
    moved_back = incompatibility(record(train_until=200), record(train_until=100))
    assert "after tonight's val cut" in moved_back
    assert incompatibility(record(train_until=100), record(train_until=200)) is None


def test_paired_bootstrap_is_reproducible_and_honest():
    a = np.asarray(BASE["recall@10"])
    same = paired_bootstrap(a, a.copy())
    assert same.difference == 0 and same.low == 0 and same.high == 0 and same.p_value == 1
    shifted = paired_bootstrap(a + 0.01, a)
    assert shifted.low == pytest.approx(0.01) and shifted.p_value < 0.01
    noisy = np.clip(a + np.random.default_rng(1).normal(0, 0.2, USERS), 0, 1)
    first, again = paired_bootstrap(noisy, a), paired_bootstrap(noisy, a)
    assert first == again and first.low < first.difference < first.high
    assert paired_bootstrap(noisy, a, seed=5) != first  # the seed is what makes it repeatable
    errors = np.random.default_rng(2).random(500)
    rmse = paired_bootstrap(errors, errors * 0.81, rmse_statistic)
    assert rmse.difference == pytest.approx(np.sqrt(errors.mean()) * (1 - 0.9))
    nan = paired_bootstrap(np.array([np.nan, 1.0]), np.array([0.5, 0.5]))
    assert nan.units == 1
    with pytest.raises(ValueError, match="differ in length"):
        paired_bootstrap(a, a[:-1])


def _bootstrap_one_pair_at_a_time(a, b, statistic, resamples, seed, chunk):
    """The paired bootstrap of one pair alone, chunk by chunk: what `Resamples` must equal."""
    rng = np.random.default_rng(seed)
    n, per_chunk, draws = len(a), max(1, chunk // len(a)), []
    for start in range(0, resamples, per_chunk):
        index = rng.integers(0, n, size=(min(per_chunk, resamples - start), n))
        draws.append(statistic(a, index) - statistic(b, index))
    return np.concatenate(draws)


def test_kept_resamples_give_the_numbers_of_a_fresh_bootstrap(monkeypatch):
    import models_src.significance as significance

    monkeypatch.setattr(significance, "_CHUNK_DRAWS", 3_000)  # several chunks of draws
    rng = np.random.default_rng(3)
    contenders = [rng.random(USERS) for _ in range(4)]
    kept = significance.Resamples()
    kept.statistics([(v, significance.mean_statistic) for v in contenders[1:]], 300, 0)
    for a, b in [(contenders[0], contenders[1]), (contenders[2], contenders[3])]:
        shared = paired_bootstrap(a, b, resamples=300, kept=kept)
        assert shared == paired_bootstrap(a, b, resamples=300)
        reference = _bootstrap_one_pair_at_a_time(a, b, significance.mean_statistic, 300, 0, 3_000)
        tail = (1.0 - 0.95) / 2.0
        low, high = np.quantile(reference, [tail, 1.0 - tail])
        assert (shared.low, shared.high) == (float(low), float(high))
    # kept by content: a vector under another statistic, count or seed is resampled again
    rmse = paired_bootstrap(contenders[1], contenders[2], rmse_statistic, resamples=300, kept=kept)
    assert rmse == paired_bootstrap(contenders[1], contenders[2], rmse_statistic, resamples=300)
    assert paired_bootstrap(contenders[0], contenders[1], resamples=300, seed=1, kept=kept) == (
        paired_bootstrap(contenders[0], contenders[1], resamples=300, seed=1)
    )
