"""models_src: splits, graph, models, trainers (early stopping, scheduler, resume), CLIs."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from models_src import bpr_learner as learners_module
from models_src import train_improved
from models_src.bpr_learner import BPRLearner
from models_src.checkpoint import load_checkpoint
from models_src.config import TrainConfig
from models_src.data import (
    TEST,
    TRAIN,
    VAL,
    Interactions,
    bipartite_edge_index,
    day_hash_split,
    distinct_sorted,
    hash_split,
    split_interactions,
    time_cuts,
    time_split,
)
from models_src.learner_base import Learner
from models_src.learners import make_learner
from models_src.models import GATBPR
from models_src.rating_learner import RatingLearner
from models_src.trainers import AdvancedTrainer, improved


def planted(
    n_users: int = 60, n_items: int = 40, per_user: int = 12, seed: int = 0
) -> Interactions:
    """Two taste clusters: even users like even items, odd users odd items."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(n_users):
        pool = np.arange(u % 2, n_items, 2)
        chosen = rng.choice(pool, size=per_user, replace=False)
        users += [u] * per_user
        items += chosen.tolist()
    ratings = np.where(np.array(items) % 2 == np.array(users) % 2, 4.5, 1.5).astype(np.float32)
    ts = 1_700_000_000 + np.arange(len(users)) * 3_600
    groups = np.arange(n_items) % 2
    return Interactions(
        np.array(users),
        np.array(items),
        n_users,
        n_items,
        ratings,
        ts,
        groups,
        {"rating_scale": [1.0, 5.0]},
    )


# --- data ----------------------------------------------------------------------------------


def test_hash_split_is_stable_and_close_to_the_ratios():
    data = Interactions(np.repeat(np.arange(500), 40), np.tile(np.arange(40), 500), 500, 40)
    first = hash_split(data, 0.1, 0.1)
    assert np.array_equal(first, hash_split(data, 0.1, 0.1))
    shares = np.bincount(first, minlength=3) / len(first)
    assert abs(shares[TRAIN] - 0.8) < 0.01 and abs(shares[VAL] - 0.1) < 0.01
    # A pair keeps its bucket when more data arrives (only its own indices are hashed).
    grown = Interactions(np.append(data.user, 3), np.append(data.item, 39), 500, 40)
    assert np.array_equal(hash_split(grown, 0.1, 0.1)[:-1], first)
    assert not np.array_equal(hash_split(data, 0.1, 0.1, salt="other"), first)


def test_salts_that_share_a_prefix_split_differently():
    data = Interactions(np.repeat(np.arange(500), 40), np.tile(np.arange(40), 500), 500, 40)
    # The first 8 bytes agree: a salt cut to 8 bytes would make these two splits identical.
    assert not np.array_equal(
        hash_split(data, 0.1, 0.1, salt="encore-2025"),
        hash_split(data, 0.1, 0.1, salt="encore-2026"),
    )


def days_of_events(days: int = 200, per_day: int = 5) -> Interactions:
    ts = np.repeat(np.arange(days) * 86_400 + 1_700_000_000, per_day) + np.tile(
        np.arange(per_day) * 60, days
    )
    n = days * per_day
    return Interactions(np.arange(n) % 7, np.arange(n) % 11, 7, 11, ts=ts)


def test_time_split_is_a_forward_holdout():
    data = days_of_events()
    buckets = time_split(data, 0.15, 0.15)
    last_train = data.ts[buckets == TRAIN].max()
    assert last_train < data.ts[buckets == VAL].min()
    assert data.ts[buckets == VAL].max() < data.ts[buckets == TEST].min()
    shares = np.bincount(buckets, minlength=3) / len(buckets)
    assert shares.tolist() == pytest.approx([0.70, 0.15, 0.15], abs=0.01)
    assert time_cuts(data, 0.15, 0.15) == (
        data.ts[buckets == VAL].min(),
        data.ts[buckets == TEST].min(),
    )
    # One timestamp is never cut in two: equal times go to the later part.
    same_time = Interactions(np.arange(10) % 3, np.arange(10) % 4, 3, 4, ts=np.full(10, 5))
    assert set(time_split(same_time, 0.2, 0.2).tolist()) == {TEST}
    with pytest.raises(ValueError, match="needs timestamps"):
        time_split(Interactions(np.zeros(2), np.zeros(2), 1, 1), 0.1, 0.1)


def test_day_hash_split_keeps_whole_days_together():
    data = days_of_events()
    buckets = day_hash_split(data, 0.15, 0.15)
    per_day = buckets.reshape(200, 5)
    assert (per_day == per_day[:, :1]).all()
    assert set(np.unique(buckets)) == {TRAIN, VAL, TEST}
    assert set(split_interactions(data, "day-hash", 0.15, 0.15)) == {"train", "val", "test"}
    with pytest.raises(ValueError, match="unknown split method 'days'"):
        split_interactions(data, "days", 0.15, 0.15)


@pytest.mark.parametrize("size, high", [(0, 5), (1, 5), (2, 1), (5_000, 50), (5_000, 10**12)])
def test_distinct_sorted_is_np_unique(size, high):
    """The sort-based distinct keys every pair key, edge and Protocol goes through: np.unique's
    result (duplicates many or none, empty and one-element arrays), as int64."""
    keys = np.random.default_rng(size).integers(0, high, size, dtype=np.int64)
    expected = np.unique(keys)
    got = distinct_sorted(keys)
    assert got.dtype == expected.dtype and np.array_equal(got, expected)


def test_bipartite_graph_is_undirected_with_group_nodes():
    # user 1 listened to item 1 twice: one edge each way
    data = Interactions(
        np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 2, 2, item_group=np.array([0, 0])
    )
    edges = bipartite_edge_index(data).T.tolist()
    # users 0-1, items 2-3, group node 4; each edge once, sorted by (source, target)
    assert edges == [[0, 2], [0, 3], [1, 3], [2, 0], [2, 4], [3, 0], [3, 1], [3, 4], [4, 2], [4, 3]]


# --- models -------------------------------------------------------------------------------


def test_gat_bpr_shapes_and_recommend_masks_excluded_items():
    model = GATBPR(3, 5, 0, embedding_dim=8, heads=2, num_layers=2)
    edge_index = torch.tensor([[0, 3, 1, 4], [3, 0, 4, 1]])
    assert model.get_embedding(edge_index).shape == (8, 8)
    assert model(edge_index, torch.tensor([0, 1]), torch.tensor([2, 3])).shape == (2,)
    exclude = torch.zeros(2, 5, dtype=torch.bool)
    exclude[:, :4] = True
    items, scores = model.recommend(edge_index, torch.tensor([0, 2]), k=1, exclude=exclude)
    assert items.flatten().tolist() == [4, 4] and torch.isfinite(scores).all()


def test_lightgcn_propagation_is_the_symmetric_normalised_mean_and_its_graph_is_cached():
    """Without attention a layer is D^-1/2 A D^-1/2 x (LightGCN), from a matrix built once
    per edge list; the final embedding is the mean over layers 0..L."""
    model = GATBPR(2, 2, 0, embedding_dim=4, num_layers=2, attention=False)
    edge_index = torch.tensor([[0, 2, 0, 3, 1, 3], [2, 0, 3, 0, 3, 1]])
    adjacency = torch.zeros(4, 4)
    adjacency[edge_index[0], edge_index[1]] = 1.0
    inv_sqrt = adjacency.sum(1).pow(-0.5)
    normalised = inv_sqrt[:, None] * adjacency * inv_sqrt[None, :]
    x0 = model.embedding.weight.detach()
    x1 = normalised @ x0
    expected = (x0 + x1 + normalised @ x1) / 3
    assert torch.allclose(model.get_embedding(edge_index).detach(), expected, atol=1e-6)
    cached = model.propagation_graph(edge_index, 4)
    assert model.propagation_graph(edge_index, 4) is cached
    assert model.propagation_graph(edge_index.clone(), 4) is not cached


def test_the_fused_lightgcn_mean_has_the_layer_by_layer_output_and_gradient():
    """SymmetricLayerMean (the whole graph, no noise, no view) against autograd through each
    layer's sparse product (the path a contrastive view takes): the same embedding and the
    same gradient on the embedding table."""
    data = Interactions(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 0, 2]), 3, 3)
    edge_index = bipartite_edge_index(data)
    model = GATBPR(3, 3, 0, embedding_dim=4, num_layers=3, attention=False)
    weights = torch.randn(6, 4)

    def output_and_gradient(view_layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        model.embedding.weight.grad = None
        out, _ = model.perturbed_embedding(edge_index, view_layer=view_layer)
        (out * weights).sum().backward()
        return out.detach(), model.embedding.weight.grad.clone()

    fused, layered = output_and_gradient(view_layer=0), output_and_gradient(view_layer=1)
    assert torch.allclose(fused[0], layered[0], atol=1e-6)
    assert torch.allclose(fused[1], layered[1], atol=1e-6)
    assert fused[1].abs().sum() > 0


def test_negatives_are_never_train_positives():
    data = planted()
    config = TrainConfig(negatives=16, batch_size=64, embedding_dim=8)
    learner = BPRLearner({"train": data}, config, torch.device("cpu"))
    users = torch.from_numpy(data.user)
    negatives = learner.sample_negatives(users)
    seen = set(zip(data.user.tolist(), data.item.tolist(), strict=True))
    clashes = sum(
        (u, n) in seen
        for u, row in zip(users.tolist(), negatives.tolist(), strict=True)
        for n in row
    )
    assert clashes == 0


def tiny_splits(data: Interactions) -> dict[str, Interactions]:
    return split_interactions(data, "hash", 0.15, 0.15)


def test_gat_bpr_learns_the_planted_structure():
    torch.manual_seed(0)
    config = TrainConfig(lr=0.05, batch_size=256, embedding_dim=16, heads=2, negatives=4, epochs=15)
    learner = BPRLearner(tiny_splits(planted()), config, torch.device("cpu"))
    optimizer = torch.optim.Adam(learner.model.parameters(), lr=config.lr)
    before = learner.evaluate("val")["recall@10"]
    losses = [learner.train_epoch(optimizer, epoch) for epoch in range(config.epochs)]
    after = learner.evaluate("val")["recall@10"]
    assert losses[-1] < losses[0] * 0.7
    # Random ranking of the 20 in-cluster items of 40 hits about a quarter; learned, far more.
    assert after > max(before, 0.45)


def test_xsimgcl_noise_moves_each_propagated_layer_by_eps_and_eval_has_none():
    model = GATBPR(3, 5, 0, embedding_dim=8, heads=2, num_layers=2)
    edge_index = torch.tensor([[0, 3, 1, 4, 2, 5], [3, 0, 4, 1, 5, 2]])
    clean, clean_view = model.perturbed_embedding(edge_index, view_layer=1)
    assert torch.equal(clean, model.get_embedding(edge_index))
    generator = torch.Generator().manual_seed(0)
    noisy, view = model.perturbed_embedding(edge_index, eps=0.1, view_layer=1, generator=generator)
    # Layer 1 moved by exactly eps per connected node, in its own orthant (no sign flips);
    # nodes 6 and 7 have no edges, so a zero embedding with no orthant to move in.
    moved = view - clean_view
    assert torch.allclose(moved.norm(dim=-1)[:6], torch.full((6,), 0.1), atol=1e-6)
    assert torch.equal(moved[6:], torch.zeros(2, 8))
    assert (torch.sign(moved) * torch.sign(clean_view) >= 0).all()
    assert not torch.allclose(noisy, clean)


def test_contrastive_loss_rewards_views_that_agree():
    views = torch.randn(32, 16, generator=torch.Generator().manual_seed(1))
    agreeing = GATBPR.contrastive_loss(views, views + 0.01 * torch.randn(32, 16), 0.2)
    shuffled = GATBPR.contrastive_loss(views, views[torch.randperm(32)], 0.2)
    assert agreeing < 0.5 < shuffled


def test_sampled_softmax_prefers_the_positive_and_the_model_scores_by_cosine():
    user = torch.tensor([[1.0, 0.0]])
    close, far = torch.tensor([[2.0, 0.1]]), torch.tensor([[[0.1, 3.0], [-1.0, 0.0]]])
    assert GATBPR.softmax_loss(user, close, far, 0.1) < 0.01
    assert GATBPR.softmax_loss(user, far[:, 0], torch.stack([close], 1), 0.1) > 5
    model = GATBPR(3, 5, 0, embedding_dim=8, heads=2, num_layers=1, cosine=True)
    users, items = model.split_embedding(model.get_embedding(torch.tensor([[0, 3], [3, 0]])))
    assert torch.allclose(items.norm(dim=-1), torch.ones(5))


@pytest.mark.parametrize(
    "variant",
    [{"cl_weight": 0.1}, {"loss": "softmax", "temperature": 0.2}, {"attention": False}],
    ids=["xsimgcl", "sampled-softmax", "lightgcn-propagation"],
)
def test_gat_bpr_variants_learn_the_planted_structure(variant):
    config = TrainConfig(
        lr=0.05, batch_size=256, embedding_dim=16, heads=2, negatives=4, epochs=15, **variant
    )
    learner = BPRLearner(tiny_splits(planted()), config, torch.device("cpu"))
    optimizer = torch.optim.Adam(learner.model.parameters(), lr=config.lr)
    for epoch in range(config.epochs):
        learner.train_epoch(optimizer, epoch)
    assert learner.evaluate("val")["recall@10"] > 0.45


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"cl_weight": 0.1, "cl_eps": 0.1},
        {"loss": "softmax"},
        {"hard_negatives": True, "attention": True},
        {"minibatch": "sampled"},
    ],
    ids=["bpr", "xsimgcl", "sampled-softmax", "hard-negatives-gat", "sampled-subgraph"],
)
def test_a_step_taken_in_chunks_has_the_one_shot_loss_and_gradients(variant):
    config = TrainConfig(embedding_dim=8, heads=2, negatives=4, seed=3, **variant)
    learners = [BPRLearner(tiny_splits(planted()), config, torch.device("cpu")) for _ in range(2)]
    users, positives = learners[0].users[:200], learners[0].items[:200]
    negatives = learners[0].sample_negatives(users)
    learners[1].generator.set_state(learners[0].generator.get_state())  # the same noise
    losses, grads = [], []
    for learner, chunked in zip(learners, (False, True), strict=True):
        learner.model.train()
        step_inputs = learner._step_inputs(users, positives, negatives)
        if chunked:  # 200 positives in chunks of 64, 64, 64 and 8
            loss = learner.step.backward_in_chunks(*step_inputs, chunk=64)
        else:
            loss = learner.step(*step_inputs)
            loss.backward()
        losses.append(float(loss.detach()))
        grads.append(
            {n: p.grad.clone() for n, p in learner.model.named_parameters() if p.grad is not None}
        )
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-7, rtol=1e-4, msg=name)


def test_large_batches_are_taken_in_chunks(monkeypatch):
    """train_epoch goes through backward_in_chunks once a batch exceeds the chunk."""
    config = TrainConfig(embedding_dim=8, negatives=4, batch_size=512, epochs=1)
    learner = BPRLearner(tiny_splits(planted()), config, torch.device("cpu"))
    chunks = []
    original = learner.step.backward_in_chunks
    monkeypatch.setattr(learners_module, "PAIR_ROWS_PER_CHUNK", 6 * 100)
    monkeypatch.setattr(
        learner.step,
        "backward_in_chunks",
        lambda *args: chunks.append(args[-1]) or original(*args),
    )
    loss = learner.train_epoch(torch.optim.Adam(learner.model.parameters()), 0)
    assert math.isfinite(loss) and chunks and set(chunks) == {100}


def test_rating_model_learns_and_clips_predictions():
    torch.manual_seed(0)
    config = TrainConfig(model="rating", lr=0.05, batch_size=128, embedding_dim=8)
    learner = RatingLearner(tiny_splits(planted()), config, torch.device("cpu"))
    optimizer = torch.optim.Adam(learner.model.parameters(), lr=config.lr)
    for epoch in range(30):
        learner.train_epoch(optimizer, epoch)
    assert learner.evaluate("val")["rmse"] < 0.6  # a global mean would be off by ~1.5
    huge = learner.model.predict(torch.tensor([0]), torch.tensor([0]))
    assert 1.0 <= float(huge) <= 5.0


# --- trainers ------------------------------------------------------------------------------


class ScriptedLearner(Learner):
    """A learner whose validation metric follows a script, to test the trainer's decisions."""

    mode, monitor = "max", "recall@10"

    def __init__(self, script: list[float]):
        self.model = torch.nn.Linear(1, 1)
        self.device = torch.device("cpu")
        self.script, self.calls = script, 0

    def train_epoch(self, optimizer, epoch):
        return 1.0 / epoch

    def evaluate(self, split):
        value = self.script[min(self.calls, len(self.script) - 1)] if split == "val" else 0.5
        if split == "val":
            self.calls += 1
        return {"recall@10": value, "ndcg@10": value}

    def model_args(self):
        return {}


def test_improved_respects_the_direction():
    assert improved(0.3, 0.2, "max") and not improved(0.2, 0.3, "max")
    assert improved(0.8, 0.9, "min") and not improved(0.9, 0.8, "min")
    assert improved(0.1, None, "min")


def test_early_stopping_and_scheduler(tmp_path):
    script = [0.1, 0.2, 0.3, 0.25, 0.24, 0.23, 0.22, 0.21, 0.9]
    config = TrainConfig(
        epochs=20, patience=3, use_scheduler=True, lr=0.1, lr_factor=0.5, lr_patience=1, min_lr=0.02
    )
    lines: list[str] = []
    trainer = AdvancedTrainer(ScriptedLearner(script), config, tmp_path, log=lines.append)
    final = trainer.fit()
    # best at epoch 3; epochs 4, 5, 6 are worse -> stop after epoch 6, before the late 0.9
    assert final["best_epoch"] == 3 and final["epochs_run"] == 6
    # lr_patience=1: the second worse epoch in a row (5) halves the LR used from epoch 6 on
    assert [row["lr"] for row in trainer.history] == [0.1, 0.1, 0.1, 0.1, 0.1, 0.05]
    assert "New best model! Val Recall@10: 0.3000" in lines
    assert "Current learning rate: 0.050000" in lines
    assert lines[0].startswith("Epoch 1/20 - train_loss: 1.0000, val_recall@10: 0.1000")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["history"]) == 6 and metrics["final"]["best_epoch"] == 3
    for name in ("best_model.pt", "final_model.pt", "checkpoint_epoch_6.pt", "history.png"):
        assert (tmp_path / name).exists()
    # One resume point, the newest: older epochs' checkpoints are removed as training goes.
    assert [p.name for p in tmp_path.glob("checkpoint_epoch_*.pt")] == ["checkpoint_epoch_6.pt"]


def test_the_final_val_is_what_the_kept_weights_scored_without_scoring_them_again(tmp_path):
    """The best weights' val metrics are taken from their epoch's row: the reloaded weights
    score exactly that, and val is evaluated once per epoch, not once more at the end."""
    torch.manual_seed(0)
    config = TrainConfig(
        lr=0.05, batch_size=256, embedding_dim=8, heads=2, epochs=4, patience=10,
        attention=False,
    )  # fmt: skip
    learner = BPRLearner(tiny_splits(planted()), config, torch.device("cpu"))
    scored: list[str] = []
    evaluate = learner.evaluate
    learner.evaluate = lambda split: scored.append(split) or evaluate(split)
    trainer = AdvancedTrainer(learner, config, tmp_path, log=lambda line: None)
    final = trainer.fit()
    assert scored.count("val") == final["epochs_run"] == 4 and scored.count("test") == 1
    assert final["val"] == evaluate("val")  # the reloaded best weights, scored afresh
    best = trainer.history[final["best_epoch"] - 1]
    assert final["val"]["recall@10"] == best["val_recall@10"]


def test_resume_ends_where_an_uninterrupted_run_would(tmp_path):
    data = tiny_splits(planted())

    def run(epochs: int, out, resume: bool = False) -> AdvancedTrainer:
        torch.manual_seed(0)
        config = TrainConfig(
            epochs=epochs,
            lr=0.05,
            batch_size=128,
            embedding_dim=8,
            heads=2,
            patience=10,
            use_scheduler=True,
        )
        trainer = AdvancedTrainer(
            BPRLearner(data, config, torch.device("cpu")), config, out, log=lambda line: None
        )
        if resume:
            trainer.resume()
        trainer.fit()
        return trainer

    straight = run(4, tmp_path / "straight")
    run(2, tmp_path / "interrupted")
    resumed = run(4, tmp_path / "interrupted", resume=True)
    a = load_checkpoint(tmp_path / "straight" / "final_model.pt")["model"]
    b = load_checkpoint(tmp_path / "interrupted" / "final_model.pt")["model"]
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert [r["train_loss"] for r in straight.history] == [r["train_loss"] for r in resumed.history]


@pytest.mark.parametrize("kind", ["gat-bpr", "rating"])
def test_training_is_reproducible_whatever_else_uses_the_global_rng(kind):
    """The in-process night trains one model while the flow's thread exports another to ONNX,
    and the exporter rewinds torch's global RNG (models_src/seeding.py). A run's weights and
    losses must follow from its seed alone."""
    data = tiny_splits(planted())
    config = TrainConfig(model=kind, lr=0.05, batch_size=64, embedding_dim=8, heads=2)

    def train(disturb: bool) -> tuple[list[float], dict]:
        torch.manual_seed(1000 if disturb else 0)  # another global state before the build
        learner = make_learner(data, config, torch.device("cpu"))
        optimizer = torch.optim.Adam(learner.model.parameters(), lr=config.lr)
        losses = []
        for epoch in range(3):
            if disturb:  # what another thread's draws, seeds or restores do meanwhile
                torch.manual_seed(epoch)
                torch.rand(1000)
            losses.append(learner.train_epoch(optimizer, epoch))
        return losses, learner.model.state_dict()

    (quiet_losses, quiet), (busy_losses, busy) = train(disturb=False), train(disturb=True)
    assert busy_losses == quiet_losses
    assert all(torch.equal(quiet[name], busy[name]) for name in quiet)


def test_checkpoints_load_with_weights_only(tmp_path):
    config = TrainConfig(epochs=1, embedding_dim=8, heads=2, batch_size=256)
    trainer = AdvancedTrainer(
        BPRLearner(tiny_splits(planted()), config, torch.device("cpu")),
        config,
        tmp_path,
        artifacts={"user_ids": ["a", "b"]},
        log=lambda _: None,
    )
    trainer.fit()
    state = torch.load(tmp_path / "best_model.pt", weights_only=True)
    assert state["model_kind"] == "gat-bpr" and state["artifacts"]["user_ids"] == ["a", "b"]
    rebuilt = GATBPR(**state["model_args"])
    rebuilt.load_state_dict(state["model"])


# --- command lines -------------------------------------------------------------------------


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=600
    )


@pytest.fixture
def planted_parquet(tmp_path):
    path = tmp_path / "planted.parquet"
    planted(n_users=120, n_items=60).to_parquet(path)
    return str(path)


@pytest.mark.slow
def test_simple_trainer_cli(tmp_path, planted_parquet):
    done = run_module(
        "models_src.train",
        "--data",
        planted_parquet,
        "--epochs",
        "2",
        "--output-dir",
        str(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Epoch 1/2 - Loss: ")
    assert "Epoch 2/2 - Loss: " in done.stdout and ", Recall@10: " in done.stdout
    assert (tmp_path / "final_model.pt").exists()


def improved_trainer(capsys, *args: str) -> str:
    """`python -m models_src.train_improved ARGS`, in this process: the module entry point itself
    is what test_simple_trainer_cli runs in a subprocess; here, three more interpreter starts
    (~6 s each on 2 cores) would test nothing more. Returns what it printed."""
    train_improved.main(list(args))
    return capsys.readouterr().out


@pytest.mark.slow
def test_improved_trainer_cli_both_models(tmp_path, planted_parquet, capsys):
    gat = improved_trainer(
        capsys,
        *("--data", planted_parquet, "--epochs", "2", "--use-scheduler"),
        *("--output-dir", str(tmp_path / "gat")),
    )
    assert "Epoch 2/2 - train_loss: " in gat and "Current learning rate: 0.010000" in gat
    rating = improved_trainer(
        capsys,
        *("--model", "rating", "--data", planted_parquet, "--epochs", "2"),
        *("--output-dir", str(tmp_path / "rating")),
    )
    assert "New best model! Val RMSE: " in rating and "test: recall@10" in rating
    resumed = improved_trainer(
        capsys,
        *("--data", planted_parquet, "--epochs", "3", "--resume"),
        *("--output-dir", str(tmp_path / "gat")),
    )
    assert "Resumed from checkpoint_epoch_2.pt (epoch 2)" in resumed
    assert "Epoch 3/3 - train_loss: " in resumed
