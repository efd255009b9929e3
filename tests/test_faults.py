"""Every crash heals on the next plain run: a real `encore` process is killed at a named point
(tasks/faults.py: ENCORE_CRASH_AT, os._exit, as kill -9 leaves things), then run again.

After each rerun: exit 0, exactly one ranking champion, its lists loaded from what serves for
it, and every row of the landing files in training (as a clean run has them)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_days

from tasks.faults import CRASH_ENV, CRASH_EXIT_CODE
from tasks.home import EncoreHome
from tasks.warehouse.schema import warehouse

pytestmark = pytest.mark.slow

ENCORE = Path(sys.executable).parent / "encore"
QUICK_NIGHT = ("nightly", "--epochs", "2", "--dataset", "sample-listens")


def encore(
    home: EncoreHome,
    api: str,
    *args: str,
    crash_at: str | None = None,
    max_file_bytes: int | None = None,
):
    """Run `encore` as a user would; `max_file_bytes` caps every file the process writes
    (RLIMIT_FSIZE: a write past it fails with EFBIG, as on a full disk)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"ENCORE_HOME": str(home.root), "PREFECT_API_URL": api}
    env.pop(CRASH_ENV, None)
    if crash_at is not None:
        env[CRASH_ENV] = crash_at

    def cap_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, resource.RLIM_INFINITY))

    command = [str(ENCORE), *args]
    if args[0] == "batch-score":  # a flow with no CLI command: run as the deployment would
        command = [sys.executable, "-c", "from flows.batch_score import batch_score; batch_score()"]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        preexec_fn=cap_file_size if max_file_bytes else None,
    )


@pytest.fixture
def sample_home(flow_home: EncoreHome) -> EncoreHome:
    write_days(flow_home, range(2))
    return flow_home


def query(home: EncoreHome, sql: str, params: list | None = None) -> list[tuple]:
    with warehouse(home.warehouse) as con:
        return con.execute(sql, params or []).fetchall()


def serving_lists(home: EncoreHome) -> tuple[int, int]:
    """(the ranking champion of sample-listens, how many list rows its serving version has)."""
    (champion,) = query(
        home,
        "SELECT version FROM model_versions WHERE dataset = 'sample-listens'"
        " AND slot = 'ranking' AND status = 'champion'",
    )
    serving = query(
        home,
        "SELECT coalesce(max(version), ?) FROM model_versions WHERE refit_of = ?",
        [champion[0], champion[0]],
    )[0][0]
    tables = query(home, "SELECT table_name FROM duckdb_tables()")
    if ("recommendations",) not in tables:
        return champion[0], 0
    rows = query(
        home,
        "SELECT count(*) FROM recommendations WHERE dataset = 'sample-listens'"
        " AND model_version = ?",
        [serving],
    )[0][0]
    return champion[0], rows


def test_a_night_killed_after_publishing_then_before_its_lists_heals(sample_home, prefect_api):
    killed = encore(sample_home, prefect_api, *QUICK_NIGHT, crash_at="published")
    assert killed.returncode == CRASH_EXIT_CODE, killed.stderr[-2000:]
    (orphan,) = query(sample_home, "SELECT version, status FROM model_versions")
    assert orphan[1] == "candidate"

    # The next night trains the snapshot again (the orphan is rejected, with why), gates it,
    # and is killed after the lists were scored but before they were loaded.
    second = encore(sample_home, prefect_api, *QUICK_NIGHT, crash_at="scored")
    assert second.returncode == CRASH_EXIT_CODE, second.stderr[-2000:]
    assert query(
        sample_home,
        "SELECT status FROM model_versions WHERE version = ?",
        [orphan[0]],
    ) == [("rejected",)]
    (interrupted,) = query(
        sample_home, "SELECT reasons FROM promotions WHERE action = 'interrupted'"
    )
    assert "ended before the gate" in interrupted[0]
    champion, rows = serving_lists(sample_home)
    assert rows == 0  # crowned, but its lists never loaded

    # A plain rerun, nothing new to train on: the champion's lists are scored.
    third = encore(sample_home, prefect_api, *QUICK_NIGHT)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "gat-bpr on sample-listens: RESCORED" in third.stdout, third.stdout
    still_champion, loaded = serving_lists(sample_home)
    assert still_champion == champion and loaded > 0
    champions = query(
        sample_home,
        "SELECT count(*) FROM model_versions WHERE dataset = 'sample-listens'"
        " AND slot = 'ranking' AND status = 'champion'",
    )
    assert champions == [(1,)]


def test_an_ingest_killed_between_files_is_completed_by_the_next(
    sample_home, prefect_api, tmp_path
):
    killed = encore(sample_home, prefect_api, "ingest", crash_at="between files")
    assert killed.returncode == CRASH_EXIT_CODE, killed.stderr[-2000:]
    assert query(sample_home, "SELECT DISTINCT status FROM snapshots") == [("pending",)]
    # Killed again, inside the validation's transaction: nothing of it is kept.
    killed = encore(sample_home, prefect_api, "ingest", crash_at="validating")
    assert killed.returncode == CRASH_EXIT_CODE, killed.stderr[-2000:]
    assert query(sample_home, "SELECT DISTINCT status FROM snapshots") == [("pending",)]

    rerun = encore(sample_home, prefect_api, "ingest")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    # The pending snapshot was reopened: validated with the files loaded after the kill.
    assert query(sample_home, "SELECT DISTINCT status FROM snapshots") == [("passed",)]

    clean = EncoreHome(tmp_path / "clean").ensure()
    clean.sources_file.write_text(sample_home.sources_file.read_text())
    write_days(clean, range(2))
    assert encore(clean, prefect_api, "ingest").returncode == 0
    count = "SELECT dataset, count(*) FROM training_interactions GROUP BY 1 ORDER BY 1"
    assert query(sample_home, count) == query(clean, count)


def test_a_disk_that_fills_during_ingest_leaves_the_warehouse_as_it_was(sample_home, prefect_api):
    assert encore(sample_home, prefect_api, "ingest").returncode == 0
    before = query(sample_home, "SELECT dataset, count(*) FROM interactions GROUP BY 1 ORDER BY 1")
    write_days(sample_home, range(2, 4))
    full = encore(sample_home, prefect_api, "ingest", max_file_bytes=4096)

    assert full.returncode == 1
    said = [line for line in full.stderr.splitlines() if "disk under the warehouse is full" in line]
    assert said and "Free space and run again" in said[0], full.stderr[-3000:]
    after = query(sample_home, "SELECT dataset, count(*) FROM interactions GROUP BY 1 ORDER BY 1")
    assert after == before
    # Not the file's fault: nothing was recorded as refused, so it loads once there is room.
    assert query(sample_home, "SELECT count(*) FROM source_files WHERE status = 'error'") == [(0,)]
    rerun = encore(sample_home, prefect_api, "ingest")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    grown = query(sample_home, "SELECT count(*) FROM training_interactions")[0][0]
    assert grown > sum(n for _, n in before)


def test_a_night_killed_at_its_verdict_at_its_report_and_a_batch_scoring_killed_heal(
    sample_home, prefect_api
):
    killed = encore(sample_home, prefect_api, *QUICK_NIGHT, crash_at="gated")
    assert killed.returncode == CRASH_EXIT_CODE, killed.stderr[-2000:]
    # The first night's verdict: a ranking champion, crowned but never scored.
    (verdict,) = query(
        sample_home,
        "SELECT version FROM model_versions WHERE slot = 'ranking' AND status = 'champion'",
    )
    assert ("recommendations",) not in query(sample_home, "SELECT table_name FROM duckdb_tables()")

    # The next night finds a champion without lists, scores them, and is killed just
    # before its report.
    killed = encore(sample_home, prefect_api, *QUICK_NIGHT, crash_at="report")
    assert killed.returncode == CRASH_EXIT_CODE, killed.stderr[-2000:]
    champion, loaded = serving_lists(sample_home)
    assert champion == verdict[0] and loaded > 0

    # A batch scoring killed after writing its parts, then run again.
    killed = encore(sample_home, prefect_api, "batch-score", crash_at="scored")
    assert killed.returncode == CRASH_EXIT_CODE, killed.stderr[-2000:]
    assert list((sample_home.root / "exports" / "scoring").glob("scoring-sample-listens-v*"))
    rescored = encore(sample_home, prefect_api, "batch-score")
    assert rescored.returncode == 0, rescored.stderr[-3000:]
    assert serving_lists(sample_home) == (champion, loaded)
    assert not list((sample_home.root / "exports" / "scoring").glob("scoring-*"))
    assert not list(sample_home.root.rglob("*.partial"))
    assert query(
        sample_home,
        "SELECT count(*) FROM model_versions WHERE dataset = 'sample-listens'"
        " AND slot = 'ranking' AND status = 'champion'",
    ) == [(1,)]
