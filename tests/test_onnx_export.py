"""ONNX scorer export: onnx.checker passes, and onnxruntime matches torch on every user."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from models_src.data import Interactions, bipartite_edge_index, keys_to_csr, pair_keys
from models_src.models import GATBPR, RatingModel
from models_src.onnx_export import export_scorer, gat_bpr_scorer, id_map_checksum, rating_scorer


def exclusion_mask(data: Interactions, users: torch.Tensor) -> torch.Tensor:
    rowptr, col = keys_to_csr(pair_keys(data), data.num_users, data.num_items)
    mask = torch.zeros(len(users), data.num_items, dtype=torch.bool)
    for row, user in enumerate(users.tolist()):
        mask[row, col[rowptr[user] : rowptr[user + 1]]] = True
    return mask


@pytest.fixture
def sample() -> Interactions:
    rng = np.random.default_rng(0)
    return Interactions(rng.integers(0, 40, 400), rng.integers(0, 30, 400), 40, 30)


def check_parity(scorer, path, data: Interactions) -> None:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    users = torch.arange(data.num_users)
    exclude = exclusion_mask(data, users)
    items_ort, scores_ort = session.run(None, {"users": users.numpy(), "exclude": exclude.numpy()})
    items_torch, scores_torch = scorer(users, exclude)
    np.testing.assert_allclose(scores_ort, scores_torch.numpy(), atol=1e-5)
    # Identical top-K, ties aside: where scores differ from the next one, the items agree.
    distinct = np.abs(np.diff(scores_torch.numpy(), axis=1)) > 1e-5
    agree = items_ort == items_torch.numpy()
    assert agree[:, :-1][distinct].all() and agree[:, 0].mean() > 0.99
    # Seen items never come back.
    assert not exclude.gather(1, torch.from_numpy(items_ort)).any()


def test_gat_bpr_scorer_parity_and_metadata(tmp_path, sample):
    torch.manual_seed(0)
    model = GATBPR(sample.num_users, sample.num_items, embedding_dim=8, heads=2, num_layers=1)
    scorer = gat_bpr_scorer(model, bipartite_edge_index(sample), k=10)
    checksum = id_map_checksum([str(u) for u in range(40)], [str(i) for i in range(30)])
    path = export_scorer(
        scorer,
        tmp_path / "gat.onnx",
        {"model_version": "7", "kind": "gat-bpr", "id_map_sha256": checksum},
    )
    check_parity(scorer, path, sample)
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert meta == {
        "k": "10",
        "num_items": "30",
        "model_version": "7",
        "kind": "gat-bpr",
        "id_map_sha256": checksum,
    }


def test_rating_scorer_includes_biases(tmp_path, sample):
    torch.manual_seed(0)
    model = RatingModel(sample.num_users, sample.num_items, 6, global_mean=3.5)
    with torch.no_grad():
        model.item_bias.weight.normal_()
    scorer = rating_scorer(model, k=5)
    users = torch.arange(3)
    assert torch.allclose(scorer.scores(users), model.score_all(users), atol=1e-6)
    check_parity(
        scorer, export_scorer(scorer, tmp_path / "rating.onnx", {"kind": "rating"}), sample
    )


def test_tables_are_external_data_that_travels_with_the_graph(tmp_path, sample):
    """The graph file holds no table; moved together (as the registry copies a version), the
    two files still score the same."""
    from models_src.onnx_export import external_data_path

    torch.manual_seed(0)
    model = RatingModel(sample.num_users, sample.num_items, 16, global_mean=3.5)
    with torch.no_grad():
        model.item_bias.weight.normal_()
    scorer = rating_scorer(model, k=5)
    path = export_scorer(scorer, tmp_path / "built" / "scorer.onnx", {"kind": "rating"})
    tables = external_data_path(path)
    assert path.stat().st_size < 4096 < tables.stat().st_size
    moved = tmp_path / "registry" / "scorer.onnx"
    moved.parent.mkdir()
    path.rename(moved)
    tables.rename(external_data_path(moved))
    check_parity(scorer, moved, sample)
