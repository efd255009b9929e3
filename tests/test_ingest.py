"""Ingest: each reader, every bad input with its exact error, and the row accounting."""

from __future__ import annotations

import gzip
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import spec_for

from tasks.ingest.errors import IngestFileError
from tasks.ingest.load import ingest_file
from tasks.ingest.scan import scan_file
from tasks.ingest.snapshots import open_snapshot, refused_before, register_dataset
from tasks.ingest.sources import RatingScale, SourceFormat
from tasks.warehouse.schema import connect

RATINGS_CSV = (
    "userId,movieId,rating,timestamp\n1,10,4.0,964982703\n1,20,3.5,964981247\n2,10,5.0,964982224\n"
)


def load(con, format_name, path, name="ds"):
    spec = spec_for(format_name, path, name)
    register_dataset(con, spec)
    return ingest_file(con, spec, path, open_snapshot(con, name))


def rows(con, sql, *params):
    return con.execute(sql, list(params)).fetchall()


# --- readers --------------------------------------------------------------------------------


def test_movielens_100k_reader(con, write_file):
    path = write_file(
        "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n"
    )
    result = load(con, "movielens-100k", path)
    assert (result.rows_read, result.loaded, result.new_users, result.new_items) == (3, 3, 3, 3)
    assert rows(
        con, "SELECT user_id, item_id, rating, ts::VARCHAR, line FROM interactions ORDER BY line"
    )[0] == ("196", "242", 3.0, "1997-12-04 15:55:49", 1)


def test_movielens_csv_reader_counts_header_as_line_one(con, write_file):
    result = load(con, "movielens-csv", write_file("ratings.csv", RATINGS_CSV))
    assert (result.rows_read, result.loaded) == (3, 3)
    assert [r[0] for r in rows(con, "SELECT line FROM interactions ORDER BY line")] == [2, 3, 4]


def test_movielens_dat_reader_with_two_char_delimiter(con, write_file):
    path = write_file("ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n")
    result = load(con, "movielens-dat", path)
    assert result.loaded == 2
    assert rows(con, "SELECT rating FROM interactions ORDER BY line") == [(5.0,), (3.0,)]


def test_lastfm_reader_is_implicit_without_timestamps(con, write_file):
    path = write_file(
        "user_artists.dat", "userID\tartistID\tweight\r\n2\t51\t13883\r\n2\t52\t11690\r\n"
    )
    result = load(con, "lastfm-user-artists", path)
    assert result.loaded == 2
    assert rows(con, "SELECT weight, ts, rating FROM interactions ORDER BY line") == [
        (13883.0, None, None),
        (11690.0, None, None),
    ]


def test_letterboxd_reader_maps_columns_by_header_name(con, write_file):
    path = write_file(
        "ratings_export.csv",
        "_id,movie_id,rating_val,user_id\nx1,feast-2014,7,deathproof\nx2,loving-2016,10,deathproof\n",
    )
    result = load(con, "letterboxd", path)
    assert result.loaded == 2
    assert rows(con, "SELECT user_id, item_id, rating FROM interactions ORDER BY line") == [
        ("deathproof", "feast-2014", 7.0),
        ("deathproof", "loving-2016", 10.0),
    ]


def test_generic_delimited_latin1_headerless(con, write_file):
    fmt = SourceFormat(
        kind="explicit",
        delimiter=";",
        header=False,
        encoding="latin-1",
        positional_columns=("who", "what", "stars"),
        columns={"user_id": "who", "item_id": "what", "rating": "stars"},
        rating_scale=RatingScale(1, 5),
    )
    path = write_file("export.txt", "Jos\xe9;Am\xe9lie;5\nAnna;Heat;4\n".encode("latin-1"))
    result = load(con, fmt, path)
    assert result.loaded == 2
    assert rows(con, "SELECT user_id, item_id FROM interactions ORDER BY line")[0] == (
        "José",
        "Amélie",
    )


def test_parquet_reader_rejects_uncastable_values_by_row(con, tmp_path):
    path = tmp_path / "events.parquet"
    pq.write_table(
        pa.table({"u": ["a", "b", "c"], "i": ["x", "y", "z"], "r": ["4", "five", "2"]}), path
    )
    fmt = SourceFormat(
        kind="explicit",
        file_type="parquet",
        columns={"user_id": "u", "item_id": "i", "rating": "r"},
        rating_scale=RatingScale(1, 5),
    )
    result = load(con, fmt, path)
    assert (result.rows_read, result.loaded, result.rejected) == (3, 2, 1)
    assert rows(con, "SELECT line, column_name FROM rejects") == [(2, "r")]


# --- bad input: each with its exact error and the accounting holding ---------------------------


def test_empty_file_is_an_error_naming_the_file(con, write_file):
    path = write_file("empty.csv", "")
    with pytest.raises(IngestFileError, match=r"empty\.csv: file is empty \(0 bytes\)"):
        load(con, "movielens-csv", path)
    assert rows(con, "SELECT status, rows_read, rejected FROM source_files") == [("error", 0, 0)]


def test_header_only_is_an_error_on_line_1(con, write_file):
    path = write_file("header.csv", "userId,movieId,rating,timestamp\n")
    with pytest.raises(
        IngestFileError, match=r"header\.csv, line 1: file has a header but no data rows"
    ):
        load(con, "movielens-csv", path)


def test_missing_column_names_line_and_column(con, write_file):
    path = write_file("ratings.csv", "userId,movieId,timestamp\n1,10,964982703\n")
    with pytest.raises(
        IngestFileError, match=r"ratings\.csv, line 1, column 'rating': missing column 'rating'"
    ):
        load(con, "movielens-csv", path)
    assert rows(con, "SELECT count(*) FROM interactions") == [(0,)]
    # The refused file's row is accounted for as rejected, with the reason on record.
    assert rows(con, "SELECT status, rows_read, rejected FROM source_files") == [("error", 1, 1)]
    assert rows(con, "SELECT error_type FROM rejects") == [("FILE",)]


def test_extra_column_in_a_row_is_rejected_with_its_line(con, write_file):
    path = write_file("ratings.csv", RATINGS_CSV + "3,30,4.0,964982703,surprise\n")
    result = load(con, "movielens-csv", path)
    assert (result.rows_read, result.loaded, result.rejected) == (4, 3, 1)
    assert rows(con, "SELECT line, error_type, raw_line FROM rejects") == [
        (5, "TOO MANY COLUMNS", "3,30,4.0,964982703,surprise")
    ]


def test_extra_column_in_the_header_is_ignored(con, write_file):
    path = write_file(
        "ratings.csv", "userId,movieId,rating,timestamp,source\n1,10,4.0,964982703,web\n"
    )
    assert load(con, "movielens-csv", path).loaded == 1


def test_non_numeric_rating_is_rejected_naming_the_column(con, write_file):
    path = write_file("ratings.csv", RATINGS_CSV + "3,30,great,964982703\n")
    result = load(con, "movielens-csv", path)
    assert (result.loaded, result.rejected) == (3, 1)
    line, column, error_type, reason = rows(
        con, "SELECT line, column_name, error_type, reason FROM rejects"
    )[0]
    assert (line, column, error_type) == (5, "rating", "CAST")
    assert '"great"' in reason


def test_a_repeated_row_is_a_duplicate_and_a_repeated_key_with_another_value_a_conflict(
    con, write_file
):
    path = write_file("ratings.csv", RATINGS_CSV + "1,10,4.0,964982703\n1,10,2.0,964982703\n")
    result = load(con, "movielens-csv", path)
    assert (result.rows_read, result.loaded, result.duplicates, result.quarantined) == (5, 3, 1, 1)
    assert rows(
        con, "SELECT rating, line FROM interactions WHERE item_id = '10' AND user_id = '1'"
    ) == [(4.0, 2)]
    ((line, expectation, column, reason),) = rows(
        con, "SELECT line, expectation, column_name, reason FROM quarantine"
    )
    assert (line, expectation, column) == (6, "conflicting_value", "rating")
    assert reason == (
        "conflicts with line 2 of this file (value there: 4.0, here: 2.0);"
        " the row loaded first is kept"
    )


def test_same_key_in_a_later_file_is_a_duplicate(con, write_file):
    load(con, "movielens-csv", write_file("day1.csv", RATINGS_CSV))
    result = load(
        con, "movielens-csv", write_file("day2.csv", RATINGS_CSV + "9,99,1.0,964982703\n")
    )
    assert (result.loaded, result.duplicates) == (1, 3)


def test_a_re_export_with_changed_ratings_and_an_overlapping_file_load_each_pair_once(
    con, write_file
):
    """The issue's case: a file, a re-export of it with two ratings changed, then a file that
    overlaps both. 4 distinct pairs are loaded once; the changed ratings are conflicts that
    name the row they contradict."""
    first = load(con, "movielens-csv", write_file("day1.csv", RATINGS_CSV))
    re_export = RATINGS_CSV.replace("1,20,3.5", "1,20,1.5").replace("2,10,5.0", "2,10,0.5")
    second = load(con, "movielens-csv", write_file("day1_again.csv", re_export))
    overlap = "userId,movieId,rating,timestamp\n2,10,5.0,964982224\n3,30,4.0,964982000\n"
    third = load(con, "movielens-csv", write_file("day2.csv", overlap))
    accounts = [(r.loaded, r.duplicates, r.quarantined) for r in (first, second, third)]
    assert accounts == [(3, 0, 0), (0, 1, 2), (1, 1, 0)]
    assert rows(con, "SELECT count(*), count(DISTINCT (user_id, item_id)) FROM interactions") == [
        (4, 4)
    ]
    reasons = [r for (r,) in rows(con, "SELECT reason FROM quarantine ORDER BY line")]
    assert all(r.startswith("conflicts with line ") and "day1.csv" in r for r in reasons)


def test_truncated_last_line_is_rejected(con, write_file):
    path = write_file("ratings.csv", RATINGS_CSV + "3,30,4")
    result = load(con, "movielens-csv", path)
    assert (result.rows_read, result.loaded, result.rejected) == (4, 3, 1)
    assert rows(con, "SELECT DISTINCT line, error_type FROM rejects") == [(5, "MISSING COLUMNS")]


def test_non_utf8_bytes_are_rejected_as_invalid_encoding(con, write_file):
    path = write_file("ratings.csv", RATINGS_CSV.encode() + b"3\xff,30,4.0,964982703\n")
    result = load(con, "movielens-csv", path)
    assert (result.loaded, result.rejected) == (3, 1)
    assert rows(con, "SELECT line, column_name, error_type FROM rejects") == [
        (5, "userId", "INVALID ENCODING")
    ]


def test_impossible_epoch_is_rejected_not_overflowed(con, write_file):
    path = write_file("u.data", "1\t2\t3\t881250949\n1\t3\t3\t99999999999999999\n")
    result = load(con, "movielens-100k", path)
    assert (result.loaded, result.rejected) == (1, 1)
    assert "out of range" in rows(con, "SELECT reason FROM rejects")[0][0]


def test_blank_lines_are_skipped_and_line_numbers_stay_physical(con, write_file):
    path = write_file(
        "ratings.csv", "userId,movieId,rating,timestamp\n\n1,10,4.0,1\nbad\n\n2,10,5.0,2\n"
    )
    result = load(con, "movielens-csv", path)
    assert (result.rows_read, result.loaded, result.rejected) == (3, 2, 1)
    assert [r[0] for r in rows(con, "SELECT line FROM interactions ORDER BY line")] == [3, 6]
    assert rows(con, "SELECT DISTINCT line FROM rejects") == [(4,)]


def test_same_file_twice_is_a_no_op(con, write_file):
    path = write_file("ratings.csv", RATINGS_CSV)
    first = load(con, "movielens-csv", path)
    copy = write_file("renamed-copy.csv", RATINGS_CSV)
    second = load(con, "movielens-csv", copy)
    assert (first.status, second.status, second.loaded) == ("loaded", "skipped", 0)
    assert rows(con, "SELECT count(*) FROM interactions") == [(3,)]
    assert rows(con, "SELECT count(*) FROM source_files") == [(1,)]


def test_id_maps_are_dense_append_only_and_stable(con, write_file):
    load(con, "movielens-csv", write_file("a.csv", RATINGS_CSV))
    before = dict(rows(con, "SELECT external_id, idx FROM user_ids"))
    load(
        con,
        "movielens-csv",
        write_file("b.csv", "userId,movieId,rating,timestamp\n7,10,3.0,5\n1,11,3.0,5\n"),
    )
    after = dict(rows(con, "SELECT external_id, idx FROM user_ids"))
    assert before == {"1": 0, "2": 1}
    assert after == {"1": 0, "2": 1, "7": 2}


def test_scan_counts_lines_without_trailing_newline_and_blank_lines(tmp_path):
    path = tmp_path / "f.csv"
    path.write_bytes(b"h\n\na\r\n\r\nb")
    scan = scan_file(path)
    assert (scan.lines, scan.blank_lines) == (3, (2, 4))


def test_crash_mid_file_leaves_nothing_and_a_rerun_loads_everything(home, write_file):
    """A real crash: a child process dies (os._exit) after inserting rows, before commit."""
    path = write_file("ratings.csv", RATINGS_CSV)
    child = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        sys.path[:0] = {sys.path!r}
        import tasks.ingest.load as ingest
        from tasks.ingest.snapshots import open_snapshot, register_dataset
        from tasks.ingest.sources import PRESETS, DatasetSpec
        from tasks.warehouse.schema import connect
        ingest.crash_point = lambda stage: os._exit(3) if stage == "inserted" else None
        con = connect(Path({str(home.warehouse)!r}))
        spec = DatasetSpec("ds", PRESETS["movielens-csv"], Path({str(path)!r}))
        register_dataset(con, spec)
        ingest.ingest_file(con, spec, spec.landing, open_snapshot(con, "ds"))
    """)
    crashed = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert crashed.returncode == 3, crashed.stderr
    con = connect(home.warehouse)
    try:
        assert rows(con, "SELECT count(*) FROM interactions") == [(0,)]
        assert rows(con, "SELECT count(*) FROM source_files") == [(0,)]
        assert rows(con, "SELECT count(*) FROM user_ids") == [(0,)]
        spec = spec_for("movielens-csv", path)
        result = ingest_file(con, spec, path, open_snapshot(con, "ds"))
        assert (result.status, result.loaded) == ("loaded", 3)
        assert result.accounting_holds()
    finally:
        con.close()


def test_accounting_equation_holds_for_a_mixed_bad_file(con, write_file):
    body = (
        "userId,movieId,rating,timestamp\n"
        "1,10,4.0,964982703\n"  # loaded
        "1,10,4.0,964982703\n"  # duplicate
        "2,10,abc,964982703\n"  # rejected: cast
        "3,10,4.0\n"  # rejected: missing column
        ",10,4.0,964982703\n"  # loaded here, quarantined by validation (empty id)
        "4,11,9.0,964982703\n"  # loaded here, quarantined by validation (out of scale)
    )
    result = load(con, "movielens-csv", write_file("mixed.csv", body))
    assert (result.rows_read, result.loaded, result.duplicates, result.rejected) == (6, 3, 1, 2)
    assert result.accounting_holds()


def test_quoted_fields_spanning_lines_are_read_and_each_row_keeps_its_first_line(con, write_file):
    body = (
        "userId,movieId,rating,timestamp\n"  # line 1
        '1,"10\n11",4.0,964982703\n'  # lines 2-3: one row
        "\n"  # line 4: blank
        "2,10,bad,964982224\n"  # line 5: rejected
        '2,"x\n\ny\r",5.0,964982224\n'  # lines 6-8, a blank line and a lone CR inside
        "3,10,5.0,964982224\n"  # line 9
    )
    result = load(con, "movielens-csv", write_file("multiline.csv", body))
    assert (result.rows_read, result.loaded, result.rejected) == (4, 3, 1)
    assert rows(con, "SELECT line, item_id FROM interactions ORDER BY line") == [
        (2, "10\n11"),
        (6, "x\n\ny\r"),
        (9, "10"),
    ]
    assert rows(con, "SELECT line, column_name, error_type FROM rejects") == [(5, "rating", "CAST")]


def test_rows_that_do_not_add_up_refuse_the_file_whole_and_it_is_not_read_again(
    con, write_file, monkeypatch
):
    """Rows read are counted apart from DuckDB; should DuckDB ever drop a row silently (here:
    the independent count finds one more), the file is refused whole (recorded, its rows
    counted as rejected), not left to stop the night; the planner then skips the same bytes
    until the file changes."""
    from tasks.ingest import load as ingest
    from tasks.ingest.snapshots import already_loaded

    real_rows_read = ingest.rows_read
    monkeypatch.setattr(ingest, "rows_read", lambda *args: real_rows_read(*args) + 1)
    path = write_file("ratings.csv", RATINGS_CSV)
    with pytest.raises(IngestFileError, match=r"ratings\.csv: 4 rows read but 3 loaded"):
        load(con, "movielens-csv", path)
    assert rows(con, "SELECT status, rows_read, loaded, rejected FROM source_files") == [
        ("error", 4, 0, 4)
    ]
    assert rows(con, "SELECT count(*) FROM interactions") == [(0,)]
    sha256 = scan_file(path).sha256
    assert "rows read" in refused_before(con, "ds", sha256)
    assert already_loaded(con, "ds", sha256) is None


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("day.csv", gzip.compress(RATINGS_CSV.encode()), "gzip-compressed data, not a delimited"
         " text file although named day.csv: gunzip it before it lands"),
        ("day.csv", b"PK\x03\x04" + b"\x00" * 64, "a ZIP archive (a .zip, or an Excel .xlsx"
         " workbook), not a delimited text file"),
        ("day.csv", b"\x00\x01\x02binary" * 50, "binary data (NUL bytes in its first 8 KiB)"),
        ("day.csv", RATINGS_CSV.split("\n", 1)[1], "no header row: line 1 is data (1,10,4.0,"
         "964982703); add the header line 'userId,movieId,rating,timestamp'"),
    ],
    ids=["gzip", "zip", "binary", "no-header"],
)  # fmt: skip
def test_an_unreadable_file_is_refused_with_the_reason_in_words(
    con, write_file, name, content, reason
):
    path = write_file(name, content)
    with pytest.raises(IngestFileError) as refused:
        load(con, "movielens-csv", path)
    message = str(refused.value)
    assert message.startswith(f"{path}, line 1: ")
    assert reason in message
    assert "sniff" not in message.lower() and "\n" not in message  # one line, no DuckDB dump
    assert "refused on " in refused_before(con, "ds", scan_file(path).sha256)


def test_a_refused_file_is_read_again_after_a_retry_request_and_refused_again_if_unchanged(
    con, write_file
):
    from tasks.ingest.snapshots import request_retry

    path = write_file("day.csv", gzip.compress(RATINGS_CSV.encode()))
    with pytest.raises(IngestFileError):
        load(con, "movielens-csv", path)
    sha256 = scan_file(path).sha256
    assert refused_before(con, "ds", sha256) is not None
    assert request_retry(con, path) == ["ds"]
    assert refused_before(con, "ds", sha256) is None  # the next plan lists it again
    assert request_retry(con, path) == []  # already asked for
    with pytest.raises(IngestFileError):
        load(con, "movielens-csv", path)
    assert refused_before(con, "ds", sha256) is not None  # refused again: skipped again


def test_unknown_format_key_is_named(tmp_path):
    from tasks.ingest.sources import SourceConfigError
    from tasks.ingest.sources_file import load_datasets

    sources = tmp_path / "sources.toml"
    sources.write_text('[datasets.x]\nformat = "movielens-csv"\nlanding = "in"\ndelimeter = ";"\n')
    with pytest.raises(
        SourceConfigError, match=r"\[datasets\.x\]: unknown key 'delimeter'; allowed: "
    ):
        load_datasets(sources)


def test_connect_is_idempotent(home):
    connect(home.warehouse).close()
    connect(home.warehouse).close()
    assert Path(home.warehouse).exists()
