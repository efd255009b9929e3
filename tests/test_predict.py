"""Rating pairs: the ONNX pair graph (with bias fallback) and `encore predict`."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pyarrow.csv as pacsv
import pytest
import torch
from conftest import spec_for

from models_src.baselines import bias_baseline
from models_src.checkpoint import load_checkpoint
from models_src.config import TrainConfig
from models_src.data import Interactions, split_interactions
from models_src.learners import make_learner
from models_src.models import RatingModel
from models_src.onnx_export import PairScorer, export_pair_scorer
from models_src.trainers import AdvancedTrainer
from tasks.ingest.load import ingest_file
from tasks.ingest.snapshots import open_snapshot, register_dataset
from tasks.registry.publish import build_model, publish_baseline, publish_run
from tasks.registry.registry import record_gate_decision, version_row
from tasks.score.predict import predict_pairs
from tasks.train.export import export_interactions
from tasks.validate.thresholds import ValidationThresholds
from tasks.validate.validation import validate_snapshot


def test_pair_graph_matches_torch_and_falls_back_on_unknown_ids(tmp_path):
    torch.manual_seed(0)
    model = RatingModel(5, 4, 3, global_mean=3.0, rating_range=(1.0, 5.0))
    with torch.no_grad():
        for table in (model.user_embedding, model.item_embedding, model.user_bias, model.item_bias):
            table.weight.normal_()
    path = export_pair_scorer(PairScorer(model), tmp_path / "pairs.onnx", {"kind": "rating"})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    users, items = np.array([0, 4, 2, 9]), np.array([1, 3, 99, 0])
    rating, known = session.run(None, {"users": users, "items": items})
    expected = model.predict(torch.tensor(users[:2]), torch.tensor(items[:2])).numpy()
    np.testing.assert_allclose(rating[:2], expected, atol=1e-5)
    assert known.tolist() == [1, 1, 0, 0]
    user_bias = model.user_bias.weight.detach().squeeze(-1).numpy()
    item_bias = model.item_bias.weight.detach().squeeze(-1).numpy()
    assert rating[2] == pytest.approx(np.clip(3.0 + user_bias[2], 1, 5), abs=1e-5)  # new item
    assert rating[3] == pytest.approx(np.clip(3.0 + item_bias[0], 1, 5), abs=1e-5)  # new user


def test_encore_predict_with_the_champion_rating_model(con, home, write_file, tmp_path):
    rng = np.random.default_rng(1)
    lines = [
        f"u{u},m{m},Drama,{rng.integers(2, 11) / 2},2026-10-01 10:00:{u % 60:02d}"
        for u in range(40)
        for m in rng.choice(30, 8, replace=False)
    ]
    path = write_file("ratings.csv", "user_id,movie_id,genre,rating,rated_at\n" + "\n".join(lines))
    spec = spec_for("encore-ratings", path, "movies")
    register_dataset(con, spec)
    snapshot_id = open_snapshot(con, "movies")
    ingest_file(con, spec, path, snapshot_id)
    validate_snapshot(
        con, snapshot_id, ValidationThresholds(min_users=1, min_items=1, min_interactions=1)
    )
    export = export_interactions(con, "movies", tmp_path / "movies.parquet")
    data = Interactions.from_parquet(tmp_path / "movies.parquet")
    config = TrainConfig(model="rating", epochs=2, embedding_dim=4, lr=0.01)
    learner = make_learner(
        split_interactions(data, "hash", 0.15, 0.15), config, torch.device("cpu")
    )
    artifacts = {
        "snapshot_id": snapshot_id,
        "data": export["path"],
        "user_ids": data.meta["user_ids"],
        "item_ids": data.meta["item_ids"],
    }
    run = tmp_path / "run"
    final = AdvancedTrainer(learner, config, run, artifacts=artifacts, log=lambda _: None).fit()
    version = publish_run(con, run, "movies", final, home.root / "models")
    record_gate_decision(con, version, True, ["first night"], [], {})
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("user_id,item_id\nu1,m3\nnobody,m3\nu1,unknown-movie\n")
    result = predict_pairs(con, "movies", pairs, tmp_path / "out.csv")
    assert result == {
        "pairs": 3,
        "fallback": 2,
        "out": str(tmp_path / "out.csv"),
        "model_version": version,
    }
    out = pacsv.read_csv(tmp_path / "out.csv").to_pylist()
    assert [row["source"] for row in out] == ["model", "fallback", "fallback"]
    state = load_checkpoint(version_row(con, version)["artifact_dir"] + "/best_model.pt")
    model = build_model(state)
    u, m = data.meta["user_ids"].index("u1"), data.meta["item_ids"].index("m3")
    expected = float(model.predict(torch.tensor([u]), torch.tensor([m])))
    assert out[0]["predicted_rating"] == pytest.approx(expected, abs=1e-5)
    assert all(1.0 <= row["predicted_rating"] <= 5.0 for row in out)
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item\nu1,m3\n")
    with pytest.raises(ValueError, match="missing column"):
        predict_pairs(con, "movies", bad, tmp_path / "never.csv")
    # The bias baseline as the serving refit of the champion: `encore predict` uses the refit.
    baseline = bias_baseline(data, regularization=5.0)
    refit = publish_baseline(
        con, baseline, data, "movies", tmp_path / "bias", home.root / "models", 10, {}, None,
        {"model": "bias"}, refit_of=version,
    )  # fmt: skip
    result = predict_pairs(con, "movies", pairs, tmp_path / "refit.csv")
    assert result["model_version"] == refit
    out = pacsv.read_csv(tmp_path / "refit.csv").to_pylist()
    b = baseline.buffers
    expected = float(b["offset"] + b["user_bias"][u] + b["item_bias"][m])
    assert out[0]["predicted_rating"] == pytest.approx(min(5.0, max(1.0, expected)), abs=1e-5)
    new_user = float(b["offset"] + b["item_bias"][m])
    assert out[1]["predicted_rating"] == pytest.approx(min(5.0, max(1.0, new_user)), abs=1e-5)
