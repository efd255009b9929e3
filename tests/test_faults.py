"""Every crash heals on the next plain run: a real `encore` process is killed at a named point
(tasks/faults.py: ENCORE_CRASH_AT, os._exit, as kill -9 leaves things), then run again.

After each rerun: exit 0, exactly one ranking champion, its lists loaded from what serves for
it, no leftover partial files, and every row of the landing files in training (as a clean run
has them). A full disk is simulated with RLIMIT_FSIZE: every write past the cap fails."""

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


def test_a_night_killed_at_each_stage_and_a_killed_batch_scoring_heal(sample_home, prefect_api):
    """One data home through a chain of kills, each run healing what the last one left."""
    killed = encore(sample_home, prefect_api, *QUICK_NIGHT, crash_at="epoch")
    assert killed.returncode == CRASH_EXIT_CODE, killed.stderr[-2000:]
    assert query(sample_home, "SELECT count(*) FROM model_versions") == [(0,)]

    # The next night trains from the start and is killed once its model is published.
    killed = encore(sample_home, prefect_api, *QUICK_NIGHT, crash_at="published")
    assert killed.returncode == CRASH_EXIT_CODE, killed.stderr[-2000:]
    (orphan,) = query(sample_home, "SELECT version, status FROM model_versions")
    assert orphan[1] == "candidate"

    # The next night trains the snapshot again (the orphan is rejected, with why), and is
    # killed once the gate crowned its model, before any list was scored.
    killed = encore(sample_home, prefect_api, *QUICK_NIGHT, crash_at="gated")
    assert killed.returncode == CRASH_EXIT_CODE, killed.stderr[-2000:]
    assert query(
        sample_home, "SELECT status FROM model_versions WHERE version = ?", [orphan[0]]
    ) == [("rejected",)]
    (interrupted,) = query(
        sample_home, "SELECT reasons FROM promotions WHERE action = 'interrupted'"
    )
    assert "ended before the gate" in interrupted[0]
    champion, rows = serving_lists(sample_home)
    assert rows == 0  # crowned, but never scored

    # Nothing new to train on: the next night scores the champion's lists and is killed once
    # they are committed to DuckDB, before the Parquet export is written.
    export = sample_home.root / "exports" / "recommendations_sample-listens_ranking.parquet"
    killed = encore(sample_home, prefect_api, *QUICK_NIGHT, crash_at="lists committed")
    assert killed.returncode == CRASH_EXIT_CODE, killed.stderr[-2000:]
    assert serving_lists(sample_home)[1] > 0 and not export.exists()

    # The next night sees the export missing, scores again, and is killed just before its
    # report: both the lists and the export are there, row for row.
    killed = encore(sample_home, prefect_api, *QUICK_NIGHT, crash_at="report")
    assert killed.returncode == CRASH_EXIT_CODE, killed.stderr[-2000:]
    still_champion, loaded = serving_lists(sample_home)
    assert still_champion == champion and loaded > 0
    exported = query(sample_home, "SELECT count(*) FROM read_parquet(?)", [str(export)])
    assert exported == [(loaded,)]
    assert not list((sample_home.root / "exports" / "scoring").glob("scoring-*"))

    # A batch scoring killed after writing its parts (before loading them), then run again.
    parts = sample_home.root / "exports" / "scoring"
    killed = encore(sample_home, prefect_api, "batch-score", crash_at="scored")
    assert killed.returncode == CRASH_EXIT_CODE, killed.stderr[-2000:]
    assert list(parts.glob("scoring-sample-listens-v*"))
    rescored = encore(sample_home, prefect_api, "batch-score")
    assert rescored.returncode == 0, rescored.stderr[-3000:]
    assert serving_lists(sample_home) == (champion, loaded)
    assert not list(parts.glob("scoring-*")) and not list(sample_home.root.rglob("*.partial"))
    champions = query(
        sample_home,
        "SELECT count(*) FROM model_versions WHERE dataset = 'sample-listens'"
        " AND slot = 'ranking' AND status = 'champion'",
    )
    assert champions == [(1,)]


def test_an_interrupted_ingest_is_completed_and_a_full_disk_changes_nothing(
    sample_home, prefect_api
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

    # Every data line of the landing files is in training, as after a clean ingest (the
    # sample has no duplicates, conflicts or malformed lines).
    delivered = [
        (f"sample-{kind}", sum(len(p.read_text().splitlines()) - 1 for p in folder.glob("*.csv")))
        for kind in ("listens", "ratings")
        for folder in [sample_home.landing / f"sample-{kind}"]
    ]
    count = "SELECT dataset, count(*) FROM training_interactions GROUP BY 1 ORDER BY 1"
    assert query(sample_home, count) == delivered

    # A disk that fills during the next ingest leaves the warehouse as it was.
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
