"""bf16 autocast for training (TrainConfig.precision): it trains both models to finite losses
and metrics with fp32 weights, it reaches the arithmetic (GAT-BPR's loss moves), fp32 stays the
default and unchanged, checkpoints and resume behave as in fp32, and the option travels from the
nightly parameters and both CLIs. CPU autocast supports bf16, so all of this runs without a GPU;
tests/test_gpu.py repeats the training on CUDA."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch

from flows.params import NightlyParams
from models_src.checkpoint import load_checkpoint
from models_src.cli import add_common_options, config_from_args
from models_src.config import TrainConfig, training_autocast
from models_src.data import Interactions, split_interactions
from models_src.learners import make_learner
from models_src.trainers import AdvancedTrainer

CPU = torch.device("cpu")


def two_tastes(n_users: int = 60, n_items: int = 40, per_user: int = 12) -> Interactions:
    """Even users like even items, odd users odd items (rated high), with a few dislikes."""
    rng = np.random.default_rng(0)
    users, items = [], []
    for u in range(n_users):
        chosen = rng.choice(np.arange(u % 2, n_items, 2), size=per_user, replace=False)
        users += [u] * per_user
        items += chosen.tolist()
    liked = np.array(items) % 2 == np.array(users) % 2
    ratings = np.where(liked, 4.5, 1.5).astype(np.float32)
    ratings[::7] = 2.0
    return Interactions(
        np.array(users), np.array(items), n_users, n_items, ratings,
        item_group=np.arange(n_items) % 4, meta={"rating_scale": [1.0, 5.0]},
    )  # fmt: skip


def splits(model: str) -> dict[str, Interactions]:
    data = two_tastes()
    if model == "gat-bpr":
        data.rating = None
    return split_interactions(data, "hash", 0.15, 0.15)


def config(model: str = "gat-bpr", **overrides) -> TrainConfig:
    values = {
        "model": model,
        "epochs": 2,
        "lr": 0.05,
        "batch_size": 128,
        "embedding_dim": 16,
        "heads": 2,
        "num_layers": 2,
        "device": "cpu",
        "patience": 5,
        **overrides,
    }
    return TrainConfig(**values)


def fit(train_config: TrainConfig, out, resume: bool = False) -> tuple[AdvancedTrainer, dict]:
    torch.manual_seed(0)
    learner = make_learner(splits(train_config.model), train_config, CPU)
    trainer = AdvancedTrainer(learner, train_config, out, log=lambda line: None)
    if resume:
        trainer.resume()
    return trainer, trainer.fit()


def first_epoch_loss(train_config: TrainConfig) -> float:
    learner = make_learner(splits(train_config.model), train_config, CPU)
    optimizer = torch.optim.Adam(learner.model.parameters(), lr=train_config.lr)
    return learner.train_epoch(optimizer, 1)


def all_finite(metrics: dict) -> bool:
    """The headline metrics (the slices may be NaN on data this small: no cold user)."""
    names = ["recall@10", "ndcg@10"] + (["rmse", "mae"] if "rmse" in metrics else [])
    return all(math.isfinite(metrics[name]) for name in names)


@pytest.mark.parametrize(
    ("model", "overrides"),
    [
        ("gat-bpr", {"attention": True}),  # GATConv: its feature transform runs in bf16
        ("gat-bpr", {"attention": False}),  # LightGCN's sparse product (fp32 on CPU)
        ("gat-bpr", {"minibatch": "sampled", "fanout": 4}),  # sampled subgraphs
        ("rating", {"embedding_dim": 8, "lr": 0.01}),
    ],
    ids=["gat-bpr-attention", "gat-bpr-lightgcn", "gat-bpr-sampled", "rating"],
)
def test_bf16_trains_to_finite_losses_and_metrics_with_fp32_weights(tmp_path, model, overrides):
    trainer, final = fit(config(model, precision="bf16", **overrides), tmp_path)
    losses = [row["train_loss"] for row in trainer.history]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert all_finite(final["val"]) and all_finite(final["test"])
    assert final["val"]["recall@10"] >= 0.0
    params = dict(trainer.learner.model.named_parameters())
    assert params and all(p.dtype == torch.float32 for p in params.values()), {
        name: p.dtype for name, p in params.items() if p.dtype != torch.float32
    }
    saved = load_checkpoint(tmp_path / "best_model.pt")
    assert saved["config"]["precision"] == "bf16"
    assert all(t.dtype == torch.float32 for t in saved["model"].values() if t.is_floating_point())
    if model == "gat-bpr":  # evaluation and the exported embeddings: fp32
        user_emb, item_emb = trainer.learner.item_scores()
        assert user_emb.dtype == item_emb.dtype == torch.float32


def test_bf16_reaches_the_arithmetic_and_stays_close_to_fp32():
    """GAT-BPR with attention: the GATConv transform runs in bf16, so the loss moves a little,
    not a lot (a bf16 run that equals fp32 exactly would mean autocast never applied)."""
    fp32 = first_epoch_loss(config(attention=True))
    bf16 = first_epoch_loss(config(attention=True, precision="bf16"))
    assert bf16 != fp32
    assert bf16 == pytest.approx(fp32, rel=0.05)


@pytest.mark.parametrize("model", ["gat-bpr", "rating"])
def test_fp32_is_the_default_and_the_same_arithmetic(model):
    assert TrainConfig().precision == "fp32"
    default = config(model)
    explicit = config(model, precision="fp32")
    assert default == explicit
    assert first_epoch_loss(default) == first_epoch_loss(explicit)


def test_the_fp32_autocast_context_changes_nothing():
    a, b = torch.randn(8, 4), torch.randn(4, 3)
    with training_autocast(CPU, "fp32"):
        assert (a @ b).dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
    with training_autocast(CPU, "bf16"):
        assert (a @ b).dtype == torch.bfloat16


def test_a_bf16_run_resumes_where_an_uninterrupted_one_ends(tmp_path):
    straight, _ = fit(config(precision="bf16", epochs=2), tmp_path / "straight")
    fit(config(precision="bf16", epochs=1), tmp_path / "interrupted")
    resumed, _ = fit(config(precision="bf16", epochs=2), tmp_path / "interrupted", resume=True)
    a = load_checkpoint(tmp_path / "straight" / "final_model.pt")["model"]
    b = load_checkpoint(tmp_path / "interrupted" / "final_model.pt")["model"]
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert [r["train_loss"] for r in straight.history] == [r["train_loss"] for r in resumed.history]


def test_precision_travels_from_the_nightly_parameters_and_the_clis():
    nightly = NightlyParams.model_validate({"precision": "bf16", "device": "cpu"})
    for model in ("gat-bpr", "rating"):
        assert TrainConfig.from_dict(nightly.train_config(model)).precision == "bf16"
        assert nightly.warm_train_config(model)["precision"] == "bf16"
    assert NightlyParams().train_config("gat-bpr")["precision"] == "fp32"
    with pytest.raises(ValueError, match="precision"):
        NightlyParams.model_validate({"precision": "fp16"})
    # An old model version's recorded config (no precision) reads back as fp32.
    assert TrainConfig.from_dict({"model": "gat-bpr", "device": "cuda"}).precision == "fp32"

    parser = argparse.ArgumentParser()
    add_common_options(parser, default_epochs=3)
    args = parser.parse_args(["--precision", "bf16", "--device", "cpu"])
    assert config_from_args(args, epochs=3).precision == "bf16"
    assert config_from_args(parser.parse_args([]), epochs=3).precision == "fp32"
    with pytest.raises(SystemExit):
        parser.parse_args(["--precision", "fp16"])


def test_encore_nightly_refuses_an_unknown_precision_in_one_line(capsys):
    import typer

    from flows.cli import _nightly_params

    with pytest.raises(typer.Exit):
        _nightly_params({"precision": "fp16"})
    assert "--precision: Input should be 'fp32' or 'bf16'" in capsys.readouterr().err
