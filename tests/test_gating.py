"""The gate, run on real trained models and baselines: first night, a better model, a worse one,
a baseline that serves, a champion under other settings, and the serving refit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import spec_for

from models_src.checkpoint import load_checkpoint, save_checkpoint
from models_src.config import TrainConfig
from models_src.data import Interactions, split_interactions
from models_src.gate import GateThresholds
from models_src.learners import make_learner
from models_src.runs import fit_baselines_run, load_baseline, refit_run, train_run
from models_src.trainers import AdvancedTrainer
from tasks.gate.gating import Night, gate_version
from tasks.ingest.load import ingest_file
from tasks.ingest.snapshots import open_snapshot, register_dataset
from tasks.refit.refit import publish_serving_refit
from tasks.registry.publish import build_scorer, publish_run
from tasks.registry.registry import champion, serving_version, version_row
from tasks.train.export import export_interactions
from tasks.validate.thresholds import ValidationThresholds
from tasks.validate.validation import validate_snapshot


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


def train_version(
    con, home, export: Path, name: str, lr: float, epochs: int, item_item: dict | None = None
) -> int:
    """A GAT-BPR trained and published; `item_item`: a blend choice written into its checkpoint
    first, as training's choice on val would be."""
    data = Interactions.from_parquet(export)
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
    if item_item is not None:
        best = load_checkpoint(run / "best_model.pt")
        save_checkpoint(run / "best_model.pt", {**best, "item_item": item_item})
    return publish_run(con, run, "listens", final, home.root / "models")


def baselines(home, export: Path, families=("most-popular",)) -> dict[str, str]:
    config = TrainConfig().to_dict()
    return fit_baselines_run(config, str(export), home.root / "runs" / "baselines", list(families))


def gate(con, home, version: int, export: Path, files: dict) -> tuple:
    return gate_version(con, version, export, home.root / "models", GateThresholds(), files)


def statuses(con) -> dict[int, tuple[str, str]]:
    rows = con.execute("SELECT version, kind, status FROM model_versions ORDER BY 1").fetchall()
    return {version: (kind, status) for version, kind, status in rows}


def test_first_night_better_and_worse_challengers(con, home, write_file):
    export = planted_listens(con, write_file)
    files = baselines(home, export)
    first = train_version(con, home, export, "good", lr=0.05, epochs=15)
    verdict, tables = gate(con, home, first, export, files)
    assert verdict.serve == f"challenger v{first}" and verdict.promote, verdict.reasons
    assert verdict.rule.startswith("first night")
    challenger = tables[f"challenger v{first}"]
    assert challenger["val"]["recall@10"] > tables["most-popular"]["val"]["recall@10"]

    worse = train_version(con, home, export, "barely-trained", lr=1e-5, epochs=1)
    verdict, tables = gate(con, home, worse, export, files)
    assert not verdict.promote and verdict.serve == f"champion v{first}"
    assert any(r.startswith("NO: non-inferior") for r in verdict.reasons)
    assert statuses(con) == {first: ("gat-bpr", "champion"), worse: ("gat-bpr", "rejected")}
    logged = con.execute(
        "SELECT challenger, promoted, compared_json IS NOT NULL, thresholds_json, rule"
        " FROM promotions ORDER BY promotion_id"
    ).fetchall()
    assert [(c, p, has) for c, p, has, _, _ in logged] == [
        (first, True, True),
        (worse, False, True),
    ]
    assert '"tolerance": 0.05' in logged[0][3]
    assert logged[1][4] == "no contender beat the champion; it keeps serving"
    evaluated = json.loads(version_row(con, first)["evaluation_json"])
    assert evaluated["split"] == {"method": "hash", "val_ratio": 0.15, "test_ratio": 0.15,
                                  "salt": "encore"}  # fmt: skip


def test_a_baseline_that_wins_the_first_night_serves_flagged_and_stays_until_beaten(
    con, home, write_file
):
    export = planted_listens(con, write_file)
    files = baselines(home, export, ("most-popular", "als"))
    weak = train_version(con, home, export, "barely-trained", lr=1e-5, epochs=1)
    verdict, tables = gate(con, home, weak, export, files)
    assert verdict.serve_family == "als" and verdict.serve_role == "baseline", tables
    assert verdict.warnings[0].startswith("the als baseline serves, not a trained model")
    als = champion(con, "ranking", "listens")
    assert (als["kind"], als["slot"], als["role"]) == ("als", "ranking", "evaluated")
    assert json.loads(als["config_json"])["baseline"]["regularization"] > 0  # chosen on val
    assert statuses(con)[weak] == ("gat-bpr", "rejected")
    # ALS fits this planted data almost perfectly: a good GAT-BPR ties it, so ALS keeps serving,
    # and the night still says that a baseline serves.
    good = train_version(con, home, export, "good", lr=0.05, epochs=15)
    verdict, _ = gate(con, home, good, export, files)
    assert verdict.serve == f"champion v{als['version']}" and not verdict.promote
    assert "it is the champion, and challenger" in verdict.warnings[0]


def test_a_champion_evaluated_under_another_salt_is_not_compared(con, home, write_file):
    export = planted_listens(con, write_file)
    files = baselines(home, export)
    first = train_version(con, home, export, "good", lr=0.05, epochs=15)
    gate(con, home, first, export, files)
    con.execute(
        "UPDATE model_versions SET evaluation_json = replace(evaluation_json,"
        ' \'"salt": "encore"\', \'"salt": "encore-2025"\') WHERE version = ?',
        [first],
    )
    second = train_version(con, home, export, "good-again", lr=0.05, epochs=15)
    verdict, tables = gate(con, home, second, export, files)
    assert not any(name.startswith("champion") for name in tables)
    assert any("first-night rules: champion v1 cannot be compared: its split was" in r
               for r in verdict.reasons)  # fmt: skip


def test_serving_refit_is_registered_and_a_collapsed_one_refused(con, home, write_file):
    export = planted_listens(con, write_file)
    files = baselines(home, export)
    first = train_version(con, home, export, "good", lr=0.05, epochs=15)
    gate(con, home, first, export, files)
    refit = refit_run(home.root / "runs" / "good", str(export), home.root / "runs" / "all")
    assert refit["epochs"] == load_checkpoint(home.root / "runs/good/best_model.pt")["best_epoch"]
    thresholds = GateThresholds()
    done = publish_serving_refit(
        con, first, {"run_dir": refit["run_dir"]}, export, home.root / "models", thresholds
    )
    row = version_row(con, done["version"])
    assert (row["role"], row["refit_of"], row["status"]) == ("serving", first, "refit")
    assert serving_version(con, champion(con, "ranking", "listens"))["version"] == row["version"]
    # A refit whose embeddings collapsed to one vector ranks no better than chance.
    state = load_checkpoint(Path(refit["run_dir"]) / "best_model.pt")
    broken_embeddings = {
        "collapsed": ((slice(None),), 0.1, "it looks collapsed"),
        "nan": ((0, 0), float("nan"), "NaN or infinite"),  # on top of the collapse
    }
    for name, (cells, value, refusal) in broken_embeddings.items():
        state["model"]["embedding.weight"][cells] = value
        run_dir = home.root / "runs" / name
        run_dir.mkdir()
        save_checkpoint(run_dir / "best_model.pt", state)
        refused = publish_serving_refit(
            con, first, {"run_dir": str(run_dir)}, export, home.root / "models", thresholds
        )
        assert refusal in refused["refused"]


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


def test_the_same_snapshot_and_parameters_give_the_same_metrics(con, home, write_file):
    """Reproducible to 1e-6 on CPU: training, the baselines and the gate's evaluation."""
    export = planted_listens(con, write_file)
    config = {
        **TrainConfig(epochs=3, embedding_dim=16, heads=2, num_layers=1, batch_size=512).to_dict(),
        "model": "gat-bpr",
    }
    runs = [train_run(config, str(export), home.root / "runs" / f"twin-{i}", log=lambda _: None)
            for i in range(2)]  # fmt: skip
    (_, first), (_, second) = runs
    for part in ("val", "test"):
        for metric, value in first[part].items():
            assert second[part][metric] == pytest.approx(value, abs=1e-6), (part, metric)
    files = [
        fit_baselines_run(config, str(export), home.root / f"baselines-{i}", ["als"])["als"]
        for i in range(2)
    ]
    fitted = [load_baseline(Path(path)) for path in files]
    for name, table in fitted[0].buffers.items():
        assert torch.allclose(table, fitted[1].buffers[name], atol=1e-6), name
    night = Night.load(export, config, 10)
    tables = [
        night.contender("twin", "challenger", "gat-bpr", night.served(_buffers(run)), 10)[1]
        for run in runs
    ]
    for part, metrics in tables[0].items():
        for metric, value in metrics.items():
            assert tables[1][part][metric] == pytest.approx(value, abs=1e-6, nan_ok=True)


def _buffers(run) -> dict:
    trainer, _ = run
    state = load_checkpoint(trainer.output_dir / "best_model.pt")
    return dict(build_scorer(state, 10).state_dict())


@pytest.fixture
def rankings(monkeypatch) -> list[tuple[str, ...]]:
    """The parts ranked through the gate module's `evaluate_served`, one entry per model ranked:
    by the gate (what it could not reuse) or by `rank_run_ahead`."""
    import tasks.gate.gating as gating

    ranked, real = [], gating.evaluate_served
    monkeypatch.setattr(
        gating,
        "evaluate_served",
        lambda protocol, model, parts, k: ranked.append(parts) or real(protocol, model, parts, k),
    )
    return ranked


def test_each_baseline_is_ranked_once_where_it_is_fitted_and_the_gate_reuses_it(
    con, home, write_file, rankings
):
    """The baselines task saves each baseline's val and test vectors (ALS's val from choosing its
    setting); they equal a full ranking of the served model, and the gate ranks only the
    challenger. Another night's record, another K or a replaced baseline is not reused."""
    from models_src.evaluation import HELD_OUT, load_results
    from models_src.runs import evaluation_file, evaluation_key, save_baseline

    export = planted_listens(con, write_file)
    files = baselines(home, export, ("most-popular", "als"))
    night = Night.load(export, TrainConfig().to_dict(), 10)
    for family, file in files.items():
        path = Path(file)
        buffers = load_baseline(path).buffers
        saved = load_results(evaluation_file(path), evaluation_key(buffers, night.record))
        served = night.served(buffers)
        ranked = night.protocol.evaluate_parts(served.score_users, HELD_OUT, 10)  # full matrix
        assert set(saved) == set(HELD_OUT), family
        for part in HELD_OUT:
            assert saved[part].users.tolist() == ranked[part].users.tolist()
            assert saved[part].cold.tolist() == ranked[part].cold.tolist()
            assert saved[part].summary == pytest.approx(ranked[part].summary, nan_ok=True)
            for name, vector in ranked[part].per_user.items():
                np.testing.assert_array_equal(saved[part].per_user[name], vector, err_msg=name)
        other_k = evaluation_key(buffers, {**night.record, "k": 5})
        assert load_results(evaluation_file(path), other_k) == {}

    version = train_version(con, home, export, "good", lr=0.05, epochs=3)
    gate(con, home, version, export, files)
    assert rankings == [HELD_OUT]  # the challenger alone
    als_file = Path(files["als"])
    replaced = load_baseline(als_file)
    replaced.buffers["user_emb"] += 1.0
    save_baseline(replaced, als_file)
    replaced_key = evaluation_key(replaced.buffers, night.record)
    assert load_results(evaluation_file(als_file), replaced_key) == {}


def test_a_run_ranked_where_it_trained_is_published_from_its_tables_and_not_ranked_again(
    con, home, write_file, rankings
):
    """The train task's `rank_run_ahead`: publish exports the very tables build_scorer makes,
    the gate reuses the saved ranking (ranking nothing itself on a first night) and reports what
    a fresh ranking gives; a ranking saved for other tables is not reused."""
    import tasks.gate.gating as gating
    from models_src.evaluation import load_results
    from models_src.runs import evaluation_key
    from tasks.registry.publish import RANKED_AHEAD_FILE, load_version_tables

    export = planted_listens(con, write_file)
    files = baselines(home, export, ("most-popular", "als"))
    config = {
        **TrainConfig(epochs=3, embedding_dim=16, heads=2, num_layers=1, batch_size=512).to_dict(),
        "model": "gat-bpr",
    }
    run = home.root / "runs" / "ranked-ahead"
    _, final = train_run(config, str(export), run, log=lambda _: None)
    gating.rank_run_ahead(run, export, 10)
    assert rankings == [("val", "test")]  # where it trained
    rankings.clear()
    built = build_scorer(load_checkpoint(run / "best_model.pt"), 10).state_dict()
    metrics = {part: final[part] for part in ("val", "test")}
    version = publish_run(con, run, "listens", metrics, home.root / "models")
    artifact_dir = Path(version_row(con, version)["artifact_dir"])
    published = load_version_tables(artifact_dir)["buffers"]
    assert set(published) == set(built)
    for name, table in built.items():
        assert torch.equal(published[name], table), name

    _, tables = gate(con, home, version, export, files)
    assert rankings == []
    night = Night.load(export, config, 10)
    _, fresh = night.contender("fresh", "challenger", "gat-bpr", night.served(published), 10)
    for part, summary in fresh.items():
        assert tables[f"challenger v{version}"][part] == pytest.approx(summary, nan_ok=True)
    other = {**published, "user_emb": published["user_emb"] + 1.0}
    key = evaluation_key(other, night.record)
    assert load_results(artifact_dir / RANKED_AHEAD_FILE, key) == {}


def test_the_champion_ranked_beside_training_is_not_ranked_again_by_the_gate(
    con, home, write_file, rankings
):
    """`rank_champion_ahead` (the baselines task's, on the task runner): the gate reuses that
    ranking of the champion and reports what a fresh ranking gives; a champion that cannot be
    compared tonight is not ranked; a ranking of other tables is not used."""
    import tasks.gate.gating as gating
    from tasks.gate.tasks import champion_to_rank_task

    export = planted_listens(con, write_file)
    files = baselines(home, export)
    first = train_version(con, home, export, "good", lr=0.05, epochs=15)
    gate(con, home, first, export, files)
    held = champion_to_rank_task.fn(str(home.warehouse), "listens", "gat-bpr")
    assert held is not None and held["version"] == first
    config = {**TrainConfig().to_dict(), "model": "gat-bpr"}
    ahead = home.root / "runs" / "champion.evaluation.npz"
    night = Night.load(export, config, 10)
    said = gating.rank_champion_ahead(held, night, config, 10, ahead)
    assert said.startswith(f"champion v{first} ranked") and ahead.exists()
    second = train_version(con, home, export, "barely-trained", lr=1e-5, epochs=1)
    rankings.clear()
    _, tables = gate_version(
        con, second, export, home.root / "models", GateThresholds(), files, ahead
    )
    assert rankings == [("val", "test")]  # the challenger alone: it was not ranked ahead
    model, _ = gating._version_contender(night, version_row(con, first))
    _, fresh = night.contender("fresh", "champion", "gat-bpr", model, 10)
    for part, summary in fresh.items():
        assert tables[f"champion v{first}"][part] == pytest.approx(summary, nan_ok=True)

    rankings.clear()
    stale = {**held, "evaluation_json": held["evaluation_json"].replace('"encore"', '"other"')}
    said = gating.rank_champion_ahead(stale, night, config, 10, home.root / "stale.npz")
    assert said.startswith("not ranked: champion v") and rankings == []
    third = train_version(con, home, export, "barely-again", lr=1e-5, epochs=1)
    other_tables = home.root / "runs" / "baselines" / "most-popular.evaluation.npz"
    ahead.write_bytes(other_tables.read_bytes())
    gate_version(con, third, export, home.root / "models", GateThresholds(), files, ahead)
    assert rankings == [("val", "test"), ("val", "test")]  # challenger and champion, both here


def test_a_blend_of_neighbour_lists_is_published_gated_and_refitted_without_a_dense_table(
    con, home, write_file
):
    """Past the dense cap the blend's weights are neighbour lists: the published ONNX file holds
    them (items x k, never items x items), the gate's served model reads them back from it and
    scores as the file does, and the serving refit rebuilds them from the recorded choice."""
    import onnx
    import onnxruntime as ort

    from tasks.registry.publish import load_version_tables

    export = planted_listens(con, write_file)
    files = baselines(home, export)
    choice = {"method": "rp3beta", "params": {"alpha": 1.0, "beta": 0.5, "k": 6}, "weight": 0.5}
    version = train_version(con, home, export, "lists", lr=0.05, epochs=8, item_item=choice)
    folder = Path(version_row(con, version)["artifact_dir"])
    graph = onnx.load(folder / "scorer.onnx", load_external_data=False).graph
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    num_items = shapes["item_emb_t"][1]
    assert shapes["neighbour_items"] == shapes["neighbour_weights"] == [num_items, 6]
    assert [num_items, num_items] not in shapes.values()
    buffers = load_version_tables(folder)["buffers"]
    assert buffers["neighbour_items"].dtype == torch.int64
    night = Night.load(export, load_checkpoint(folder / "embeddings.pt")["config"], 10)
    served = night.served(buffers, None)
    users = torch.arange(len(buffers["user_emb"]))
    history = night.splits["train"]
    exclude = torch.zeros(len(users), num_items, dtype=torch.bool)
    exclude[history.user, history.item] = True
    session = ort.InferenceSession(str(folder / "scorer.onnx"))
    items, scores = session.run(None, {"users": users.numpy(), "exclude": exclude.numpy()})
    expected = served.score_users(users).masked_fill(exclude, float("-inf"))
    np.testing.assert_allclose(scores, expected.topk(10).values.numpy(), atol=1e-4)
    verdict, _ = gate(con, home, version, export, files)
    assert verdict.serve == f"challenger v{version}" and verdict.promote, verdict.reasons
    refit = refit_run(home.root / "runs" / "lists", str(export), home.root / "runs" / "all")
    assert load_checkpoint(Path(refit["run_dir"]) / "best_model.pt")["item_item"] == choice
    done = publish_serving_refit(
        con, version, {"run_dir": refit["run_dir"]}, export, home.root / "models", GateThresholds()
    )
    refitted = Path(version_row(con, done["version"])["artifact_dir"]) / "scorer.onnx"
    names = {t.name for t in onnx.load(refitted, load_external_data=False).graph.initializer}
    assert {"neighbour_items", "neighbour_weights"} <= names and "item_item" not in names


def test_the_nightly_blend_serves_lists_and_holds_no_items_by_items_matrix_past_the_cap(
    con, home, write_file, monkeypatch
):
    """With the nightly's defaults the blend's candidates are neighbour lists: EASE^R's dense
    weights (items² floats) are never computed; past `item_item_max_items` not even EASE^R's
    items x items inverse is (the planted data has more users than items), only RP3beta's
    lists, built block by block."""
    import models_src.item_item as item_item
    from models_src.params import GatBprParams

    def dense(*_args, **_kwargs):
        raise AssertionError("EASE^R's dense items x items matrix was built")

    monkeypatch.setattr(item_item, "ease_weights", dense)
    monkeypatch.setattr(item_item, "_symmetric_inverse_in_place", dense)
    export = planted_listens(con, write_file)
    defaults = GatBprParams()
    assert defaults.item_item and not defaults.item_item_dense
    config = {
        **TrainConfig(epochs=2, embedding_dim=16, heads=2, num_layers=1, batch_size=512).to_dict(),
        "model": "gat-bpr",
        "item_item": True,
        "recency_prior": False,
    }
    tried = {}
    for cap in (defaults.item_item_max_items, 10):  # the planted catalogue has 40 items
        run = home.root / "runs" / f"cap-{cap}"
        _, final = train_run({**config, "item_item_max_items": cap}, str(export), run, log=print)
        tried[cap] = {name.split(" (")[0] for name in final["item_item"]["val"]}
    assert tried[defaults.item_item_max_items] == {"embeddings alone", "ease", "rp3beta"}
    assert tried[10] == {"embeddings alone", "rp3beta"}
