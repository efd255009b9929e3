"""Parquet dataset globs: a Hive-partitioned folder tree loads part by part, each part once, and
a remote (object storage) landing is read through DuckDB's httpfs or refused with a clear error.

httpfs is not installed here and there is no network, so the remote code path runs end to end
on `file://` URLs standing in for `s3://` (the httpfs check stubbed out); what only httpfs does
(S3 listing, HEAD requests, credentials) is not covered.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tasks.ingest.load as ingest
import tasks.ingest.sources as sources
from tasks.ingest.errors import IngestFileError
from tasks.ingest.load import ingest_file
from tasks.ingest.scan import scan_file
from tasks.ingest.snapshots import (
    already_loaded,
    is_known_unchanged,
    open_snapshot,
    register_dataset,
)
from tasks.ingest.sources import (
    DatasetSpec,
    RemoteFile,
    RemoteSourceError,
    SourceConfigError,
    SourceFormat,
    as_location,
)
from tasks.ingest.sources_file import load_datasets

EVENTS = SourceFormat(
    kind="implicit",
    file_type="parquet",
    columns={"user_id": "user", "item_id": "track", "weight": "ms", "ts": "date"},
    timestamp_unit="iso",
)
SOURCES_TOML = """
[datasets.events]
format = "parquet"
kind = "implicit"
landing = "{landing}"
pattern = "**/*.parquet"
columns = {{ user_id = "user", item_id = "track", weight = "ms", ts = "date" }}
timestamp_unit = "iso"
"""


def write_part(root: Path, relative: str, users: list[str], tracks: list[str], ms=None) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    ms = ms if ms is not None else [1000 * (k + 1) for k in range(len(users))]
    pq.write_table(pa.table({"user": users, "track": tracks, "ms": ms}), path)
    return path


def partitioned_tree(root: Path) -> dict[str, int]:
    """Two nights of parts, plus what a Spark/Hive writer leaves around that is not data."""
    write_part(root, "date=2026-11-01/part-0.parquet", ["a", "b", "c"], ["t1", "t2", "t3"])
    write_part(root, "date=2026-11-01/part-1.parquet", ["a", "d"], ["t4", "t1"])
    write_part(root, "date=2026-11-02/part-0.parquet", ["b", "e"], ["t1", "t5"])
    write_part(root, "_temporary/0/date=2026-11-02/part-9.parquet", ["z"], ["t9"])  # in flight
    (root / "_SUCCESS").write_bytes(b"")
    (root / "date=2026-11-01" / ".part-0.parquet.crc").write_bytes(b"crc")
    return {
        "date=2026-11-01/part-0.parquet": 3,
        "date=2026-11-01/part-1.parquet": 2,
        "date=2026-11-02/part-0.parquet": 2,
    }


def nightly(con, spec: DatasetSpec, as_task_list: bool = False) -> list:
    """What the ingest flow does: plan the new files (tasks.ingest.plan_ingest), then load each
    in one snapshot. `as_task_list` sends the plan's strings (the flow then wraps them in Path:
    that round trip is checked on s3:// URLs below; file:/// has no authority to survive it)."""
    register_dataset(con, spec)
    planned = [
        path
        for path in spec.landing_files(con)
        if not is_known_unchanged(con, spec.name, path)
        and already_loaded(con, spec.name, scan_file(path).sha256) is None
    ]
    if not planned:
        return []
    snapshot_id = open_snapshot(con, spec.name)
    files = [str(p) for p in planned] if as_task_list else planned
    return [ingest_file(con, spec, path, snapshot_id) for path in files]


def rows(con, sql, *params):
    return con.execute(sql, list(params)).fetchall()


@pytest.fixture
def events_spec(tmp_path) -> DatasetSpec:
    """The dataset as a sources.toml declares it (landing relative to the data home)."""
    (tmp_path / "sources.toml").write_text(SOURCES_TOML.format(landing="landing/events"))
    return load_datasets(tmp_path / "sources.toml")[0]


# --- local Parquet globs over a partitioned tree ------------------------------------------------


def test_every_part_loads_once_with_its_rows_and_later_parts_alone(con, tmp_path, events_spec):
    root = tmp_path / "landing" / "events"
    expected = partitioned_tree(root)

    first = nightly(con, events_spec)
    assert [Path(r.path).relative_to(root).as_posix() for r in first] == list(expected)
    for result in first:
        part = Path(result.path).relative_to(root).as_posix()
        assert (result.status, result.rows_read, result.loaded) == (
            "loaded",
            expected[part],
            0 + expected[part],
        )
        assert (result.duplicates, result.rejected) == (0, 0)
        assert result.accounting_holds()
    assert rows(con, "SELECT count(*) FROM interactions") == [(7,)]
    # ts comes from the partition folder: the files have no date column.
    assert rows(
        con, "SELECT ts::DATE::VARCHAR, count(*) FROM interactions GROUP BY 1 ORDER BY 1"
    ) == [("2026-11-01", 5), ("2026-11-02", 2)]
    # Each part is registered by the sha256 of its bytes, as any local file.
    registered = rows(con, "SELECT path, sha256 FROM source_files ORDER BY path")
    assert registered == [
        (str(root / part), scan_file(root / part).sha256) for part in sorted(expected)
    ]

    assert nightly(con, events_spec) == []  # a second run finds nothing new
    assert rows(con, "SELECT count(*) FROM source_files") == [(3,)]

    write_part(root, "date=2026-11-03/part-0.parquet", ["a", "f"], ["t6", "t6"])
    third = nightly(con, events_spec)
    assert [(Path(r.path).relative_to(root).as_posix(), r.loaded) for r in third] == [
        ("date=2026-11-03/part-0.parquet", 2)
    ]
    # Never validated here, the first snapshot is still pending: the later part joins it, as
    # an interrupted night's files join the next night's snapshot.
    assert rows(con, "SELECT count(*), count(DISTINCT snapshot_id) FROM interactions") == [(9, 1)]


def test_a_bad_value_in_one_part_is_rejected_naming_that_part(con, tmp_path, events_spec):
    root = tmp_path / "landing" / "events"
    write_part(root, "date=2026-11-01/part-0.parquet", ["a", "b"], ["t1", "t2"])
    bad = write_part(
        root,
        "date=2026-11-01/part-1.parquet",
        ["c", "d", "e"],
        ["t1", "t2", "t3"],
        ms=["1200", "lots", "900"],
    )
    results = {Path(r.path).name: r for r in nightly(con, events_spec)}
    assert (results["part-0.parquet"].loaded, results["part-0.parquet"].rejected) == (2, 0)
    counts = results["part-1.parquet"]
    assert (counts.rows_read, counts.loaded, counts.rejected) == (3, 2, 1)
    assert counts.accounting_holds()
    assert rows(con, "SELECT path, line, column_name, error_type FROM rejects") == [
        (str(bad), 2, "ms", "CAST")
    ]
    assert rows(
        con, "SELECT path, rows_read, loaded, rejected FROM source_files ORDER BY path"
    ) == [(str(root / "date=2026-11-01/part-0.parquet"), 2, 2, 0), (str(bad), 3, 2, 1)]


def test_a_file_column_wins_over_a_partition_folder_of_the_same_name(con, tmp_path):
    """DuckDB's hive auto-detection would replace the file's `date` by the folder's; Encore
    reads the file as written and uses a folder key only for a column the file lacks."""
    root = tmp_path / "landing" / "events"
    path = root / "date=2026-11-01" / "part-0.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(
        pa.table({"user": ["a"], "track": ["t1"], "ms": [5], "date": ["2026-10-31 23:59:00"]}),
        path,
    )
    spec = DatasetSpec("events", EVENTS, root, "**/*.parquet")
    assert [r.loaded for r in nightly(con, spec)] == [1]
    assert rows(con, "SELECT ts::VARCHAR FROM interactions") == [("2026-10-31 23:59:00",)]


def test_a_mapped_column_in_neither_file_nor_path_names_the_partition_keys(con, tmp_path):
    root = tmp_path / "landing" / "events"
    part = write_part(root, "day=2026-11-01/part-0.parquet", ["a"], ["t1"])
    spec = DatasetSpec("events", EVENTS, root, "**/*.parquet")
    register_dataset(con, spec)
    with pytest.raises(
        IngestFileError,
        match=r"part-0\.parquet, column 'date': missing column 'date' \(for ts\); "
        r"has \['ms', 'track', 'user'\]; partition keys \['day'\]",
    ):
        ingest_file(con, spec, part, open_snapshot(con, "events"))


# --- remote landings ----------------------------------------------------------------------------


def httpfs_state(con) -> tuple[bool, bool]:
    row = con.execute(
        "SELECT installed, loaded FROM duckdb_extensions() WHERE extension_name = 'httpfs'"
    ).fetchone()
    return (bool(row[0]), bool(row[1])) if row else (False, False)


@pytest.fixture
def no_httpfs(con, tmp_path):
    """The warehouse connection, pointed at an empty extension folder: httpfs is not installed
    there whatever this machine has (unless a DuckDB build links it in)."""
    con.execute("SET extension_directory = ?", [str(tmp_path / "no-extensions")])
    if httpfs_state(con)[1]:
        pytest.skip("this DuckDB has httpfs built in")
    return con


S3_SPEC = DatasetSpec("clicks", EVENTS, "s3://encore-bucket/events/", "**/*.parquet")


def test_s3_landing_without_httpfs_is_a_clear_error_naming_the_dataset(no_httpfs):
    with pytest.raises(RemoteSourceError) as listing:
        S3_SPEC.landing_files(no_httpfs)
    message = str(listing.value)
    assert message.startswith(
        "dataset 'clicks': landing 's3://encore-bucket/events/' is remote, which DuckDB reads "
        "through its httpfs extension, and httpfs is not installed"
    )
    assert "never downloads" in message and "INSTALL httpfs" in message
    assert "automatically install" not in message  # not DuckDB's own autoinstall error
    # and nothing may download behind our back from here on
    assert no_httpfs.execute(
        "SELECT current_setting('autoinstall_known_extensions')"
    ).fetchone() == (False,)


def test_loading_an_s3_file_without_httpfs_records_nothing(no_httpfs):
    register_dataset(no_httpfs, S3_SPEC)
    url = "s3://encore-bucket/events/date=2026-11-01/part-0.parquet"
    for path in (url, Path(url)):  # a task's Path(...) squeezes the URL to s3:/...
        with pytest.raises(RemoteSourceError, match=r"^dataset 'clicks': landing 's3://encore"):
            ingest_file(no_httpfs, S3_SPEC, path, open_snapshot(no_httpfs, "clicks"))
    assert rows(no_httpfs, "SELECT count(*) FROM source_files") == [(0,)]


def test_this_machine_lacks_httpfs_and_the_plan_says_so():
    """The plan lists with its own connection (the default extension folder)."""
    with duckdb.connect() as probe:
        if any(httpfs_state(probe)):
            pytest.skip("httpfs is installed here; the listing is covered by the file:// test")
    with pytest.raises(RemoteSourceError, match=r"httpfs is not installed"):
        S3_SPEC.landing_files()


def test_remote_landing_config(tmp_path):
    (tmp_path / "sources.toml").write_text(
        SOURCES_TOML.format(landing="s3://encore-bucket/events/")
    )
    spec = load_datasets(tmp_path / "sources.toml")[0]
    assert (spec.landing, spec.is_remote, spec.remote_is_file) == (
        "s3://encore-bucket/events/",
        True,
        False,
    )
    assert spec.partitions("s3://encore-bucket/events/date=2026-11-01/x=a%2Fb/p.parquet") == {
        "date": "2026-11-01",
        "x": "a/b",
    }
    assert as_location(Path("gs://b/k/part-0.parquet")) == "gs://b/k/part-0.parquet"
    assert as_location("landing/events") == Path("landing/events")

    (tmp_path / "sources.toml").write_text(
        '[datasets.x]\nformat = "movielens-csv"\nlanding = "s3://b/ratings/"\n'
    )
    with pytest.raises(SourceConfigError, match=r"\[datasets\.x\]: .*needs a Parquet format"):
        load_datasets(tmp_path / "sources.toml")
    (tmp_path / "sources.toml").write_text(
        '[datasets.x]\nformat = "parquet"\nlanding = "az://c/p/"\n'
        'kind = "implicit"\ncolumns = { user_id = "u", item_id = "i" }\n'
    )
    with pytest.raises(SourceConfigError, match=r"\[datasets\.x\]: 'az://c/p/': scheme az://"):
        load_datasets(tmp_path / "sources.toml")
    with pytest.raises(SourceConfigError, match=r"an http\(s\) server cannot be listed"):
        DatasetSpec("x", EVENTS, "https://example.org/events/", "*.parquet")
    one = DatasetSpec("x", EVENTS, "https://example.org/events/2026-11-01.parquet")
    assert one.remote_is_file


@pytest.fixture
def file_urls(monkeypatch):
    """`file://` plays `s3://`: DuckDB lists and reads it without httpfs, through the same
    glob(), read_blob() and read_parquet() calls."""
    monkeypatch.setattr(sources, "REMOTE_SCHEMES", (*sources.REMOTE_SCHEMES, "file"))
    monkeypatch.setattr(sources, "require_httpfs", lambda con, dataset, location: None)
    monkeypatch.setattr(ingest, "require_httpfs", lambda con, dataset, location: None)


def test_remote_path_lists_reads_and_is_idempotent_by_identity(con, tmp_path, file_urls):
    root = tmp_path / "bucket" / "events"
    expected = partitioned_tree(root)
    spec = DatasetSpec("events", EVENTS, f"file://{root}/", "**/*.parquet")
    assert spec.is_remote

    listed = spec.landing_files(con)
    assert all(isinstance(f, RemoteFile) for f in listed)
    assert [f.url for f in listed] == [f"file://{root}/{part}" for part in expected]
    assert [f.size_bytes for f in listed] == [(root / p).stat().st_size for p in expected]
    one = DatasetSpec("one", EVENTS, f"file://{root}/date=2026-11-02/part-0.parquet")
    assert [f.url for f in one.landing_files(con)] == [
        f"file://{root}/date=2026-11-02/part-0.parquet"
    ]

    first = nightly(con, spec, as_task_list=True)
    assert [(r.path, r.loaded, r.accounting_holds()) for r in first] == [
        (f"file://{root}/{part}", n, True) for part, n in expected.items()
    ]
    assert rows(con, "SELECT path, sha256 FROM source_files ORDER BY path") == [
        (f.url, f.identity) for f in listed
    ]
    assert rows(
        con, "SELECT ts::DATE::VARCHAR, count(*) FROM interactions GROUP BY 1 ORDER BY 1"
    ) == [("2026-11-01", 5), ("2026-11-02", 2)]
    assert nightly(con, spec, as_task_list=True) == []

    # A new part next night loads alone; a part rewritten in place is read again and its rows
    # are duplicates of the first load, never counted twice.
    write_part(root, "date=2026-11-03/part-0.parquet", ["a"], ["t7"])
    rewritten = root / "date=2026-11-02" / "part-0.parquet"
    stat = rewritten.stat()
    os.utime(rewritten, (stat.st_atime, stat.st_mtime + 60))
    again = {Path(r.path).parent.name: r for r in nightly(con, spec, as_task_list=True)}
    assert sorted(again) == ["date=2026-11-02", "date=2026-11-03"]
    assert (again["date=2026-11-03"].loaded, again["date=2026-11-03"].duplicates) == (1, 0)
    assert (again["date=2026-11-02"].loaded, again["date=2026-11-02"].duplicates) == (0, 2)
    assert rows(con, "SELECT count(*) FROM interactions") == [(8,)]


def test_the_ingest_plan_task_lists_remote_files(con, tmp_path, file_urls, home):
    """tasks.ingest.plan_ingest, as the flow runs it: its own connection, paths as strings."""
    from tasks.ingest.tasks import plan_ingest

    root = tmp_path / "bucket" / "events"
    expected = partitioned_tree(root)
    (tmp_path / "sources.toml").write_text(SOURCES_TOML.format(landing=f"file://{root}/"))
    con.close()
    plan = plan_ingest.fn(str(tmp_path / "sources.toml"), str(home.warehouse), None)
    files = [f"file://{root}/{part}" for part in expected]
    assert plan == {"events": {"files": files, "refused": [], "pending": None, "held_back": None}}
