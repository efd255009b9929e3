"""The gate, run on real trained models: first night, a better model, a worse one."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import spec_for

from models_src.config import TrainConfig
from models_src.data import Interactions, split_interactions
from models_src.gate import GateThresholds
from models_src.learners import make_learner
from models_src.trainers import AdvancedTrainer
from tasks.warehouse.export import export_interactions
from tasks.warehouse.gating import gate_version
from tasks.warehouse.ingest import ingest_file, open_snapshot, register_dataset
from tasks.warehouse.publish import publish_run
from tasks.warehouse.validation import ValidationThresholds, validate_snapshot


def planted_listens(con, write_file) -> Path:
    """Even users play even tracks, odd users odd tracks (popularity alone can't tell)."""
    lines = []
    for user in range(80):
        for step in range(12):
            track = (user * 7 + step * 2) % 40 + user % 2
            lines.append(
                f"u{user},t{track % 40 // 2 * 2 + user % 2},a{track % 4},"
                f"2026-10-01 {step:02d}:{user % 60:02d}:00,1000"
            )
    path = write_file(
        "listens.csv", "user_id,track_id,artist_id,played_at,ms_played\n" + "\n".join(lines) + "\n"
    )
    spec = spec_for("encore-listens", path, "listens")
    register_dataset(con, spec)
    snapshot_id = open_snapshot(con, "listens")
    ingest_file(con, spec, path, snapshot_id)
    loose = ValidationThresholds(min_users=1, min_items=1, min_interactions=1)
    assert validate_snapshot(con, snapshot_id, loose)["status"] == "passed"
    return Path(export_interactions(con, "listens", path.parent / "export.parquet")["path"])


def train_version(con, home, export: Path, name: str, lr: float, epochs: int) -> int:
    data = Interactions.from_parquet(export)
    torch.manual_seed(0)
    config = TrainConfig(
        epochs=epochs,
        lr=lr,
        embedding_dim=16,
        heads=2,
        num_layers=1,
        batch_size=512,
        negatives=4,
        patience=50,
    )
    learner = make_learner(
        split_interactions(data, "hash", 0.15, 0.15), config, torch.device("cpu")
    )
    artifacts = {
        "snapshot_id": data.meta["snapshot_id"],
        "data": str(export),
        "user_ids": data.meta["user_ids"],
        "item_ids": data.meta["item_ids"],
    }
    run = home.root / "runs" / name
    final = AdvancedTrainer(learner, config, run, artifacts=artifacts, log=lambda _: None).fit()
    return publish_run(con, run, "listens", final, home.root / "models")


def test_first_night_better_and_worse_challengers(con, home, write_file):
    export = planted_listens(con, write_file)
    thresholds = GateThresholds(popularity_margin=0.05)
    first = train_version(con, home, export, "good", lr=0.05, epochs=15)
    verdict, tables = gate_version(con, first, export, thresholds)
    assert verdict.promote, verdict.reasons
    assert "first night" in verdict.reasons[-1]
    assert (
        tables["challenger"]["test"]["recall@10"] > tables["popularity"]["test"]["recall@10"] + 0.05
    )

    worse = train_version(con, home, export, "barely-trained", lr=1e-5, epochs=1)
    verdict, tables = gate_version(con, worse, export, thresholds)
    assert not verdict.promote
    assert any(r.startswith("REJECT: test recall@10") for r in verdict.reasons)
    statuses = dict(con.execute("SELECT version, status FROM model_versions").fetchall())
    assert statuses == {first: "champion", worse: "rejected"}
    logged = con.execute(
        "SELECT challenger, promoted, compared_json IS NOT NULL, thresholds_json FROM promotions"
        " ORDER BY promotion_id"
    ).fetchall()
    assert [(c, p, has) for c, p, has, _ in logged] == [(first, True, True), (worse, False, True)]
    assert '"popularity_margin": 0.05' in logged[0][3]


def test_served_model_scores_unknown_ids_as_it_would_serve_them():
    from models_src.serving import ServedModel

    buffers = {
        "user_emb": torch.tensor([[1.0, 0.0]]),
        "item_emb": torch.tensor([[2.0, 0.0], [0.0, 1.0]]),
        "user_bias": torch.tensor([0.5]),
        "item_bias": torch.tensor([0.0, 0.25]),
        "offset": torch.tensor(3.0),
    }
    popularity = torch.tensor([5.0, 1.0, 9.0])  # tonight there are 3 items, 2 known to the model
    model = ServedModel(buffers, popularity, rating_range=(1.0, 5.0))
    scores = model.score_users(torch.tensor([0, 1]))
    assert scores[0].tolist() == [5.5, 3.75, float("-inf")]  # the new item cannot be recommended
    assert torch.allclose(scores[1], torch.log1p(popularity))  # a new user gets popularity
    pairs = model.predict_pairs(torch.tensor([0, 0, 1]), torch.tensor([0, 2, 1]))
    # known pair: 3 + 0.5 + 0 + 2 -> clipped to 5; unknown item: 3 + 0.5; unknown user: 3 + 0.25
    assert pairs.tolist() == [5.0, 3.5, 3.25]
