"""Every writer takes its turn, and no write is seen half-done: a command that writes refuses in
one line while another holds the data home; anything opening the warehouse waits for another
process's hold to end; a file write that fails leaves the old file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.home import EncoreHome
from tasks.lock import exclusive_lock
from tasks.warehouse import schema

ENCORE = Path(sys.executable).parent / "encore"
HOLD_WAREHOUSE = """
import sys, duckdb
con = duckdb.connect(sys.argv[1])
print("held", flush=True)
sys.stdin.readline()
con.close()
print("released", flush=True)
"""


def encore(home: EncoreHome, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    environment |= {"ENCORE_HOME": str(home.root), **env}
    return subprocess.run(
        [str(ENCORE), *args], capture_output=True, text=True, env=environment, timeout=120
    )


@pytest.fixture
def holder(home: EncoreHome):
    """Another process holding the warehouse file open until told to let go."""
    schema.connect(home.warehouse).close()
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD_WAREHOUSE, str(home.warehouse)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "held"
    yield process
    if process.poll() is None:
        process.stdin.write("\n")
        process.stdin.flush()
    process.wait(timeout=30)


@pytest.mark.parametrize(
    "command",
    [
        ("rollback", "--dataset", "sample-listens"),
        ("promote", "1"),
        ("validate",),
        ("nightly",),
        ("ingest",),
    ],
)
def test_a_writer_is_refused_in_one_line_while_the_data_home_is_held(home, command):
    from flows.cli import SAMPLE_SOURCES

    home.sources_file.write_text(SAMPLE_SOURCES)  # so that nightly and ingest get to the lock
    for kind in ("listens", "ratings"):
        (home.landing / f"sample-{kind}").mkdir(parents=True, exist_ok=True)
    with exclusive_lock(home.root / "nightly.lock", "nightly flow run test-night"):
        refused = encore(home, *command)
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert "busy" in lines[0] and "nightly flow run test-night" in lines[0]
    assert "--wait" in lines[0]


def test_a_reader_refused_after_its_wait_says_who_holds_the_warehouse(home, holder):
    busy = encore(home, "models", ENCORE_WAREHOUSE_WAIT_SECONDS="0")
    assert busy.returncode == 1
    (line,) = busy.stderr.strip().splitlines()
    assert f"in use by process {holder.pid}" in line and "ENCORE_WAREHOUSE_WAIT_SECONDS" in line


def test_opening_the_warehouse_waits_for_another_process_to_let_go(home, holder, monkeypatch):
    attempts = []
    real_sleep = schema.time.sleep

    def release_on_first_retry(seconds: float) -> None:
        if not attempts:  # the first open was refused: now let the holder go
            holder.stdin.write("\n")
            holder.stdin.flush()
            assert holder.stdout.readline().strip() == "released"
        attempts.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(schema.time, "sleep", release_on_first_retry)
    con = schema.connect(home.warehouse)
    con.close()
    assert attempts  # it did wait, then opened


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_partial(tmp_path):
    from tasks.files import partial_path, write_atomically, write_text_atomically

    target = write_text_atomically(tmp_path / "exports" / "report.md", "last night's report")

    def fill_the_disk(partial: Path) -> None:
        partial.write_text("half of tonight's")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomically(target, fill_the_disk)
    assert target.read_text() == "last night's report"
    assert not partial_path(target).exists()
