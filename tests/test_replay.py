"""`encore replay`: the timeline cut into periods, the next-period protocol, the peers, and the
whole replay through the real nightly on the built-in sample (resumed, refused)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest

from models_src.data import SECONDS_PER_DAY, Interactions
from models_src.replay import (
    NextPeriod,
    choose_peer_settings,
    paired_difference,
    period_cuts,
    top_k_lists,
)
from tests.test_cli import encore

DAY = SECONDS_PER_DAY


def _at(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def test_weeks_start_at_the_share_of_events_and_the_last_period_ends_with_the_data():
    ts = np.arange(100) * DAY  # one event a day for 100 days
    cuts = period_cuts(ts, 0.7, "week")
    assert cuts[0] == 70 * DAY
    assert np.all(np.diff(cuts[:-1]) == 7 * DAY)
    assert cuts[-1] == 99 * DAY + 1  # the last, short period ends after the last event
    assert period_cuts(ts, 0.7, "week", nights=2) == [70 * DAY, 77 * DAY, 84 * DAY]
    assert period_cuts(ts, 0.5, "day", nights=1) == [50 * DAY, 51 * DAY]


def test_months_are_calendar_months():
    ts = np.array([_at("2018-01-01"), _at("2018-02-10T12:00:00"), _at("2018-04-20")])
    cuts = period_cuts(ts, 0.5, "month")
    assert cuts == [
        _at("2018-02-10T12:00:00"),
        _at("2018-03-01"),
        _at("2018-04-01"),
        _at("2018-04-20") + 1,
    ]


def _interactions(user, item, num_users=4, num_items=6) -> Interactions:
    user, item = np.asarray(user), np.asarray(item)
    return Interactions(user, item, num_users, num_items, ts=np.arange(len(user)) * DAY)


def test_relevant_items_are_the_ones_new_to_each_user_and_lists_exclude_the_history():
    history = _interactions([0, 0, 1], [0, 1, 2])
    # user 0 takes item 1 again (not new) and item 3; user 2 has no history; user 1 is idle
    period = _interactions([0, 0, 2, 2], [1, 3, 4, 5])
    judged = NextPeriod.build(history, period)
    assert judged.users.tolist() == [0, 2]
    assert [r.tolist() for r in judged.relevant] == [[3], [4, 5]]
    assert judged.seen_users.tolist() == [True, False]
    assert judged.new_items == pytest.approx(1.0)  # items 3, 4, 5: nobody had them before

    scores = np.tile(np.arange(6, dtype=np.float32)[::-1], (2, 1))  # item 0 best, 5 worst
    lists = top_k_lists(lambda users: scores[: len(users)], judged, k=3)
    assert lists[0].tolist() == [2, 3, 4]  # items 0 and 1 are user 0's history
    assert lists[2].tolist() == [0, 1, 2]
    metrics = judged.score(lists, k=3)
    assert metrics["recall@3"].tolist() == [1.0, 0.0]
    # user 0's one relevant item at rank 2: DCG 1/log2(3), IDCG 1
    assert metrics["ndcg@3"][0] == pytest.approx(1 / np.log2(3))
    # a user with no list scores 0
    assert judged.score({0: lists[0]}, k=3)["recall@3"].tolist() == [1.0, 0.0]


def test_peers_settings_are_chosen_on_the_holdout_and_a_recent_window_can_win():
    # item 5 was taken by everyone in the last days; items 0-1 were popular long ago
    users = np.array([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    items = np.array([0, 0, 0, 1, 1, 1, 1, 0, 5, 5])
    days = np.array([0, 1, 2, 3, 4, 5, 6, 7, 200, 201])
    history = Interactions(users, items, 6, 6, ts=days * DAY)
    holdout = NextPeriod.build(history, Interactions(np.array([4, 5]), np.array([5, 5]), 6, 6))
    chosen = choose_peer_settings(
        history, holdout, k=1, names=["MostPopular (all time)", "MostPopular (recent)"]
    )
    assert chosen["MostPopular (all time)"]["holdout_recall"] == 0.0
    assert chosen["MostPopular (recent)"]["holdout_recall"] == 1.0
    assert chosen["MostPopular (recent)"]["params"]["window_days"] == 7.0


def test_paired_difference_and_its_standard_error():
    mean, se = paired_difference(np.array([1.0, 0.5, 0.0]), np.array([0.0, 0.5, 0.0]))
    assert mean == pytest.approx(1 / 3)
    assert se == pytest.approx(np.std([1.0, 0.0, 0.0], ddof=1) / np.sqrt(3))


@pytest.mark.slow
@pytest.mark.integration
def test_a_replay_runs_the_nightly_per_period_judges_the_next_one_and_resumes(
    tmp_path, prefect_api
):
    source = tmp_path / "source"
    assert encore(source, "generate-sample", "--days", "12").returncode == 0
    sources = source / "sources.toml"
    home = tmp_path / "replay-home"
    quick = ("--set", "gat_bpr.epochs=2", "--set", "rating.epochs=2")
    args = ("replay", "sample-listens", "--sources", str(sources), "--period", "day")
    # The session's Prefect server, as under a deployment: no temporary server per command.
    first = encore(home, *args, "--start", "0.75", "--nights", "1", *quick, api=prefect_api)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "sample-listens: 1 nights" in first.stdout
    assert "every active user had a list: True" in first.stdout
    folder = home / "replay" / "sample-listens"
    results = json.loads((folder / "replay_sample-listens.json").read_text())
    summary = results["summary"]
    assert summary["nights"] == 1 and summary["every_user_has_a_list"]
    contenders = set(summary["contenders"])
    assert {"Encore (served)", "frozen (night 0's model)", "MostPopular (recent)"} <= contenders
    assert {"implicit ALS", "EASE^R", "RP3beta", "MostPopular (all time)"} <= contenders
    for night in results["nights"]:
        assert night["active_users"] > 0 and night["users_with_a_list"] == night["active_users"]
        # the nightly really ran: ingest, training and scoring each took time
        assert {"ingest + validate", "train", "batch scoring"} <= set(night["nightly"]["timings"])
    encore_recall = summary["contenders"]["Encore (served)"]["recall@10"]["mean"]
    assert 0.0 < encore_recall <= 1.0
    for name in ("recall", "wall"):
        assert (folder / f"replay_sample-listens_{name}.png").stat().st_size > 1000
    # Resumed with one more night: the judged night is kept, only the second runs.
    again = encore(home, *args, "--start", "0.75", "--nights", "2", *quick, api=prefect_api)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "sample-listens: 2 nights" in again.stdout
    assert len(list((home / "reports").glob("nightly-*.md"))) == 2
    # Other settings on the same home, a dataset without timestamps, a production home: refused
    # in one line each, before anything runs.
    other = encore(home, *args, "--start", "0.5", "--nights", "1")
    assert other.returncode == 2 and len(other.stderr.strip().splitlines()) == 1
    assert "was started with start 0.75, period day" in other.stderr
    (source / "untimed.toml").write_text(
        '[datasets.plays]\nformat = "delimited"\nkind = "implicit"\n'
        f'landing = "{source}"\ncolumns = {{ user_id = "u", item_id = "i" }}\n'
    )
    untimed = encore(
        tmp_path / "other", "replay", "plays", "--sources", str(source / "untimed.toml")
    )
    assert untimed.returncode == 2
    assert untimed.stderr.strip().splitlines() == [
        f"dataset 'plays' has no timestamps (no `ts` column in {source / 'untimed.toml'}):"
        " a replay needs time to cut periods; map a timestamp column to replay it"
    ]
    from tasks.warehouse.schema import connect

    connect(source / "warehouse.duckdb").close()  # a home that already serves
    production = encore(source, *args)
    assert production.returncode == 2 and "already holds a warehouse" in production.stderr


def test_wall_times_leave_out_failed_nights_and_say_which_failed():
    from tasks.replay.report import wall_times
    from tasks.replay.state import ReplayState

    def night(i: int, seconds: float, warm: bool, problems=()) -> dict:
        return {
            "night": i,
            "nightly": {"seconds": seconds, "warm": warm, "problems": list(problems)},
        }

    state = ReplayState("d", 0.7, "week", [0, 1, 2, 3, 4], {}, {})
    state.nights = [
        night(0, 30.0, False),
        night(1, 10.0, True),
        night(2, 2.0, False, ["validation failed: d"]),
        night(3, 12.0, True),
    ]
    wall = wall_times(state)
    assert (wall["warm_median_s"], wall["cold_median_s"]) == (11.0, 30.0)
    assert wall["warm_over_cold"] == pytest.approx(11.0 / 30.0)
    assert wall["failed_nights"] == [2]
