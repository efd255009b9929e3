"""Recent popularity (models_src/recency.py), the forward holdout by default, and the cold-start
list users without history get wherever a model is judged (models_src/serving.py)."""

from __future__ import annotations

import numpy as np
import torch

from models_src.data import (
    MIN_RETURNING_USERS,
    SECONDS_PER_DAY,
    Interactions,
    resolve_split_method,
    returning_users,
    split_interactions,
)
from models_src.evaluation import Protocol
from models_src.recency import (
    candidate_half_lives,
    choose_half_life,
    choose_prior,
    popularity_scores,
    prior_bias,
    recent_counts,
    score_spread,
)
from models_src.serving import ColdStart, ServedModel, cold_start_on_val

DAY = SECONDS_PER_DAY


def _data(user, item, days, num_users=None, num_items=None) -> Interactions:
    user, item = np.asarray(user), np.asarray(item)
    return Interactions(
        user,
        item,
        num_users or int(user.max()) + 1,
        num_items or int(item.max()) + 1,
        ts=np.asarray(days, dtype=np.int64) * DAY,
    )


def test_recent_counts_halve_every_half_life_before_the_newest_event():
    # item 0 was popular long ago (days 0-3), item 1 in the last days (98, 100)
    data = _data([0, 1, 2, 3, 0, 1], [0, 0, 0, 0, 1, 1], [0, 1, 2, 3, 98, 100])
    assert recent_counts(data, None).tolist() == [4, 2]
    old = sum(0.5 ** (age / 7) for age in (100, 99, 98, 97))
    assert np.allclose(recent_counts(data, 7.0), [old, 0.5 ** (2 / 7) + 1.0])
    scores = popularity_scores(data, 7.0)
    assert scores[1] > scores[0]  # the recent item leads once old interactions have faded
    assert popularity_scores(data, None)[0] > popularity_scores(data, None)[1]


def test_without_timestamps_the_only_choice_is_no_decay():
    data = Interactions(np.array([0, 1]), np.array([0, 1]), 2, 2)
    assert candidate_half_lives(data) == (None,)
    assert recent_counts(data, 7.0).tolist() == [1, 1]
    spanning = _data([0, 1, 2], [0, 1, 1], [0, 10, 20])
    assert candidate_half_lives(spanning) == (3.0, 7.0, 14.0, None)  # none past the 20 days


def test_choose_half_life_keeps_the_one_the_evaluation_prefers():
    data = _data([0, 1, 2, 3, 0, 1], [0, 0, 0, 0, 1, 1], [0, 1, 2, 3, 98, 100])
    chosen = choose_half_life(data, lambda scores: float(scores[1] > scores[0]))
    assert chosen.half_life_days == 3.0  # the shortest that puts item 1 first
    assert chosen.tried["no decay"] == 0.0 and chosen.tried["half-life 3 days"] == 1.0


def test_the_prior_is_standardised_and_scaled_by_the_models_spread():
    bias = prior_bias(torch.tensor([0.0, 1.0, 2.0, 3.0]), weight=2.0, spread=0.5)
    assert abs(float(bias.mean())) < 1e-6
    assert abs(float(bias.std(unbiased=False)) - 1.0) < 1e-5  # 2.0 x 0.5
    assert bias.argmax() == 3
    rows = torch.tensor([[0.0, 2.0], [1.0, 1.0], [0.0, 4.0]])
    assert abs(score_spread(lambda users: rows[users], 3) - (1.0 + 0.0 + 2.0) / 3) < 1e-6


def test_choose_prior_returns_no_bias_when_the_model_alone_is_best():
    data = _data([0, 1, 2], [0, 1, 1], [0, 50, 100])

    def compose(bias):
        return lambda users: (
            torch.zeros(len(users), 2) if bias is None else bias.expand(len(users), 2)
        )

    # val prefers the model alone (1.0) over any prior (0.5)
    choice, bias = choose_prior(compose, data, 1.0, lambda s: 0.5, alone=1.0)
    assert bias is None and choice.weight == 0.0 and choice.val["model alone"] == 1.0
    # val prefers a prior that puts item 1 first: it is kept with its window and weight
    choice, bias = choose_prior(
        compose, data, 1.0, lambda s: float(s(torch.tensor([0]))[0, 1] > 0.5), alone=0.0
    )
    assert bias is not None and choice.weight > 0 and bias[1] > bias[0]


def test_auto_split_is_the_forward_holdout_with_timestamps_and_train_keeps_time():
    n = 3000  # 300 users, each active all along: every held-out user is a returning one
    data = _data(np.arange(n) % 300, np.arange(n) % 50, np.arange(n))
    parts = split_interactions(data, "auto", 0.2, 0.2)
    assert parts["train"].ts is not None and parts["val"].ts is None
    assert parts["train"].ts.max() < data.ts[int(0.6 * n)]  # everything in train precedes val
    timeless = Interactions(data.user, data.item, data.num_users, data.num_items)
    hashed = split_interactions(timeless, "auto", 0.2, 0.2)
    expected = split_interactions(timeless, "hash", 0.2, 0.2)
    assert np.array_equal(hashed["val"].user, expected["val"].user)


def test_auto_split_hashes_when_the_forward_holdout_holds_few_returning_users():
    n = 3000  # 300 users, each active in one burst of 10 events: the held-out days are new users
    data = _data(np.arange(n) // 10, np.arange(n) % 50, np.arange(n))
    assert returning_users(data, 0.2, 0.2) == (0, 0)  # each burst lies wholly in one part
    assert resolve_split_method("auto", data, 0.2, 0.2) == "hash"
    assert resolve_split_method("time", data, 0.2, 0.2) == "time"  # asked for, it is kept
    parts = split_interactions(data, "auto", 0.2, 0.2)
    expected = split_interactions(data, "hash", 0.2, 0.2)
    assert np.array_equal(parts["val"].user, expected["val"].user)
    returning = _data(np.arange(n) % 300, np.arange(n) % 50, np.arange(n))
    assert min(returning_users(returning, 0.2, 0.2)) >= MIN_RETURNING_USERS


def _forward_night():
    """Users 0-5 in train; users 6-9 arrive in val; item 3 became popular lately."""
    train = _data(
        [0, 1, 2, 3, 4, 5, 0, 1, 2, 3],
        [0, 0, 0, 0, 1, 1, 3, 3, 3, 2],
        [1, 2, 3, 4, 5, 6, 95, 96, 97, 98],
        num_users=10,
        num_items=5,
    )
    val = Interactions(np.array([6, 7, 8, 9, 4]), np.array([3, 3, 3, 4, 3]), 10, 5)
    test = Interactions(np.array([5]), np.array([4]), 10, 5)
    return {"train": train, "val": val, "test": test}


def test_users_without_history_are_judged_on_the_cold_start_list():
    splits = _forward_night()
    protocol = Protocol(splits)
    cold = cold_start_on_val(splits, protocol, k=1)
    assert cold.no_history.tolist() == [False] * 6 + [True] * 4
    assert int(cold.scores.argmax()) == 3  # the recent favourite, not item 0 of all time
    # A model that ranks item 4 first for everyone: users without history get item 3 instead.
    buffers = {
        "user_emb": torch.ones(10, 1),
        "item_emb": torch.tensor([[0.0], [0.0], [0.0], [0.0], [1.0]]),
        "user_bias": torch.zeros(10),
        "item_bias": torch.zeros(5),
        "offset": torch.tensor(0.0),
    }
    served = ServedModel(buffers, torch.zeros(5), cold_start=cold)
    scores = served.score_users(torch.tensor([0, 7]))
    assert int(scores[0].argmax()) == 4 and int(scores[1].argmax()) == 3
    # MostPopular's shared ranking no longer stands for everyone once someone goes cold-start.
    flat = {**buffers, "user_emb": torch.zeros(10, 1)}
    assert ServedModel(flat, torch.zeros(5), cold_start=cold).ranking_for_everyone(10) is None
    nobody_new = ColdStart(cold.scores, torch.zeros(10, dtype=torch.bool))
    assert (
        ServedModel(flat, torch.zeros(5), cold_start=nobody_new).ranking_for_everyone(10)
        is not None
    )


def test_the_time_split_holds_out_the_last_days_each_at_least_a_share_of_the_events():
    from models_src.data import MIN_HOLDOUT_SHARE, time_cuts

    # one event a day for 200 days: 7-day parts hold 3.5 %, so each widens to 5 % (10 days)
    daily = _data(np.zeros(200, int), np.zeros(200, int), np.arange(200))
    val_cut, test_cut = time_cuts(daily, 0.15, 0.15, holdout_days=7)
    assert int(200 * MIN_HOLDOUT_SHARE) == 10
    assert (test_cut // DAY, val_cut // DAY) == (190, 180)
    # ten events a day for 100 days: 7-day parts hold 7 %, so they stay 7 days (93-99, 86-92)
    busy = _data(np.zeros(1000, int), np.zeros(1000, int), np.repeat(np.arange(100), 10))
    val_cut, test_cut = time_cuts(busy, 0.15, 0.15, holdout_days=7)
    assert (test_cut - 1, val_cut - 1) == (92 * DAY, 85 * DAY)  # the day after the cut's second
    # without holdout_days, the ratios of the events as before
    assert time_cuts(busy, 0.15, 0.15) == (70 * DAY, 85 * DAY)
    # a history shorter than the held-out days: each part stays within its ratio
    short = _data(np.zeros(100, int), np.zeros(100, int), np.repeat(np.arange(2), 50))
    val_cut, test_cut = time_cuts(short, 0.15, 0.15, holdout_days=7)
    assert (val_cut, test_cut) == (DAY, DAY)  # day 1 held out, as the ratios alone would
    assert time_cuts(short, 0.15, 0.15) == (DAY, DAY)


def test_choose_prior_tries_each_half_life_at_weight_1_then_each_weight_at_the_best():
    from models_src.recency import PRIOR_WEIGHTS

    data = _data([0, 1, 2, 3, 0, 1], [0, 0, 0, 0, 1, 1], [0, 1, 2, 3, 98, 100])
    tried = []

    def gap(bias):  # the "scorer" is the bias: a wider lead of the recent item is better
        tried.append(bias)
        return float(bias[1] - bias[0])

    choice, bias = choose_prior(lambda bias: bias, data, 1.0, gap, alone=0.0)
    # weight 1 once per half-life, then the other non-zero weights at the leading half-life
    assert len(tried) == len(candidate_half_lives(data)) + len(PRIOR_WEIGHTS) - 2
    assert choice.half_life_days == 3.0 and choice.weight == max(PRIOR_WEIGHTS)
    assert float(bias[1] - bias[0]) == max(float(b[1] - b[0]) for b in tried)
