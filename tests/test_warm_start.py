"""Warm start: the champion's rows land on the same ids tonight, new rows start sensibly, and
training starts from the champion's quality, not from random."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import planted

from models_src.config import TrainConfig
from models_src.data import Interactions, split_interactions
from models_src.learners import make_learner
from models_src.trainers import AdvancedTrainer
from models_src.warm_start import WarmStartIncompatible, warm_start

GROUPS = ["pop", "rock", "jazz", "folk"]


def grown(before: Interactions, new_users: int, seed: int) -> Interactions:
    """Tomorrow: the same interactions, more users, and a new group whose name sorts first
    (so every old group code shifts by one) with its own new items."""
    rng = np.random.default_rng(seed)
    groups = [*sorted(before.meta["group_ids"]), "ambient"]
    names = sorted(groups)
    shift = {old: names.index(name) for old, name in enumerate(before.meta["group_ids"])}
    old_groups = np.array([shift[g] for g in before.item_group])
    item_group = np.concatenate([old_groups, np.full(8, names.index("ambient"))])
    n_users, n_items = before.num_users + new_users, len(item_group)
    user, item = list(before.user), list(before.item)
    for u in range(before.num_users, n_users):
        group = u % len(names)
        liked = np.flatnonzero(item_group == group)
        for i in rng.choice(liked, size=min(8, len(liked)), replace=False):
            user.append(u)
            item.append(i)
    extra = len(user) - len(before.user)
    rating = np.concatenate([before.rating, np.full(extra, 5.0, dtype=np.float32)])
    return Interactions(
        np.array(user),
        np.array(item),
        n_users,
        n_items,
        rating=rating,
        item_group=item_group,
        meta={
            "user_ids": before.meta["user_ids"]
            + [f"user-{u}" for u in range(before.num_users, n_users)],
            "item_ids": before.meta["item_ids"]
            + [f"item-{i}" for i in range(before.num_items, n_items)],
            "group_ids": names,
            "rating_scale": [1.0, 5.0],
        },
    )


def artifacts_of(data: Interactions) -> dict:
    return {key: data.meta[key] for key in ("user_ids", "item_ids", "group_ids")}


def gat_config(**overrides) -> TrainConfig:
    values = {
        "model": "gat-bpr",
        "epochs": 25,
        "lr": 0.05,
        "batch_size": 4096,
        "negatives": 8,
        "num_layers": 1,
        "l2": 1e-3,
        "patience": 25,
        "device": "cpu",
        **overrides,
    }
    return TrainConfig(**values)


def train_champion(data: Interactions, config: TrainConfig, tmp_path) -> tuple:
    torch.manual_seed(0)
    learner = make_learner(
        split_interactions(data, "hash", 0.15, 0.15), config, torch.device("cpu")
    )
    trainer = AdvancedTrainer(
        learner, config, tmp_path / "champion", artifacts=artifacts_of(data), log=lambda _: None
    )
    final = trainer.fit()
    return learner, final, tmp_path / "champion" / "best_model.pt"


@pytest.fixture(scope="module")
def nights(tmp_path_factory):
    before = planted(users=160, items_per_group=20, groups=GROUPS, seed=3)
    after = grown(before, new_users=24, seed=4)
    champion, final, checkpoint = train_champion(
        before, gat_config(), tmp_path_factory.mktemp("gat")
    )
    return before, after, champion, final, checkpoint


def tonight(after: Interactions, config: TrainConfig, seed: int = 1):
    torch.manual_seed(seed)
    splits = split_interactions(after, "hash", 0.15, 0.15)
    return make_learner(splits, config, torch.device("cpu"))


def test_gat_bpr_rows_follow_ids_and_new_nodes_start_at_their_neighbours_mean(nights):
    before, after, champion, _, checkpoint = nights
    learner = tonight(after, gat_config())
    report = warm_start(learner, artifacts_of(after), checkpoint)

    assert report.kept == {"users": 160, "items": 80, "groups": 4}
    assert report.new["users"] == 24 and report.new["items"] == 8 and report.new["groups"] == 1
    assert report.dropped == {"users": 0, "items": 0, "groups": 0}
    old, new = champion.model.embedding.weight.detach(), learner.model.embedding.weight.detach()
    # Users and items keep their index; groups moved (a new name sorts first) and follow ids.
    torch.testing.assert_close(new[:160], old[:160])
    torch.testing.assert_close(new[184 : 184 + 80], old[160 : 160 + 80])
    old_groups, new_groups = old[240:], new[184 + 88 :]
    for code, name in enumerate(before.meta["group_ids"]):
        torch.testing.assert_close(
            new_groups[after.meta["group_ids"].index(name)], old_groups[code]
        )
    # A new user starts at the mean of the (known) items it interacted with in tonight's train.
    edges = learner.edge_index
    user = 171  # likes an old group (170 likes the new one, whose items are all new)
    neighbours = edges[1][edges[0] == user]
    known = neighbours[(neighbours >= 184) & (neighbours < 184 + 80)]
    assert len(known) > 0
    torch.testing.assert_close(new[user], new[known].mean(0))
    # The attention layers are the champion's.
    torch.testing.assert_close(
        learner.model.convs[0].lin.weight, champion.model.convs[0].lin.weight
    )


def test_warm_start_begins_at_the_champions_quality_not_at_random(nights, tmp_path):
    _, after, _, champion_final, checkpoint = nights
    config = gat_config(epochs=2, patience=2)
    cold = tonight(after, config)
    cold_start = cold.evaluate("val")["recall@10"]
    warm = tonight(after, config)
    warm_start(warm, artifacts_of(after), checkpoint)
    trainer = AdvancedTrainer(
        warm, config, tmp_path / "warm", score_start=True, artifacts={}, log=lambda _: None
    )
    final = trainer.fit()

    start = final["start_val"]["recall@10"]
    champion_val = champion_final["val"]["recall@10"]
    assert cold_start < 0.5 * champion_val  # random weights rank close to chance
    assert start > 0.8 * champion_val  # the warm run's epoch 0 is the champion's quality
    # The first epoch trains on from there; and the run never ends below where it started.
    assert trainer.history[0]["val_recall@10"] > 0.8 * champion_val
    assert final["val"]["recall@10"] >= start


def test_rating_model_copies_factors_and_takes_tonights_biases(tmp_path):
    """The champion's factors carry over; the biases are tonight's closed-form fit for every
    user and item, so a new user starts at tonight's bias baseline (issue 36)."""
    before = planted(users=60, items_per_group=10, groups=GROUPS, seed=5)
    after = grown(before, new_users=6, seed=6)
    config = TrainConfig(model="rating", epochs=3, embedding_dim=8, device="cpu")
    champion, _, checkpoint = train_champion(before, config, tmp_path)
    learner = tonight(after, config)
    report = warm_start(learner, artifacts_of(after), checkpoint)

    assert report.kept == {"users": 60, "items": 40} and report.new["users"] == 6
    for name in ("user_embedding", "item_embedding"):
        rows = 60 if name == "user_embedding" else 40
        torch.testing.assert_close(
            getattr(learner.model, name).weight[:rows], getattr(champion.model, name).weight[:rows]
        )
    fitted = learner.bias_fit.buffers
    for name in ("user_bias", "item_bias"):
        torch.testing.assert_close(
            getattr(learner.model, name).weight.squeeze(-1), fitted[name].float()
        )
    assert float(learner.model.global_mean) == pytest.approx(float(fitted["offset"]))


def test_a_champion_of_another_shape_is_refused_with_the_reason(nights):
    _, after, _, _, checkpoint = nights
    learner = tonight(after, gat_config(embedding_dim=16))
    with pytest.raises(WarmStartIncompatible, match="embedding_dim=32"):
        warm_start(learner, artifacts_of(after), checkpoint)
    # Another propagation or scoring rule fits the tensors but means something else.
    for change, reason in (
        ({"attention": False}, "attention=True"),
        ({"loss": "softmax"}, "cosine"),
    ):
        with pytest.raises(WarmStartIncompatible, match=reason):
            warm_start(tonight(after, gat_config(**change)), artifacts_of(after), checkpoint)
