"""Sparse item-item neighbour lists (issue 35): built block by block, equal to the dense
computation they replace, O(items x k) in memory, and scoring a history as the matrix does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models_src import neighbours
from models_src.data import Interactions
from models_src.neighbours import cosine_neighbours, ease_neighbours, rp3beta_neighbours


def _clicks(n_users: int = 80, n_items: int = 60, per_user: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1)
    popularity /= popularity.sum()
    users = np.repeat(np.arange(n_users), per_user)
    items = np.concatenate(
        [rng.choice(n_items, per_user, replace=False, p=popularity) for _ in range(n_users)]
    )
    return Interactions(users, items, n_users, n_items)


def _dense_rp3beta(data: Interactions, alpha: float, beta: float) -> np.ndarray:
    x = np.zeros((data.num_users, data.num_items))
    x[data.user, data.item] = 1.0
    user_to_item = (x / np.maximum(x.sum(1, keepdims=True), 1)) ** alpha
    item_to_user = (x.T / np.maximum(x.sum(0)[:, None], 1)) ** alpha
    weights = item_to_user @ user_to_item / np.maximum(x.sum(0), 1)[None, :] ** beta
    np.fill_diagonal(weights, 0.0)
    return weights


def test_rp3beta_lists_built_in_blocks_are_the_dense_matrix_top_k(monkeypatch):
    data = _clicks()
    monkeypatch.setattr(neighbours, "SPARSE_BLOCK_ENTRIES", 400)  # about a dozen blocks
    lists = rp3beta_neighbours(data, alpha=0.8, beta=0.4, k=5)
    dense = _dense_rp3beta(data, 0.8, 0.4)
    assert lists.indices.shape == (data.num_items, 5) == lists.weights.shape
    for item in range(data.num_items):
        expected = np.sort(dense[item])[::-1][:5]
        np.testing.assert_allclose(lists.weights[item].numpy(), expected, rtol=1e-5, atol=1e-7)
        kept = lists.indices[item][lists.weights[item] > 0].numpy()
        assert item not in kept  # an item is never its own neighbour
        np.testing.assert_allclose(dense[item, kept], lists.weights[item][: len(kept)], rtol=1e-5)


def test_a_history_scores_as_its_row_times_the_pruned_matrix():
    data = _clicks(seed=1)
    lists = cosine_neighbours(data, k=4, shrink=2.0)
    matrix = lists.to_csr().toarray()
    assert (matrix != 0).sum(1).max() <= 4  # at most k per item: O(items x k)
    from models_src.item_item import history_matrix

    history = history_matrix(data, data.num_users, data.num_items)
    expected = history.toarray() @ matrix
    torch.testing.assert_close(lists.scores(history), torch.from_numpy(expected).float())


def _dense_ease(data: Interactions, lam: float) -> np.ndarray:
    from models_src.item_item import ease_weights

    return ease_weights(data, lam).double().numpy()


@pytest.mark.parametrize("n_users, n_items", [(40, 90), (120, 50)], ids=["woodbury", "gram"])
def test_ease_lists_are_the_dense_weights_top_k_in_either_form(monkeypatch, n_users, n_items):
    """Fewer users than items: the users x users (Woodbury) form; else the items x items one."""
    data = _clicks(n_users=n_users, n_items=n_items, per_user=10, seed=3)
    monkeypatch.setattr(neighbours, "BLOCK_CELLS", 11 * max(n_users, n_items))  # several blocks
    lists = ease_neighbours(data, lam=20.0, k=6)
    dense = _dense_ease(data, 20.0)
    assert (lists.weights < 0).any()  # EASE^R's negative weights are kept, signed
    for item in range(n_items):
        # The six largest in magnitude, negative weights kept with their sign.
        expected = dense[item][np.argsort(-np.abs(dense[item]), kind="stable")[:6]]
        np.testing.assert_allclose(lists.weights[item].numpy(), expected, rtol=2e-3, atol=2e-5)
        np.testing.assert_allclose(
            dense[item, lists.indices[item].numpy()], expected, rtol=2e-3, atol=2e-5
        )


def test_sparse_blocks_cover_every_row_once_and_the_lists_stay_within_their_cell_budget(
    monkeypatch,
):
    work = np.array([5, 1, 1, 50, 2, 2, 2, 9])
    blocks = neighbours._blocks(work, 6)
    assert blocks[0][0] == 0 and blocks[-1][1] == len(work)
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:], strict=False))  # no gap, no overlap
    # A range passes the budget by at most one row's work (a heavy row cannot be split).
    assert all(work[a:b].sum() <= 6 + work[a:b].max() for a, b in blocks)
    assert neighbours.list_length(200, 1_000) == 200
    assert neighbours.list_length(200, 1_000_000) == neighbours.MAX_LIST_CELLS // 1_000_000
    assert neighbours.list_length(200, 50) == 49  # never more than the other items
    monkeypatch.setattr(neighbours, "MAX_LIST_CELLS", 60 * 3)
    lists = rp3beta_neighbours(_clicks(), k=10)
    assert lists.k == 3 and lists.indices.numel() <= neighbours.MAX_LIST_CELLS
