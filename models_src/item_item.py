"""GAT-BPR's scores blended with EASE^R's learned item-item weights (Steck, WWW 2019).

Why: on every dataset of bench-train the closed-form EASE^R ranked above GAT-BPR, and the two
err differently (the graph model smooths over neighbourhoods, EASE^R keeps exact co-occurrence),
so a blend chosen on val beats both (bench/results/blend.md). The blend is part of the shipped
model: the same arithmetic in training's choice, in the gate (models_src/serving.py), in the
torch scorer and in the ONNX file (models_src/onnx_export.py):

    score(u, ·) = standardised(user_emb[u] · item_embᵀ) + weight · standardised(history_u · B)

where history_u is the user's 0/1 row of interactions (the scorer's `exclude` input, the items
already seen), B is EASE^R's items × items weight matrix, and `standardised` centres and scales
each user's row (the two scores live on unrelated scales). λ and the weight are chosen on val.

EASE^R's matrix is dense: it is built only where it fits (`fits`): at most `max_items` items
(20k items is 1.6 GB of float32), and a dense history × B product for every user within
`MAX_SCORING_MULTIPLY_ADDS`, since batch scoring multiplies the users' dense history rows by B.
Larger catalogues blend neighbour lists instead (models_src/neighbours.py: each item's top-k
weights of EASE^R where its inverse fits, or of RP3beta), chosen on val the same way
(`choose_sparse_blend`); their history · W is a sparse product, and O(items x k) to store.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from models_src.data import Interactions, distinct_sorted
from models_src.neighbours import NeighbourLists, ease_fits, neighbours_from_choice

LAMBDAS = (50.0, 200.0, 800.0)  # EASE^R's L2 weight; brackets what bench-train chose on val
WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)  # the item-item share; 0 = the embeddings alone
# The blend's cap: users x items x items multiply-adds of one full batch scoring (dense history
# rows times B), past which the item-item term would outweigh the rest of the night's scoring.
MAX_SCORING_MULTIPLY_ADDS = 5e12
STD_FLOOR = 1e-9  # a user with no history has a constant item-item row: it contributes zeros


def fits(num_users: int, num_items: int, max_items: int) -> bool:
    """Whether EASE^R's dense item-item matrix is built for this catalogue."""
    return 0 < num_items <= max_items and num_users * num_items**2 <= MAX_SCORING_MULTIPLY_ADDS


def history_matrix(data: Interactions, num_users: int, num_items: int):
    """Users x items 0/1 scipy CSR of `data`'s pairs (repeats collapse), clipped to the given
    sizes (a model knows a prefix of tonight's ids)."""
    from scipy.sparse import csr_matrix

    keep = (data.user < num_users) & (data.item < num_items)
    keys = distinct_sorted(data.user[keep].astype(np.int64) * num_items + data.item[keep])
    ones = np.ones(len(keys), dtype=np.float32)
    return csr_matrix((ones, (keys // num_items, keys % num_items)), shape=(num_users, num_items))


def ease_weights(positives: Interactions, lam: float) -> Tensor:
    """EASE^R's closed form: P = (XᵀX + λI)⁻¹, B = I − P·diag(1/diag(P)), zero diagonal."""
    history = history_matrix(positives, positives.num_users, positives.num_items)
    gram = np.asfortranarray((history.T @ history).toarray(), dtype=np.float32)
    gram[np.diag_indices_from(gram)] += lam
    inverse = _symmetric_inverse_in_place(gram)
    # P is symmetric, so its C-ordered view (the Fortran array's transpose) is P itself.
    weights = inverse.T
    diagonal = weights.diagonal().copy()
    weights /= -diagonal[np.newaxis, :]
    weights[np.diag_indices_from(weights)] = 0.0
    return torch.from_numpy(weights)


def _symmetric_inverse_in_place(matrix: np.ndarray, block: int = 2048) -> np.ndarray:
    """The inverse of a symmetric positive definite Fortran-ordered float32 matrix, in its own
    memory: LAPACK's Cholesky factorisation and inverse (spotrf, spotri) through scipy, then the
    lower triangle mirrored block by block. torch.linalg's cholesky + cholesky_inverse take two
    more copies of the matrix (items² x 4 bytes each), and the largest catalogue the blend is
    built for is bounded by this matrix's memory."""
    from scipy.linalg import lapack

    factor, info = lapack.spotrf(matrix, lower=1, overwrite_a=1, clean=0)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE^R's Gram matrix is not positive definite ({info})")
    inverse, info = lapack.spotri(factor, lower=1, overwrite_c=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE^R's Gram matrix could not be inverted ({info})")
    n = len(inverse)
    for start in range(0, n, block):
        stop = min(n, start + block)
        inverse[start:stop, stop:] = inverse[stop:, start:stop].T
        diagonal_block = inverse[start:stop, start:stop]
        inverse[start:stop, start:stop] = np.tril(diagonal_block) + np.tril(diagonal_block, -1).T
    return inverse


def standardised(scores: Tensor) -> Tensor:
    """Each row centred and divided by its (population) standard deviation."""
    centred = scores - scores.mean(dim=1, keepdim=True)
    spread = centred.pow(2).mean(dim=1, keepdim=True).sqrt().clamp(min=STD_FLOOR)
    return centred / spread


def blend(embedding_scores: Tensor, item_item_scores: Tensor, weight: float) -> Tensor:
    return standardised(embedding_scores) + weight * standardised(item_item_scores)


def item_item_scores(history, users: Tensor, weights: Tensor | NeighbourLists) -> Tensor:
    """history_u · B for a batch of users (`history`: scipy CSR; B dense, or the sparse
    matrix of neighbour lists)."""
    rows = history[users.cpu().numpy()]
    if isinstance(weights, NeighbourLists):
        return weights.scores(rows)
    return torch.from_numpy(np.asarray(rows @ weights.numpy(), dtype=np.float32))


def item_item_component(buffers: dict[str, Tensor]) -> Tensor | NeighbourLists | None:
    """A scorer's item-item weights from its tables: EASE^R's dense `item_item`, the
    `neighbour_items` / `neighbour_weights` lists, or None (no blend)."""
    if buffers.get("item_item") is not None:
        return buffers["item_item"]
    if buffers.get("neighbour_items") is not None:
        return NeighbourLists(buffers["neighbour_items"].long(), buffers["neighbour_weights"])
    return None


@dataclass
class BlendChoice:
    """The λ and weight chosen on val, and what each setting scored there."""

    lam: float
    weight: float
    val: dict[str, float] = field(default_factory=dict)  # "λ=…, w=…" -> val metric
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"lambda": self.lam, "weight": self.weight, "val": self.val,
                "seconds": self.seconds}  # fmt: skip

    def recorded(self) -> dict:
        """What the checkpoint keeps: enough for publish to rebuild the same weights."""
        return {"lambda": self.lam, "weight": self.weight}


def choose_blend(
    embedding_scores: Callable[[Tensor], Tensor],
    positives: Interactions,
    history,
    evaluate_val: Callable[[Callable[[Tensor], Tensor]], float],
    lambdas: tuple[float, ...] = LAMBDAS,
    weights: tuple[float, ...] = WEIGHTS,
) -> tuple[BlendChoice, Tensor | None]:
    """Every (λ, weight) on val; returns the best choice and its B (None when the embeddings
    alone won, weight 0). `evaluate_val` maps a score function to the val metric."""
    started = time.perf_counter()
    alone = evaluate_val(embedding_scores)
    best = BlendChoice(0.0, 0.0, {"embeddings alone": alone})
    best_value, best_weights = alone, None
    for lam in lambdas:
        b = ease_weights(positives, lam)
        for weight in weights:
            if weight == 0.0:
                continue

            def scores(users: Tensor, b: Tensor = b, weight: float = weight) -> Tensor:
                return blend(embedding_scores(users), item_item_scores(history, users, b), weight)

            value = evaluate_val(scores)
            best.val[f"lambda={lam:g}, weight={weight:g}"] = value
            if value > best_value:
                best_value, best.lam, best.weight, best_weights = value, lam, weight, b
        del b
    best.seconds = time.perf_counter() - started
    return best, best_weights


# Past the dense cap (`fits`), the blend's candidates: neighbour lists, each chosen on val with
# the same weights. EASE^R pruned to its top 500 came closest to the dense blend on val and
# RP3beta is the cheapest to build (bench/results/blend.md); EASE^R only where its inverse fits.
SPARSE_CANDIDATES: tuple[dict, ...] = (
    *({"method": "ease", "params": {"lam": lam, "k": 500}} for lam in LAMBDAS),
    {"method": "rp3beta", "params": {"alpha": 1.0, "beta": 0.5, "k": 200}},
)


@dataclass
class SparseBlendChoice:
    """The neighbour lists (method and parameters) and weight chosen on val."""

    method: str | None
    params: dict
    weight: float
    val: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"method": self.method, "params": self.params, "weight": self.weight,
                "val": self.val, "seconds": self.seconds}  # fmt: skip

    def recorded(self) -> dict:
        """What the checkpoint keeps: enough for publish to rebuild the same lists."""
        return {"method": self.method, "params": self.params, "weight": self.weight}


def candidate_label(candidate: dict) -> str:
    params = ", ".join(f"{key}={value:g}" for key, value in candidate["params"].items())
    return f"{candidate['method']} ({params})"


def choose_sparse_blend(
    embedding_scores: Callable[[Tensor], Tensor],
    positives: Interactions,
    history,
    evaluate_val: Callable[[Callable[[Tensor], Tensor]], float],
    candidates: tuple[dict, ...] = SPARSE_CANDIDATES,
    weights: tuple[float, ...] = WEIGHTS,
    max_items: int = 20_000,
) -> tuple[SparseBlendChoice, NeighbourLists | None]:
    """Every candidate's lists x every weight on val, as `choose_blend` does for the dense
    EASE^R; returns the best and its lists (None when the embeddings alone won). EASE^R is a
    candidate only where `ease_fits` (no items x items inverse past `max_items` items)."""
    started = time.perf_counter()
    alone = evaluate_val(embedding_scores)
    best = SparseBlendChoice(None, {}, 0.0, {"embeddings alone": alone})
    best_value, best_lists = alone, None
    for candidate in candidates:
        if candidate["method"] == "ease" and not ease_fits(*history.shape, max_items):
            continue
        lists = neighbours_from_choice(positives, candidate)
        for weight in weights:
            if weight == 0.0:
                continue

            def scores(users: Tensor, lists=lists, weight: float = weight) -> Tensor:
                learned = item_item_scores(history, users, lists)
                return blend(embedding_scores(users), learned, weight)

            value = evaluate_val(scores)
            best.val[f"{candidate_label(candidate)}, weight={weight:g}"] = value
            if value > best_value:
                best_value, best_lists = value, lists
                best.method, best.params, best.weight = (
                    candidate["method"],
                    dict(candidate["params"]),
                    weight,
                )
    best.seconds = time.perf_counter() - started
    return best, best_lists
