"""The `encore` command as a user runs it: a fresh data home, two nights, a status."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ENCORE = Path(sys.executable).parent / "encore"


def encore(home: Path, *args: str, api: str | None = None) -> subprocess.CompletedProcess:
    """`encore` as a user runs it: without `api`, a flow starts Prefect's temporary server in the
    data home (~20 s each time on 2 cores); with it, flows report to that server, as under a
    deployment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["ENCORE_HOME"] = str(home)
    if api is not None:
        env["PREFECT_API_URL"] = api
    return subprocess.run(
        [str(ENCORE), *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.slow
def test_generate_ingest_next_day_status(tmp_path, prefect_api):
    home = tmp_path / "home"
    generated = encore(home, "generate-sample", "--days", "2")
    assert generated.returncode == 0, generated.stderr
    assert "listens: 2 new file(s)" in generated.stdout
    first = encore(home, "ingest", api=prefect_api)
    assert first.returncode == 0, first.stderr
    assert "snapshot 1 of sample-listens: passed (2 file(s))" in first.stdout
    assert encore(home, "generate-sample", "--next-day").returncode == 0
    second = encore(home, "ingest", api=prefect_api)
    assert "snapshot 3 of sample-listens: passed (1 file(s))" in second.stdout
    # Nothing new: answered from the landing folders' stats, no flow and no Prefect server
    # (which would say so on stderr: this run has no API to report to).
    quiet = encore(home, "ingest")
    assert (quiet.returncode, quiet.stderr) == (0, "")
    assert quiet.stdout.splitlines() == [
        "nothing new to ingest",
        "sample-listens: no new files in the landing folder",
        "sample-ratings: no new files in the landing folder",
    ]
    status = encore(home, "status")
    assert status.returncode == 0, status.stderr
    assert "sample-ratings" in status.stdout and "BROKEN" not in status.stdout
    assert status.stdout.count("holds") == 4


@pytest.mark.slow
def test_nightly_runs_end_to_end_and_says_where_things_are(tmp_path, prefect_api):
    home = tmp_path / "home"
    assert encore(home, "generate-sample", "--days", "2").returncode == 0
    night = encore(home, "nightly", "--epochs", "2", "--fail-on-warning")
    warnings = [x for x in night.stderr.splitlines() if x.startswith("WARNING: ")]
    assert night.returncode == (2 if warnings else 0), night.stderr[-3000:]
    # A healthy night logs no tracebacks (Prefect's telemetry service once did, offline).
    assert "Traceback" not in night.stderr, night.stderr[-3000:]
    lines = night.stdout.splitlines()
    served = r"(PROMOTED v\d+|BASELINE SERVES: [a-z-]+ v\d+) \(first champion\)"
    for model, dataset in (("gat-bpr", "listens"), ("gat-bpr", "ratings"), ("rating", "ratings")):
        assert any(re.match(rf"{model} on sample-{dataset}: {served}", x) for x in lines), lines
    for dataset in ("listens", "ratings"):
        parquet = home / "exports" / f"recommendations_sample-{dataset}_ranking.parquet"
        assert f"  recommendations: {parquet}" in lines
    # A baseline serving is said on stderr, one line per model, never silently.
    baselines = [x for x in lines if "BASELINE SERVES" in x]
    assert len(warnings) == len(baselines)
    (report,) = [x.split(": ", 1)[1] for x in lines if x.startswith("run report: ")]
    assert Path(report).parent == home / "reports" and Path(report).exists()
    # The registry holds what serving, rollback and warm start read, not the resume points, and
    # the night's end says what the retention policy removed (nothing yet on a first night).
    assert list((home / "models").rglob("best_model.pt"))
    assert not list((home / "models").rglob("checkpoint_epoch_*.pt"))
    assert "cleaned: 0 folders the retention policy no longer keeps (0.0 MB" in night.stdout
    # Everything stayed inside the data home, the temporary server's database included.
    assert list((home / "prefect").glob("*.db"))
    assert (home / "warehouse.duckdb").is_file()
    # Nothing new: answered from the warehouse before Prefect or torch is imported (no API to
    # report to, so a flow would start a temporary server and say so on stderr).
    quiet = encore(home, "nightly", "--epochs", "2")
    assert (quiet.returncode, quiet.stderr) == (0, "")
    assert quiet.stdout.splitlines()[:3] == [
        "nothing new tonight: no file to ingest, no model due (--retrain trains anyway)",
        "sample-listens: no new files in the landing folder",
        "sample-ratings: no new files in the landing folder",
    ]
    assert quiet.stdout.count("SKIPPED: no new data") == 3
    # A champion whose Parquet lists went missing is due for scoring: the flow runs.
    (home / "exports" / "recommendations_sample-listens_ranking.parquet").unlink()
    rescored = encore(home, "nightly", "--epochs", "2", api=prefect_api)
    assert rescored.returncode == 0, rescored.stderr[-3000:]
    assert "nothing new tonight" not in rescored.stdout
    assert (home / "exports" / "recommendations_sample-listens_ranking.parquet").exists()


def test_a_missing_sources_file_or_a_misspelt_dataset_is_one_line_before_anything_starts(
    tmp_path,
):
    home = tmp_path / "home"
    missing = encore(home, "nightly")
    assert missing.returncode == 2
    (line,) = missing.stderr.strip().splitlines()
    assert line == (
        f"{home / 'sources.toml'}: no sources file; run `encore generate-sample` or write one"
        " (see docs/sources.md)"
    )
    assert encore(home, "generate-sample", "--days", "1").returncode == 0
    typo = encore(home, "ingest", "--dataset", "sample-listen")
    assert typo.returncode == 2
    assert typo.stderr.strip() == (
        f"{home / 'sources.toml'}: no dataset named 'sample-listen' (datasets: sample-listens,"
        " sample-ratings); did you mean 'sample-listens'?"
    )
    wrong_device = encore(home, "nightly", "--device", "gpu")
    assert wrong_device.returncode == 2
    assert wrong_device.stderr.strip() == (
        "--device: Input should be 'auto', 'cpu' or 'cuda' (got 'gpu')"
    )
    import torch

    if not torch.cuda.is_available():
        no_cuda = encore(home, "nightly", "--device", "cuda")
        assert no_cuda.returncode == 2
        assert no_cuda.stderr.strip().startswith("--device cuda: torch sees no CUDA device")
    no_file = encore(home, "ingest", "--retry", "nope.csv")
    assert no_file.returncode == 2
    assert no_file.stderr.strip() == "--retry nope.csv: no such file"
    assert not (home / "warehouse.duckdb").exists()  # refused before any flow ran
    no_pairs = encore(
        home, "predict", "--dataset", "sample-ratings", "--pairs", "nope.csv", "--out", "x.csv"
    )
    assert (no_pairs.returncode, no_pairs.stderr.strip()) == (
        2,
        "--pairs nope.csv: no such file (a CSV or Parquet of user_id, item_id)",
    )
    no_version = encore(home, "promote", "999")
    assert (no_version.returncode, no_version.stderr.strip()) == (1, "no model version 999")
    never_refused = encore(home, "ingest", "--retry", str(home / "sources.toml"))
    assert never_refused.returncode == 2
    assert never_refused.stderr.strip().endswith(
        "these bytes were never refused (or a retry is already asked for); an ingest reads a new"
        " or changed file anyway"
    )


def test_help_lists_the_commands():
    shown = subprocess.run([str(ENCORE), "--help"], capture_output=True, text=True, timeout=60)
    for command in ("generate-sample", "nightly", "ingest", "validate", "status", "models"):
        assert command in shown.stdout


def test_prefect_and_gx_are_kept_from_phoning_home_unless_the_user_says_otherwise(
    tmp_path, monkeypatch
):
    from tasks.home import EncoreHome, configure_environment

    monkeypatch.delenv("PREFECT_SERVER_ANALYTICS_ENABLED", raising=False)
    monkeypatch.setenv("GX_ANALYTICS_ENABLED", "true")
    configure_environment(EncoreHome(tmp_path / "home"))
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert os.environ["GX_ANALYTICS_ENABLED"] == "true"  # the user's own choice stands


def test_each_sources_toml_mistake_is_one_line_exit_2_and_encore_check_lists_them(tmp_path):
    """Issue 37: a typo in a value, a landing that does not exist, a mapped column the files
    lack and a renamed dataset, each said before any flow starts."""
    home = tmp_path / "home"
    landing = home / "landing" / "shop"
    landing.mkdir(parents=True)
    (landing / "day1.csv").write_text("user,item,stars\nu1,i1,4\n")
    sources = home / "sources.toml"
    good = (
        '[datasets.shop]\nformat = "delimited"\nkind = "explicit"\nlanding = "landing/shop"\n'
        "rating_scale = [1, 5]\n"
        'columns = { user_id = "user", item_id = "item", rating = "stars" }\n'
    )
    mistakes = {
        'kind = "explict"': "kind: Input should be 'implicit' or 'explicit' (got 'explict')",
        'landing = "landing/shpo"': f"dataset 'shop': landing {home / 'landing/shpo'} does not"
        " exist",
        'rating = "stars"': "the newest landing file day1.csv has no column 'score' (its rating)",
    }
    replacements = {
        'kind = "explict"': ('kind = "explicit"', 'kind = "explict"'),
        'landing = "landing/shpo"': ('landing = "landing/shop"', 'landing = "landing/shpo"'),
        'rating = "stars"': ('rating = "stars"', 'rating = "score"'),
    }
    # Each mistake through `encore check`, and each command once (every process start costs
    # seconds): all three share `_check_sources`.
    commands = iter([("ingest",), ("nightly",), ("ingest",)])
    for mistake, expected in mistakes.items():
        old, new = replacements[mistake]
        sources.write_text(good.replace(old, new))
        for command in (next(commands), ("check",)):
            run = encore(home, *command)
            assert run.returncode == 2, (command, run.stdout, run.stderr)
            errors = [line for line in run.stderr.strip().splitlines() if line]
            assert len(errors) == 1 and expected in errors[0], (command, run.stderr)
        assert not (home / "warehouse.duckdb").exists()  # refused before any flow ran
    sources.write_text(good)
    checked = encore(home, "check")
    assert checked.returncode == 0, checked.stderr
    assert "shop: explicit, delimited" in checked.stdout
    assert "1 file(s), all new" in checked.stdout and "no problems" in checked.stdout


def test_a_renamed_dataset_is_a_warning_naming_the_old_one(tmp_path):
    from tasks.ingest.sources_file import load_datasets, renamed_datasets
    from tasks.warehouse.schema import connect

    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "day1.csv").write_text("userId,movieId,rating,timestamp\n1,10,4.0,964982703\n")
    sources = tmp_path / "sources.toml"
    sources.write_text('[datasets.old]\nformat = "movielens-csv"\nlanding = "landing"\n')
    from tasks.ingest.load import ingest_file
    from tasks.ingest.snapshots import open_snapshot, register_dataset

    con = connect(tmp_path / "warehouse.duckdb")
    (spec,) = load_datasets(sources)
    register_dataset(con, spec)
    ingest_file(con, spec, landing / "day1.csv", open_snapshot(con, "old"))
    assert renamed_datasets(con, [spec]) == []
    sources.write_text('[datasets.new]\nformat = "movielens-csv"\nlanding = "landing"\n')
    (warning,) = renamed_datasets(con, load_datasets(sources))
    assert "dataset 'new' reads files already loaded as dataset 'old'" in warning
    con.close()
