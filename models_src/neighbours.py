"""Sparse item-item weights for any catalogue size: each item keeps its top-k neighbours.

Issue 35: the blend's EASE^R weights are a dense items x items matrix (items² x 4 bytes: 1.2 GB
at Last.fm's 17.6k artists, 39 GB at 99k items), so past 20k items the blend is off and GAT-BPR
alone loses to ALS. Here every item keeps only its `k` strongest neighbours, as two items x k
tables (indices and weights): memory O(items x k), built block by block of source items, so
the dense block never exceeds `BLOCK_CELLS` cells whatever the catalogue.

Three kinds, measured on val in bench/bench_blend.py:

- RP3beta (Paudel et al. 2016; among the strongest simple models in Dacrema et al. 2019):
  the two-step random walk item -> user -> item, each transition probability raised to `alpha`,
  the target divided by its popularity to the `beta`;
- cosine ItemKNN with shrinkage: co-occurrence / (|i| |j| + shrink), |i| the root of i's count;
- EASE^R's weights pruned to the top k per item (`ease_neighbours`), computed without the
  items x items inverse when users are fewer than items: the Woodbury identity turns
  (XᵀX + λI)⁻¹ into (I − Xᵀ(λI + XXᵀ)⁻¹X) / λ, a users x users inverse (the issue's 99k-item
  catalogue has 7.4k users: 220 MB instead of 39 GB), and rows of it come block by block.

A user's scores are their 0/1 history row times the sparse matrix: the items they took up vote
for each item's neighbours. `NeighbourLists.to_csr` gives that matrix to scipy (training's
choice, the gate); the ONNX scorer gathers the same lists (`gathered_scores`), never a dense
matrix. The nightly blend chooses on val among EASE^R's and RP3beta's lists
(models_src/item_item.py, `SPARSE_CANDIDATES`); ItemKNN's ranked below both (blend.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from models_src.data import Interactions

# Cells of one dense block of (source items x all items) similarities: 32M float32s, 128 MB.
BLOCK_CELLS = 1 << 25
# Entries of one sparse block of similarities (about 40 bytes each while they are sorted).
SPARSE_BLOCK_ENTRIES = 1 << 23
# The lists' cells (items x k) at most: 100M, 800 MB in the ONNX file (int32 + float32), so a
# million-item catalogue keeps 100 neighbours per item and the published version stays < 1 GB.
MAX_LIST_CELLS = 100_000_000


@dataclass
class NeighbourLists:
    """Each item's top-k neighbours: `indices[i]` the neighbour items, `weights[i]` their weights,
    the k largest in magnitude (0 where an item has fewer than k neighbours with a weight)."""

    indices: Tensor  # (items, k) int64
    weights: Tensor  # (items, k) float32

    @property
    def num_items(self) -> int:
        return len(self.indices)

    @property
    def k(self) -> int:
        return self.indices.shape[1]

    @functools.cached_property
    def csr(self):
        """`to_csr()`, built once: every batch of users is scored against it."""
        return self.to_csr()

    def to_csr(self):
        """The items x items scipy CSR matrix W (row i: item i's neighbours), zeros dropped."""
        from scipy.sparse import csr_matrix

        rows = np.repeat(np.arange(self.num_items), self.k)
        values = self.weights.numpy().ravel()
        keep = values != 0
        return csr_matrix(
            (values[keep], (rows[keep], self.indices.numpy().ravel()[keep])),
            shape=(self.num_items, self.num_items),
        )

    def scores(self, history) -> Tensor:
        """history (users x items scipy CSR, 0/1) times W: each user's item scores."""
        return torch.from_numpy(np.asarray((history @ self.csr).todense(), dtype=np.float32))


def gathered_scores(history: Tensor, indices: Tensor, weights: Tensor) -> Tensor:
    """history (users x items, bool or 0/1) times the neighbour lists' W, by gathering: each
    (user, seen item) pair adds the item's k neighbour weights into the user's row. What the
    ONNX scorer does (NonZero, Gather, ScatterElements with add), in the same order; memory
    O(pairs x k), never items x items."""
    users, seen = history.nonzero(as_tuple=True)
    num_items = history.shape[1]
    targets = (users.unsqueeze(1) * num_items + indices[seen]).reshape(-1)
    flat = torch.zeros(history.shape[0] * num_items, dtype=torch.float32)
    flat.index_add_(0, targets, weights[seen].reshape(-1).float())
    return flat.view(history.shape[0], num_items)


def _history(positives: Interactions):
    from models_src.item_item import history_matrix

    return history_matrix(positives, positives.num_users, positives.num_items)


def list_length(k: int, num_items: int) -> int:
    """The k a catalogue keeps: at most `k`, fewer than its items, within MAX_LIST_CELLS."""
    return max(1, min(k, num_items - 1, MAX_LIST_CELLS // max(1, num_items)))


def _top_k(
    similarity_rows: Callable[[slice], np.ndarray], num_items: int, k: int
) -> NeighbourLists:
    """Top-k per row of an items x items similarity given block by block (`similarity_rows`
    maps a slice of source items to their dense rows); the diagonal never counts."""
    k = list_length(k, num_items)
    block = max(1, BLOCK_CELLS // max(1, num_items))
    indices = torch.zeros(num_items, k, dtype=torch.long)
    weights = torch.zeros(num_items, k, dtype=torch.float32)
    for start in range(0, num_items, block):
        rows = slice(start, min(num_items, start + block))
        dense = torch.from_numpy(np.ascontiguousarray(similarity_rows(rows), dtype=np.float32))
        own = torch.arange(rows.start, rows.stop)
        dense[torch.arange(len(own)), own] = 0.0
        # The k largest in magnitude, sign kept: EASE^R's negative weights (items that rarely go
        # together) carry as much as its positive ones (val Recall@10 of EASE^R alone pruned to
        # 500 on ml-100k: 0.2273 signed, 0.2246 positive only, 0.2292 dense; one hash split).
        top = torch.topk(dense.abs(), k, dim=1).indices
        indices[rows], weights[rows] = top, dense.gather(1, top)
    return NeighbourLists(indices, weights)


def _sparse_top_k(
    similarity_rows: Callable[[slice], object], work: np.ndarray, num_items: int, k: int
) -> NeighbourLists:
    """Top-k in magnitude per row of an items x items similarity given block by block as
    scipy sparse rows (`similarity_rows`), without densifying a row: each block's entries are
    sorted by (row, -|weight|) and the first k of each row kept. `work[i]`: an upper bound on
    row i's entries, so a block holds about SPARSE_BLOCK_ENTRIES of them; the cost follows the
    product's entries, not items², and a million-item catalogue costs what its co-occurrences
    cost (bench/results/blend_scale.md)."""
    k = list_length(k, num_items)
    indices = np.zeros((num_items, k), dtype=np.int64)
    weights = np.zeros((num_items, k), dtype=np.float32)
    for start, stop in _blocks(work, SPARSE_BLOCK_ENTRIES):
        block = similarity_rows(slice(start, stop)).tocsr()
        rows = np.repeat(np.arange(start, stop), np.diff(block.indptr))
        cols, values = block.indices, block.data.astype(np.float32)
        keep = (cols != rows) & (values != 0)  # an item is never its own neighbour
        rows, cols, values = rows[keep], cols[keep], values[keep]
        order = np.lexsort((-np.abs(values), rows))
        rows, cols, values = rows[order], cols[order], values[order]
        counts = np.bincount(rows - start, minlength=stop - start)
        rank = np.arange(len(rows)) - (np.cumsum(counts) - counts)[rows - start]
        top = rank < k
        indices[rows[top], rank[top]] = cols[top]
        weights[rows[top], rank[top]] = values[top]
    return NeighbourLists(torch.from_numpy(indices), torch.from_numpy(weights))


def _blocks(work: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Consecutive row ranges whose summed `work` stays near `budget`: a range passes it by at
    most one row's work (a heavy row cannot be split)."""
    ends = np.searchsorted(np.cumsum(work), np.arange(budget, work.sum(), budget), side="right")
    edges = np.unique(np.concatenate([[0], ends, [len(work)]]))
    return list(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True))


def _co_occurrence_work(history) -> np.ndarray:
    """Per item, an upper bound on its co-occurring items: the summed degrees of its users."""
    user_degree = np.asarray(history.sum(1)).ravel()
    return np.asarray(history.T @ user_degree).ravel() + 1


def rp3beta_neighbours(
    positives: Interactions, alpha: float = 1.0, beta: float = 0.5, k: int = 200
) -> NeighbourLists:
    """RP3beta's top-k neighbour lists:
    W[i, j] = sum over users u of P(u | i)^alpha P(j | u)^alpha, divided by pop_j^beta."""
    from scipy.sparse import diags

    history = _history(positives)
    user_degree = np.asarray(history.sum(1)).ravel()
    item_degree = np.asarray(history.sum(0)).ravel()
    user_to_item = (diags(1.0 / np.maximum(user_degree, 1)) @ history).tocsr()
    item_to_user = (diags(1.0 / np.maximum(item_degree, 1)) @ history.T).tocsr()
    user_to_item.data **= alpha
    item_to_user.data **= alpha
    penalty = 1.0 / np.maximum(item_degree, 1.0) ** beta

    def rows(block: slice):
        return (item_to_user[block] @ user_to_item) @ diags(penalty)

    return _sparse_top_k(rows, _co_occurrence_work(history), positives.num_items, k)


def cosine_neighbours(
    positives: Interactions, k: int = 200, shrink: float = 10.0
) -> NeighbourLists:
    """Cosine ItemKNN's top-k neighbour lists: co-occurrence / (|i| |j| + shrink)."""
    from scipy.sparse import csr_matrix

    history = _history(positives)
    by_item = history.T.tocsr()
    norms = np.sqrt(np.asarray(history.sum(0)).ravel())

    def rows(block: slice):
        together = (by_item[block] @ history).tocoo()
        scale = norms[block][together.row] * norms[together.col] + shrink
        return csr_matrix((together.data / scale, (together.row, together.col)), together.shape)

    return _sparse_top_k(rows, _co_occurrence_work(history), positives.num_items, k)


# The largest inverse `ease_neighbours` takes: min(users, items)² float64 cells (4 GB).
MAX_INVERSE_CELLS = 1 << 29


def ease_neighbours(positives: Interactions, lam: float = 200.0, k: int = 200) -> NeighbourLists:
    """EASE^R's B = I - P diag(1/diag P), P = (XᵀX + λI)⁻¹, top-k per row, never materialising
    an items x items matrix: rows of P come from the users x users form when users are fewer
    than items (P = (I - Xᵀ K X) / λ, K = (λI + XXᵀ)⁻¹), else from the items x items inverse."""
    history = _history(positives)
    num_users, num_items = history.shape
    if min(num_users, num_items) ** 2 > MAX_INVERSE_CELLS:
        raise ValueError(
            f"EASE^R needs a {min(num_users, num_items):,}² inverse; past"
            f" {MAX_INVERSE_CELLS:,} cells use RP3beta's or ItemKNN's lists"
        )
    if num_users < num_items:
        p_rows, diagonal = _woodbury_rows(history, lam)
    else:
        gram = (history.T @ history).toarray().astype(np.float64)
        gram[np.diag_indices_from(gram)] += lam
        inverse = np.linalg.inv(gram)
        diagonal = inverse.diagonal().copy()

        def p_rows(block: slice) -> np.ndarray:
            return inverse[block]

    def rows(block: slice) -> np.ndarray:
        return -p_rows(block) / diagonal[np.newaxis, :]  # B's diagonal is zeroed by _top_k

    return _top_k(rows, num_items, k)


def _woodbury_rows(history, lam: float) -> tuple[Callable[[slice], np.ndarray], np.ndarray]:
    """Rows of P = (XᵀX + λI)⁻¹ = (I - Xᵀ K X) / λ with K = (λI + XXᵀ)⁻¹ (users x users), and
    P's diagonal, (1 - x_jᵀ K x_j) / λ for item j's column x_j."""
    num_users, num_items = history.shape
    gram = (history @ history.T).toarray().astype(np.float64)
    gram[np.diag_indices_from(gram)] += lam
    kernel = np.linalg.inv(gram).astype(np.float32)
    by_item = history.T.tocsr()  # items x users: row j is x_j

    def rows(block: slice) -> np.ndarray:
        left = by_item[block] @ kernel  # b x users, dense
        product = np.asarray((history.T @ left.T).T)  # b x items: (x_iᵀ K X) for i in block
        product *= -1.0 / lam
        product[np.arange(block.stop - block.start), np.arange(block.start, block.stop)] += (
            1.0 / lam
        )
        return product

    diagonal = np.empty(num_items)
    step = max(1, BLOCK_CELLS // max(1, num_users))
    for start in range(0, num_items, step):
        cols = slice(start, min(num_items, start + step))
        left = by_item[cols] @ kernel
        quadratic = np.asarray(by_item[cols].multiply(left).sum(1)).ravel()
        diagonal[cols] = (1.0 - quadratic) / lam
    return rows, diagonal


# How each method's lists are rebuilt from a recorded choice (publish, the serving refit).
METHODS: dict[str, Callable[..., NeighbourLists]] = {
    "rp3beta": rp3beta_neighbours,
    "cosine": cosine_neighbours,
    "ease": ease_neighbours,
}


def neighbours_from_choice(positives: Interactions, choice: dict) -> NeighbourLists:
    """The lists a recorded blend choice names ({"method": ..., "params": {...}}), rebuilt on
    `positives`: training records the choice, not the lists."""
    return METHODS[choice["method"]](positives, **choice["params"])


def ease_fits(num_users: int, num_items: int, max_items: int) -> bool:
    """Whether `ease_neighbours` takes this catalogue: its inverse within MAX_INVERSE_CELLS, and
    an items x items one (users at least as many as items) only up to `max_items` items."""
    if min(num_users, num_items) ** 2 > MAX_INVERSE_CELLS:
        return False
    return num_users < num_items or num_items <= max_items
