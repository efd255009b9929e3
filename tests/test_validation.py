"""Validation: row-level quarantine with reasons, table-level verdicts, the training view."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from conftest import spec_for

from tasks.ingest.load import ingest_file
from tasks.ingest.snapshots import open_snapshot, register_dataset
from tasks.validate.report import report_markdown
from tasks.validate.thresholds import ValidationThresholds
from tasks.validate.validation import validate_snapshot

HEADER = "userId,movieId,rating,timestamp\n"
NOW = datetime(2026, 11, 22, 12, 0, 0)
LOOSE = ValidationThresholds(
    min_users=1, min_items=1, min_interactions=1, max_quarantine_fraction=1.0
)


def good_rows(n_users: int = 20, n_items: int = 10, start: int = 1_600_000_000) -> str:
    lines = [
        f"{u},{i},{1 + (u + i) % 5}.0,{start + u * 100 + i}"
        for u in range(n_users)
        for i in range(n_items)
    ]
    return "\n".join(lines) + "\n"


def ingest_night(con, write_file, name: str, body: str, dataset: str = "ds") -> int:
    path = write_file(name, HEADER + body)
    spec = spec_for("movielens-csv", path, dataset)
    register_dataset(con, spec)
    snapshot_id = open_snapshot(con, dataset)
    ingest_file(con, spec, path, snapshot_id)
    return snapshot_id


def count(con, sql: str) -> int:
    return con.execute(sql).fetchone()[0]


def test_row_level_failures_are_quarantined_with_file_line_and_reason(con, write_file, home):
    future = int((NOW + timedelta(days=30)).timestamp())
    bad = (
        f",5,4.0,1600000000\n"  # line 202: empty user id
        f"7,5,7.0,1600000000\n"  # line 203: rating out of scale
        f"7,6,3.2,1600000000\n"  # line 204: not on the half-star steps
        f"8,5,NaN,1600000000\n"  # line 205: NaN rating
        f"9,5,4.0,{future}\n"  # line 206: in the future
        f"9,6,4.0,600000000\n"  # line 207: absurdly old (1989)
        f"bad id,5,4.0,1600000000\n"  # line 208: whitespace in id
    )
    snapshot_id = ingest_night(con, write_file, "night.csv", good_rows() + bad)
    report = validate_snapshot(con, snapshot_id, ValidationThresholds(), home.reports, now=NOW)
    quarantined = con.execute(
        "SELECT line, column_name, expectation, reason FROM quarantine ORDER BY line"
    ).fetchall()
    assert [(line, column) for line, column, *_ in quarantined] == [
        (202, "user_id"),
        (203, "rating"),
        (204, "rating"),
        (205, "rating"),
        (206, "ts"),
        (207, "ts"),
        (208, "user_id"),
    ]
    assert quarantined[1][2] == "expect_column_values_to_be_between"
    assert quarantined[1][3] == "rating within the scale [0.5, 5] (value: 7.0)"
    totals = report["accounting"]["totals"]
    assert totals == {
        "rows_read": 207,
        "loaded": 200,
        "duplicates": 0,
        "rejected": 0,
        "quarantined": 7,
    }
    # 7/207 = 3.4% quarantined is under the 5% default: the snapshot passes without those rows.
    assert report["status"] == "passed"
    assert count(con, "SELECT count(*) FROM training_interactions") == 200
    assert (
        json.loads((home.reports / f"snapshot_{snapshot_id:05d}_ds.json").read_text())["status"]
        == "passed"
    )


def test_too_many_quarantined_rows_fail_the_snapshot(con, write_file):
    body = good_rows() + "".join(f"{u},99,9.0,1600000000\n" for u in range(30))
    snapshot_id = ingest_night(con, write_file, "night.csv", body)
    report = validate_snapshot(con, snapshot_id, now=NOW)
    assert report["status"] == "failed"
    assert [o["column"] for o in report["failed"] if o["level"] == "table"] == [
        "quarantine_fraction"
    ]
    assert count(con, "SELECT count(*) FROM training_interactions") == 0


def test_a_delivery_that_is_mostly_malformed_fails_the_snapshot(con, write_file):
    """200 good lines in 1,000 broken ones: the good rows load, but the snapshot fails on the
    share of malformed rows (per snapshot and per file), with the figure in the report."""
    broken = "".join(f"{u},10,not-a-rating,1600000000\n" for u in range(1_000))
    snapshot_id = ingest_night(con, write_file, "night.csv", good_rows() + broken)
    report = validate_snapshot(con, snapshot_id, now=NOW)
    assert report["status"] == "failed"
    failed = {o["column"]: o["observed"] for o in report["failed"] if o["level"] == "table"}
    assert failed == pytest.approx(
        {"reject_fraction": 1000 / 1200, "worst_file_reject_fraction": 1000 / 1200}
    )
    assert count(con, "SELECT count(*) FROM training_interactions") == 0


def test_a_few_malformed_lines_in_one_file_pass(con, write_file):
    broken = "".join(f"{u},10,not-a-rating,1600000000\n" for u in range(5))
    snapshot_id = ingest_night(con, write_file, "night.csv", good_rows() + broken)
    report = validate_snapshot(con, snapshot_id, now=NOW)
    assert report["status"] == "passed", report["failed"]
    observed = {o["column"]: o["observed"] for o in report["expectations"] if o["level"] == "table"}
    assert observed["reject_fraction"] == pytest.approx(5 / 205)


def test_minimum_sizes_fail_a_tiny_dataset(con, write_file):
    snapshot_id = ingest_night(con, write_file, "tiny.csv", good_rows(n_users=3, n_items=2))
    report = validate_snapshot(con, snapshot_id, now=NOW)
    failed = {o["column"]: o["observed"] for o in report["failed"]}
    assert failed == {"n_users": 3, "n_items": 2, "n_interactions": 6}
    assert "**FAILED**" in report_markdown(report)


def test_drift_in_mean_rating_fails_the_night(con, write_file):
    first = ingest_night(con, write_file, "day1.csv", good_rows())
    assert validate_snapshot(con, first, LOOSE, now=NOW)["status"] == "passed"
    # Tonight everyone rates 5: mean moves from 3.0 to 5.0 = 44% of the 0.5-5 scale.
    tonight = "".join(f"{u},{i},5.0,1700000000\n" for u in range(20) for i in range(10, 15))
    second = ingest_night(con, write_file, "day2.csv", tonight)
    report = validate_snapshot(con, second, LOOSE, now=NOW)
    assert report["status"] == "failed"
    assert [o["column"] for o in report["failed"]] == ["mean_rating_shift"]
    assert round(report["profile"]["mean_rating_shift"], 3) == round(2.0 / 4.5, 3)


def test_a_night_that_replays_history_fails_growth(con, write_file):
    first = ingest_night(con, write_file, "day1.csv", good_rows(n_users=5))
    validate_snapshot(con, first, LOOSE, now=NOW)
    big = good_rows(n_users=40, start=1_650_000_000)
    report = validate_snapshot(con, ingest_night(con, write_file, "day2.csv", big), LOOSE, now=NOW)
    assert [o["column"] for o in report["failed"]] == ["growth"]


def three_normal_nights(con, write_file) -> None:
    for night in range(3):
        body = good_rows(start=1_600_000_000 + night * 100_000)
        snapshot_id = ingest_night(con, write_file, f"day{night}.csv", body)
        assert validate_snapshot(con, snapshot_id, now=NOW)["status"] == "passed"


def test_a_day_ninety_percent_smaller_than_usual_fails_on_volume(con, write_file):
    three_normal_nights(con, write_file)
    small = "".join(f"{u},{u % 10},3.0,1700000000\n" for u in range(15))
    report = validate_snapshot(
        con, ingest_night(con, write_file, "day3.csv", small), LOOSE, now=NOW
    )
    assert [o["column"] for o in report["failed"]] == ["volume_ratio"]
    assert report["profile"]["volume_ratio"] == pytest.approx(15 / 200)


def test_a_day_whose_ids_were_remapped_upstream_fails(con, write_file):
    three_normal_nights(con, write_file)
    remapped = good_rows(start=1_700_000_000).replace("\n", "\n" + "x")
    remapped = "x" + remapped[: -len("x")]  # every user id prefixed: all new tonight
    report = validate_snapshot(
        con, ingest_night(con, write_file, "day3.csv", remapped), LOOSE, now=NOW
    )
    assert [o["column"] for o in report["failed"]] == ["new_user_share"]
    assert report["profile"]["new_user_share"] == 1.0
    assert report["profile"]["new_item_share"] == 0.0
    assert report["profile"]["volume_ratio"] == pytest.approx(1.0)


def test_one_user_with_a_third_of_the_day_fails_as_a_bot(con, write_file):
    people = "".join(f"{u},{u % 50},3.0,{1_600_000_000 + u}\n" for u in range(200))
    bot = "".join(f"9999,{i % 50},3.0,{1_600_100_000 + i}\n" for i in range(100))
    report = validate_snapshot(
        con, ingest_night(con, write_file, "day.csv", people + bot), LOOSE, now=NOW
    )
    assert [o["column"] for o in report["failed"]] == ["top_user_share"]
    assert report["profile"]["top_user_share"] == pytest.approx(100 / 300)
    assert report["profile"]["top_item_share"] is None  # 50 items: too few to judge a share


def test_a_day_older_than_the_history_fails_as_time_going_backwards(con, write_file):
    first = ingest_night(con, write_file, "day1.csv", good_rows(start=1_700_000_000))
    assert validate_snapshot(con, first, LOOSE, now=NOW)["status"] == "passed"
    replayed = good_rows(n_users=10, start=1_600_000_000)
    report = validate_snapshot(
        con, ingest_night(con, write_file, "day2.csv", replayed), LOOSE, now=NOW
    )
    assert [o["column"] for o in report["failed"]] == ["backdated_share"]
    assert report["profile"]["backdated_share"] == 1.0


def test_a_few_late_events_pass_the_time_check(con, write_file):
    first = ingest_night(con, write_file, "day1.csv", good_rows(start=1_700_000_000))
    assert validate_snapshot(con, first, LOOSE, now=NOW)["status"] == "passed"
    late = "".join(f"{u},{u % 10},3.0,1699999000\n" for u in range(10))
    tonight = good_rows(n_users=16, start=1_700_100_000) + late
    report = validate_snapshot(
        con, ingest_night(con, write_file, "day2.csv", tonight), LOOSE, now=NOW
    )
    assert report["status"] == "passed"
    assert report["profile"]["backdated_share"] == pytest.approx(10 / 170)


def test_conflicts_are_reported_as_a_row_check_and_counted_once(con, write_file):
    """A conflict quarantined at ingest and a row quarantined by validation in one file: each
    counted once, and the accounting still adds up."""
    body = good_rows() + "0,0,5.0,1600000000\n" + "7,99,9.0,1600000000\n"
    snapshot_id = ingest_night(con, write_file, "night.csv", body)
    report = validate_snapshot(con, snapshot_id, LOOSE, now=NOW)
    assert report["accounting"]["totals"] == {
        "rows_read": 202,
        "loaded": 200,
        "duplicates": 0,
        "rejected": 0,
        "quarantined": 2,
    }
    (conflict,) = [o for o in report["expectations"] if o["expectation"] == "conflicting_value"]
    assert (conflict["success"], conflict["unexpected_count"]) == (False, 1)
    assert conflict["sample"] == [
        "conflicts with line 2 of this file (value there: 1.0, here: 5.0);"
        " the row loaded first is kept"
    ]
    assert report["status"] == "passed"


def test_failed_snapshot_rows_do_not_block_a_corrected_redelivery(con, write_file):
    bad_night = ingest_night(con, write_file, "night.csv", good_rows(n_users=2, n_items=2))
    assert validate_snapshot(con, bad_night, now=NOW)["status"] == "failed"
    corrected = ingest_night(con, write_file, "night-fixed.csv", good_rows())
    report = validate_snapshot(con, corrected, now=NOW)
    # The 4 rows of the failed night are loaded again, not counted as duplicates.
    assert report["accounting"]["totals"]["duplicates"] == 0
    assert report["status"] == "passed"
    assert count(con, "SELECT count(*) FROM training_interactions") == 200
    # Accepted later, the failed night's rows that the redelivery loaded again are dropped:
    # training never holds a pair twice (issue 37).
    from tasks.validate.review import accept_snapshot

    accepted = accept_snapshot(con, bad_night, "reviewed", actor="ops")
    assert accepted["snapshot_id"] == bad_night
    assert count(con, "SELECT count(*) FROM training_interactions") == 200
    assert (
        count(con, "SELECT count(*) FROM quarantine WHERE expectation = 'duplicate_of_redelivery'")
        == 4
    )


def test_unreadable_file_fails_its_snapshot(con, write_file):
    good = write_file("a.csv", HEADER + good_rows())
    broken = write_file("b.csv", "user,item\n1,2\n")
    spec = spec_for("movielens-csv", good)
    register_dataset(con, spec)
    snapshot_id = open_snapshot(con, "ds")
    ingest_file(con, spec, good, snapshot_id)
    with pytest.raises(ValueError, match="missing column"):
        ingest_file(con, spec, broken, snapshot_id)
    report = validate_snapshot(con, snapshot_id, now=NOW)
    assert report["status"] == "failed"
    assert [o["column"] for o in report["failed"]] == ["unreadable_files"]
    assert report["accounting"]["totals"]["rejected"] == 1
    assert "missing column 'userId'" in report["file_errors"][0]["error"]


def test_row_checks_follow_gx_conventions_and_python_regexes(con, write_file):
    """Checked in DuckDB, the row rules keep GX's meaning: a NaN or empty rating fails only the
    not-null rule (shown as NULL), a value check skips it, and `id_pattern` is a Python regex
    (a look-ahead, which DuckDB's RE2 would refuse)."""
    bad = "7,5,NaN,1600000000\n7,6,,1600000000\ntest-1,5,4.0,1600000000\n"
    snapshot_id = ingest_night(con, write_file, "night.csv", good_rows() + bad)
    thresholds = ValidationThresholds(id_pattern=r"^(?!test-)\S{1,128}$")
    report = validate_snapshot(con, snapshot_id, thresholds, now=NOW)
    by_rule = {(o["expectation"], o["column"]): o for o in report["expectations"]}
    missing = by_rule[("expect_column_values_to_not_be_null", "rating")]
    assert (missing["unexpected_count"], missing["sample"]) == (2, ["NULL", "NULL"])
    assert by_rule[("expect_column_values_to_be_between", "rating")]["unexpected_count"] == 0
    assert by_rule[("expect_column_values_to_be_in_set", "rating")]["unexpected_count"] == 0
    malformed = by_rule[("expect_column_values_to_match_regex", "user_id")]
    assert (malformed["unexpected_count"], malformed["sample"]) == (1, ["test-1"])
    quarantined = con.execute("SELECT line, column_name FROM quarantine ORDER BY line").fetchall()
    assert quarantined == [(202, "rating"), (203, "rating"), (204, "user_id")]


def test_a_sign_up_wave_with_returning_users_passes_and_a_remap_still_fails(con, write_file):
    """Issue 37: mostly-new users tonight is growth when users seen before come back too."""
    three_normal_nights(con, write_file)
    returning = good_rows(n_users=20, start=1_700_000_000)  # the 20 users seen before, 200 rows
    wave = "".join(f"new{u // 4},{u % 10},3.0,{1_700_100_000 + u}\n" for u in range(2000))
    roomy = LOOSE.model_copy(update={"max_growth": 10.0, "max_volume_ratio": 20.0})  # a big wave
    report = validate_snapshot(
        con, ingest_night(con, write_file, "day3.csv", returning + wave), roomy, now=NOW
    )
    assert report["status"] == "passed", report["failed"]
    assert report["profile"]["new_user_share"] == 0.0  # not counted: the old ids came back


def test_a_failed_snapshot_accepted_after_review_reaches_training_and_is_logged(con, write_file):
    from tasks.validate.review import ReviewError, accept_snapshot, revalidate_snapshot

    three_normal_nights(con, write_file)
    remapped = "x" + good_rows(start=1_700_000_000).replace("\n", "\nx")[: -len("x")]
    snapshot_id = ingest_night(con, write_file, "day3.csv", remapped)
    assert validate_snapshot(con, snapshot_id, LOOSE, now=NOW)["status"] == "failed"
    training = "SELECT count(*) FROM training_interactions WHERE snapshot_id = ?"
    assert con.execute(training, [snapshot_id]).fetchone()[0] == 0
    with pytest.raises(ReviewError, match="--reason is required"):
        accept_snapshot(con, snapshot_id, " ")
    # Validated again under a looser bound, it passes; logged as such.
    looser = LOOSE.model_copy(update={"max_new_id_share": 1.0})
    assert revalidate_snapshot(con, snapshot_id, looser, "")["status"] == "passed"
    assert con.execute(training, [snapshot_id]).fetchone()[0] == 200
    # A second failed night, accepted: its rows reach training, with who and why kept.
    again = "y" + good_rows(start=1_750_000_000).replace("\n", "\ny")[: -len("y")]
    second = ingest_night(con, write_file, "day4.csv", again)
    report = validate_snapshot(con, second, LOOSE, now=NOW)
    assert report["status"] == "failed", report["profile"]
    accepted = accept_snapshot(con, second, "new id scheme from the CRM migration", actor="ops")
    assert accepted["dataset"] == "ds"
    assert con.execute(training, [second]).fetchone()[0] == 200
    reviews = con.execute(
        "SELECT snapshot_id, action, actor, status_after FROM snapshot_reviews ORDER BY 1"
    ).fetchall()
    assert reviews[1] == (second, "accepted", "ops", "passed")
    assert reviews[0][:2] == (snapshot_id, "revalidated") and reviews[0][3] == "passed"
    with pytest.raises(ReviewError, match="is passed, not failed"):
        accept_snapshot(con, second, "twice")
