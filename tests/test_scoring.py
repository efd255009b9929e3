"""From a trained run to recommendations: publish, promote, batch-score with onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import spec_for

from models_src.config import TrainConfig
from models_src.data import Interactions, split_interactions
from models_src.learners import make_learner
from models_src.trainers import AdvancedTrainer
from tasks.ingest.load import ingest_file
from tasks.ingest.snapshots import open_snapshot, register_dataset
from tasks.registry.publish import publish_run
from tasks.registry.registry import RegistryError, record_gate_decision, version_row
from tasks.score.scoring import score_dataset
from tasks.train.export import export_interactions
from tasks.validate.thresholds import ValidationThresholds
from tasks.validate.validation import validate_snapshot

LOOSE = ValidationThresholds(min_users=1, min_items=1, min_interactions=1, max_growth=100)


def night(con, write_file, name: str, users: range, day: int) -> None:
    rng = np.random.default_rng(day)
    lines = [
        f"u{u},t{int(t)},a{int(t) % 5},2026-10-{day:02d} 10:{i % 60:02d}:00,{1000 + i}"
        for u in users
        for i, t in enumerate(rng.choice(40, size=8, replace=False))
    ]
    path = write_file(
        name, "user_id,track_id,artist_id,played_at,ms_played\n" + "\n".join(lines) + "\n"
    )
    spec = spec_for("encore-listens", path, "listens")
    register_dataset(con, spec)
    snapshot_id = open_snapshot(con, "listens")
    ingest_file(con, spec, path, snapshot_id)
    assert validate_snapshot(con, snapshot_id, LOOSE)["status"] == "passed"


def train_and_publish(con, home, kind: str = "gat-bpr") -> int:
    export = export_interactions(con, "listens", home.root / "exports" / "listens.parquet")
    data = Interactions.from_parquet(Path(export["path"]))
    torch.manual_seed(0)
    config = TrainConfig(
        model=kind, epochs=2, embedding_dim=8, heads=2, num_layers=1, batch_size=256, lr=0.05
    )
    learner = make_learner(
        split_interactions(data, "hash", 0.15, 0.15), config, torch.device("cpu")
    )
    run_dir = home.root / "runs" / "listens-gat"
    artifacts = {
        "snapshot_id": export["snapshot_id"],
        "data": export["path"],
        "user_ids": data.meta["user_ids"],
        "item_ids": data.meta["item_ids"],
    }
    final = AdvancedTrainer(learner, config, run_dir, artifacts=artifacts, log=lambda _: None).fit()
    return publish_run(con, run_dir, "listens", final, home.root / "models", k=5)


@pytest.fixture
def scored(con, home, write_file):
    night(con, write_file, "day1.csv", range(30), 1)
    version = train_and_publish(con, home)
    record_gate_decision(con, version, True, ["first night"], [], {})
    night(con, write_file, "day2.csv", range(25, 35), 2)  # u30..u34 are new tonight
    return score_dataset(con, "listens", home.root / "exports", chunk_users=7)


def test_a_missing_list_is_explained_by_what_would_give_one(con, home, write_file):
    from tasks.score.scoring import RECOMMENDATIONS_SCHEMA
    from tasks.warehouse.status import unknown_dataset, why_no_list

    con.execute(RECOMMENDATIONS_SCHEMA)
    night(con, write_file, "day1.csv", range(30), 1)
    assert unknown_dataset(con, "listens") is None
    assert why_no_list(con, "listens", "u1") == (
        "listens has no ranking champion yet: `encore nightly` trains and scores one"
    )
    record_gate_decision(con, train_and_publish(con, home), True, ["first night"], [], {})
    assert why_no_list(con, "listens", "u1").startswith(
        "listens's champion v1 has not scored its lists yet"
    )
    score_dataset(con, "listens", home.root / "exports", chunk_users=7)
    night(con, write_file, "day2.csv", range(30, 32), 2)  # u30, u31 arrive after the scoring
    assert why_no_list(con, "listens", "u30").startswith(
        "user 'u30' of listens arrived after the last scoring"
    )


def test_every_user_gets_k_unseen_items_new_users_from_popularity(con, scored):
    assert scored["users"] == 35 and scored["fallback_users"] == 5
    assert scored["source"] == "model" and scored["model_version"] == scored["champion"] == 1
    rows = con.execute("SELECT user_id, rank, item_id, source FROM recommendations").fetchall()
    assert len(rows) == scored["rows"] == 35 * 5
    seen = set(con.execute("SELECT user_id, item_id FROM training_interactions").fetchall())
    assert not [r for r in rows if (r[0], r[2]) in seen]
    sources = dict(
        con.execute("SELECT user_id, any_value(source) FROM recommendations GROUP BY 1").fetchall()
    )
    assert {u for u, s in sources.items() if s == "fallback"} == {f"u{i}" for i in range(30, 35)}
    ranks = con.execute("SELECT DISTINCT rank FROM recommendations ORDER BY 1").fetchall()
    assert [r[0] for r in ranks] == [1, 2, 3, 4, 5]


def test_parquet_export_matches_the_table_and_a_rescore_replaces_it(con, home, scored):
    table = pq.read_table(scored["parquet"])
    assert table.num_rows == scored["rows"]
    assert set(table.column_names) >= {
        "user_id",
        "rank",
        "item_id",
        "score",
        "model_kind",
        "model_version",
        "generated_at",
        "source",
    }
    again = score_dataset(con, "listens", home.root / "exports")
    assert con.execute("SELECT count(*) FROM recommendations").fetchone()[0] == again["rows"]


def test_tampered_scorer_is_refused(con, home, scored):
    path = Path(version_row(con, scored["model_version"])["artifact_dir"]) / "scorer.onnx"
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(RegistryError, match="tampered or corrupt"):
        score_dataset(con, "listens", home.root / "exports")


def test_cli_lists_models_shows_recommendations_and_guards_overrides(con, home, scored):
    import os
    import subprocess
    import sys

    from tasks.score.names import load_item_names

    titles = home.root / "tracks.dat"
    titles.write_text(
        "id\tname\turl\tpicture\n" + "".join(f"t{i}\tTrack {i}\t-\t-\n" for i in range(40))
    )
    load_item_names(con, "listens", titles, "lastfm-artists")
    con.close()  # DuckDB allows one writing process: hand the file to the CLI
    encore = Path(sys.executable).parent / "encore"
    env = {**os.environ, "ENCORE_HOME": str(home.root)}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(encore), *args], capture_output=True, text=True, env=env)

    listed = run("models")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("v1    gat-bpr      ranking  listens")
    assert "champion" in listed.stdout
    shown = run("recommend", "u3", "--dataset", "listens", "-k", "3")
    assert shown.returncode == 0, shown.stderr
    first = shown.stdout.splitlines()[0]
    assert first.startswith("  1. t") and "(model, gat-bpr v1)" in first
    item = first.split()[1]
    assert f"{item} \u2014 Track {item[1:]}" in first  # the item's name, from item_names
    newcomer = run("recommend", "u31", "--dataset", "listens")
    assert "(fallback, gat-bpr v1)" in newcomer.stdout
    # Each way of finding no list says which, in one line: a typo in the dataset (usage, 2),
    # a user the dataset never saw (1).
    typo = run("recommend", "u3", "--dataset", "listen")
    assert typo.returncode == 2
    assert typo.stderr.strip() == (
        "no dataset 'listen' in the warehouse (datasets: listens); did you mean 'listens'?"
    )
    # A user never seen gets the cold-start list, said on stderr, the same for every stranger.
    stranger = run("recommend", "nobody", "--dataset", "listens", "-k", "3")
    assert stranger.returncode == 0, stranger.stderr
    (line,) = stranger.stderr.strip().splitlines()
    assert line.startswith("user 'nobody' has no history in listens: the cold-start list")
    assert [row.split()[0] for row in stranger.stdout.splitlines()] == ["1.", "2.", "3."]
    assert all(row.endswith("(cold start)") for row in stranger.stdout.splitlines())
    assert run("recommend", "somebody", "--dataset", "listens", "-k", "3").stdout == stranger.stdout
    assert run("models", "--dataset", "listen").returncode == 2
    again = run("promote", "1")
    assert again.returncode == 1 and "already is the champion" in again.stderr
    back = run("rollback", "--dataset", "listens")
    assert back.returncode == 1 and "has no predecessor" in back.stderr


def test_a_serving_refit_scores_for_its_champion_and_a_baseline_marks_its_rows(con, home, scored):
    from models_src.baselines import most_popular
    from tasks.registry.publish import publish_baseline

    export = export_interactions(con, "listens", home.root / "exports" / "listens.parquet")
    data = Interactions.from_parquet(Path(export["path"]))  # both days: every user is known
    baseline = most_popular(data)
    config = {"model": "most-popular"}
    version = publish_baseline(
        con, baseline, data, "listens", home.root / "runs" / "mp", home.root / "models", 5,
        {}, None, config,
    )  # fmt: skip
    record_gate_decision(con, version, True, ["baseline"], [], {})
    refit = publish_baseline(
        con, baseline, data, "listens", home.root / "runs" / "mp-all", home.root / "models", 5,
        {}, None, config, refit_of=version,
    )  # fmt: skip
    result = score_dataset(con, "listens", home.root / "exports")
    assert (result["model_version"], result["champion"], result["source"]) == (
        refit,
        version,
        "baseline",
    )
    rows = con.execute("SELECT DISTINCT model_kind, model_version, source FROM recommendations")
    assert set(rows.fetchall()) == {("most-popular", refit, "baseline")}  # everyone is known
    assert not (home.root / "exports" / "recommendations_listens_gat-bpr.parquet").exists()
    assert Path(result["parquet"]).name == "recommendations_listens_ranking.parquet"
