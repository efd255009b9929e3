"""The promotion gate on constructed metric tables."""

from __future__ import annotations

import math

from models_src.gate import GateThresholds, decide

POPULAR = {
    "val": {"recall@10": 0.10, "ndcg@10": 0.10},
    "test": {"recall@10": 0.10, "ndcg@10": 0.10},
}


def table(recall: float, ndcg: float | None = None, rmse: float | None = None) -> dict:
    ndcg = recall if ndcg is None else ndcg
    row = {"recall@10": recall, "ndcg@10": ndcg}
    if rmse is not None:
        row["rmse"] = rmse
    return {"val": dict(row), "test": dict(row)}


def test_better_challenger_is_promoted():
    verdict = decide(table(0.25), table(0.22), POPULAR)
    assert verdict.promote
    assert all(row["passed"] for row in verdict.compared)


def test_worse_challenger_is_rejected_with_the_reason():
    verdict = decide(table(0.20), table(0.22), POPULAR)
    assert not verdict.promote
    assert "REJECT: test recall@10 0.2000 vs champion 0.2200 - 0.005" in verdict.reasons


def test_mixed_better_recall_but_much_worse_ndcg_is_rejected():
    verdict = decide(table(0.25, ndcg=0.15), table(0.22, ndcg=0.20), POPULAR)
    assert not verdict.promote
    assert [r["check"] for r in verdict.compared if not r["passed"]] == [
        "val ndcg@10 within tolerance",
        "test ndcg@10 within tolerance",
    ]


def test_tie_promotes_with_zero_min_gain_and_not_with_a_positive_one():
    assert decide(table(0.22), table(0.22), POPULAR).promote
    assert not decide(table(0.22), table(0.22), POPULAR, GateThresholds(min_gain=0.001)).promote


def test_nan_or_empty_evaluation_rejects():
    nan = table(0.3)
    nan["test"]["ndcg@10"] = math.nan
    verdict = decide(nan, table(0.2), POPULAR)
    assert not verdict.promote and "NaN or empty: test ndcg@10" in verdict.reasons[0]
    assert not decide({}, None, POPULAR).promote


def test_first_night_the_popularity_floor_alone_decides():
    assert decide(table(0.12), None, POPULAR).promote
    below = decide(table(0.105), None, POPULAR)
    assert not below.promote and "MostPopular" in below.reasons[0]


def test_rating_model_rmse_regression_rejects():
    champion = table(0.22, rmse=0.90)
    baselines = {split: {**row, "rmse": 1.0} for split, row in POPULAR.items()}
    assert decide(table(0.23, rmse=0.904), champion, baselines, rating_model=True).promote
    worse = decide(table(0.23, rmse=0.92), champion, baselines, rating_model=True)
    assert not worse.promote
    assert worse.compared[-1]["check"] == "rmse not worse"


def test_rating_model_floor_is_the_mean_predictor_not_popularity():
    baselines = {
        "val": {"recall@10": 0.20, "ndcg@10": 0.15, "rmse": 1.05},
        "test": {"recall@10": 0.20, "ndcg@10": 0.15, "rmse": 1.04},
    }
    first = decide(table(0.03, rmse=0.93), None, baselines, rating_model=True)
    assert first.promote
    assert "ok: test RMSE 0.9300 vs training mean 1.0400 - 0" in first.reasons
    assert any(
        r.startswith("note: test recall@10 0.0300 vs MostPopular 0.2000") for r in first.reasons
    )
    no_better_than_mean = decide(table(0.03, rmse=1.05), None, baselines, rating_model=True)
    assert not no_better_than_mean.promote
    assert no_better_than_mean.compared[0]["check"] == "beats the mean predictor"
    strict = GateThresholds(baseline_rmse_margin=0.2)
    assert not decide(table(0.03, rmse=0.93), None, baselines, strict, rating_model=True).promote
    # Against a champion the ranking metrics still count: worse lists reject.
    worse_lists = decide(
        table(0.02, rmse=0.90), table(0.03, rmse=0.93), baselines, rating_model=True
    )
    assert not worse_lists.promote
