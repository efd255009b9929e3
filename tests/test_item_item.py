"""The GAT-BPR + EASE^R blend (models_src/item_item.py): EASE^R's closed form, the choice on
val, and one arithmetic in torch, the gate's served model and the ONNX file."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models_src.data import Interactions
from models_src.evaluation import Protocol
from models_src.item_item import (
    blend,
    candidate_label,
    choose_blend,
    choose_sparse_blend,
    ease_weights,
    fits,
    history_matrix,
    item_item_component,
    item_item_scores,
    standardised,
)
from models_src.neighbours import neighbours_from_choice, rp3beta_neighbours
from models_src.onnx_export import TopKScorer, export_scorer
from models_src.serving import ServedModel


def clustered(users: int = 60, items: int = 24, seed: int = 0) -> Interactions:
    """Two taste groups, each drawing mostly from its own half of the catalogue."""
    rng = np.random.default_rng(seed)
    user, item = [], []
    for u in range(users):
        own = np.arange(items // 2) + (items // 2 if u % 2 else 0)
        picked = rng.choice(own, size=8, replace=False)
        user += [u] * len(picked)
        item += picked.tolist()
    return Interactions(np.array(user), np.array(item), users, items)


def test_ease_weights_solve_the_closed_form():
    data = clustered()
    lam = 10.0
    b = ease_weights(data, lam)
    assert b.shape == (data.num_items, data.num_items)
    assert torch.all(b.diagonal() == 0)
    # Off the diagonal, B is the least-squares fit of X by XB with λ‖B‖²: the gradient
    # Xᵀ(XB − X) + λB vanishes off the diagonal (the constraint's multipliers sit on it).
    x = torch.from_numpy(history_matrix(data, data.num_users, data.num_items).toarray())
    gradient = x.T @ (x @ b - x) + lam * b
    off = ~torch.eye(data.num_items, dtype=torch.bool)
    assert gradient[off].abs().max() < 1e-3
    # Items of one taste group predict each other, not the other group's (never co-consumed).
    half = data.num_items // 2
    assert b[:half, :half].sum() > 1.0 and b[:half, half:].abs().max() < 1e-6


def test_standardised_rows_and_a_user_with_no_history():
    scores = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    out = standardised(scores)
    assert torch.allclose(out[0], torch.tensor([-1.2247, 0.0, 1.2247]), atol=1e-4)
    assert torch.all(out[1] == 0)  # a constant row (no history) adds nothing to the blend


def test_fits_refuses_large_catalogues():
    assert fits(1_000, 10_000, 20_000)
    assert not fits(1_000, 30_000, 20_000)
    assert not fits(10_000_000, 10_000, 20_000)  # the dense scoring product would be too slow


def test_choice_on_val_keeps_the_embeddings_when_they_rank_best():
    data = clustered()
    history = history_matrix(data, data.num_users, data.num_items)
    order = torch.arange(data.num_items, dtype=torch.float32)

    def embedding_scores(users):
        return order.expand(len(users), -1)

    choice, weights = choose_blend(
        embedding_scores, data, history, lambda scores: 1.0 if scores is embedding_scores else 0.5
    )
    assert (choice.weight, weights) == (0.0, None)
    assert choice.val["embeddings alone"] == 1.0 and len(choice.val) > 1


def planted_choice_inputs() -> tuple:
    """(random embedding scores, train, train history, val Recall@5 of a score function) on
    the two taste groups, a quarter of each user's items held out for val."""
    data = clustered()
    splits = {"train": data.subset(np.arange(len(data.user)) % 4 != 0)}
    splits["val"] = data.subset(np.arange(len(data.user)) % 4 == 0)
    splits["test"] = splits["val"].subset(np.zeros(len(splits["val"].user), dtype=bool))
    protocol = Protocol(splits)
    history = history_matrix(splits["train"], data.num_users, data.num_items)
    noise = torch.randn(data.num_users, data.num_items, generator=torch.Generator().manual_seed(0))

    def evaluate_val(scores):
        return protocol.evaluate(scores, "val", 5).summary["recall@5"]

    return (lambda users: noise[users]), splits["train"], history, evaluate_val


def test_choice_on_val_blends_when_item_item_helps():
    choice, weights = choose_blend(*planted_choice_inputs(), lambdas=(5.0,))
    # Random embeddings against the planted groups: the item-item side must carry the blend.
    assert choice.weight > 0 and weights is not None
    best = max(value for key, value in choice.val.items() if key != "embeddings alone")
    assert best > choice.val["embeddings alone"]


def test_sparse_choice_on_val_blends_the_best_lists_when_they_help():
    inputs = planted_choice_inputs()
    candidates = (
        {"method": "rp3beta", "params": {"alpha": 1.0, "beta": 0.5, "k": 5}},
        {"method": "ease", "params": {"lam": 5.0, "k": 5}},
    )
    choice, lists = choose_sparse_blend(*inputs, candidates)
    assert choice.weight > 0 and lists is not None and lists.k == 5
    assert choice.method in ("rp3beta", "ease")
    best = max(value for key, value in choice.val.items() if key != "embeddings alone")
    assert choice.val[f"{candidate_label(choice.recorded())}, weight={choice.weight:g}"] == best
    assert best > choice.val["embeddings alone"]
    # What the checkpoint keeps rebuilds the same lists.
    rebuilt = neighbours_from_choice(inputs[1], choice.recorded())
    assert torch.equal(rebuilt.indices, lists.indices)


@pytest.fixture(params=["dense EASE^R", "neighbour lists"])
def blended_scorer(request) -> tuple[TopKScorer, Interactions]:
    """A blend with EASE^R's dense B, or with RP3beta's top-5 neighbour lists (the form past the
    dense cap)."""
    data = clustered()
    torch.manual_seed(0)
    user_emb, item_emb = torch.randn(data.num_users, 4), torch.randn(data.num_items, 4)
    if request.param == "dense EASE^R":
        weights = {"item_item": ease_weights(data, 10.0)}
    else:
        weights = {"neighbours": rp3beta_neighbours(data, alpha=1.0, beta=0.5, k=5)}
    return TopKScorer(user_emb, item_emb, k=5, blend_weight=0.5, **weights), data


def test_blended_scorer_onnx_parity(tmp_path, blended_scorer):
    scorer, data = blended_scorer
    path = export_scorer(scorer, tmp_path / "blend.onnx", {})
    users = torch.arange(data.num_users)
    exclude = torch.from_numpy(history_matrix(data, data.num_users, data.num_items).toarray() > 0)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    _, scores_ort = session.run(None, {"users": users.numpy(), "exclude": exclude.numpy()})
    _, scores_torch = scorer(users, exclude)
    np.testing.assert_allclose(scores_ort, scores_torch.numpy(), atol=1e-4)
    if scorer.neighbour_items is not None:  # lists of k per item, never an items x items table
        import onnx

        shapes = [list(t.dims) for t in onnx.load(path, load_external_data=False).graph.initializer]
        assert [data.num_items, data.num_items] not in shapes
        assert [data.num_items, 5] in shapes
    # The blend is not the embeddings alone: the history changes the scores.
    plain = TopKScorer(scorer.user_emb, scorer.item_emb, k=5)
    assert not torch.allclose(plain(users, exclude)[1], scores_torch)


def test_served_model_scores_as_the_scorer(blended_scorer):
    scorer, data = blended_scorer
    buffers = dict(scorer.state_dict())
    popularity = torch.ones(data.num_items + 3)  # tonight has 3 items the model never saw
    served = ServedModel(buffers, popularity, history=data)
    users = torch.arange(data.num_users)
    history = torch.from_numpy(history_matrix(data, data.num_users, data.num_items).toarray())
    expected = scorer.scores(users, history)
    got = served.score_users(users)
    assert torch.allclose(got[:, : data.num_items], expected, atol=1e-5)
    assert torch.isinf(got[:, data.num_items :]).all()
    direct = blend(
        scorer.user_emb @ scorer.item_emb.T,
        item_item_scores(history_matrix(data, data.num_users, data.num_items), users,
                         item_item_component(buffers)),
        0.5,
    )  # fmt: skip
    assert torch.allclose(got[:, : data.num_items], direct, atol=1e-5)
    with pytest.raises(ValueError, match="history"):
        ServedModel(buffers, popularity)


def test_the_run_report_says_what_the_blend_chose():
    from tasks.report.report import _blend_line

    chosen = {
        "lambda": 200.0,
        "weight": 0.5,
        "seconds": 3.2,
        "val": {"embeddings alone": 0.21, "lambda=200, weight=0.5": 0.24},
    }
    line = _blend_line({"item_item": chosen})
    assert "λ 200, weight 0.5" in line and "0.2400 against 0.2100" in line
    kept = {**chosen, "weight": 0.0, "val": {"embeddings alone": 0.3, "lambda=50, weight=1": 0.2}}
    assert "embeddings alone ranked best" in _blend_line({"item_item": kept})
    assert "not built" in _blend_line({"item_item": {"skipped": "catalogue too large"}})
    lists = {**chosen, "method": "rp3beta", "params": {"alpha": 1.0, "beta": 0.5, "k": 200}}
    del lists["lambda"]
    line = _blend_line({"item_item": lists})
    assert "rp3beta neighbour lists (alpha 1, beta 0.5, k 200), weight 0.5" in line
    assert _blend_line({}) == ""
