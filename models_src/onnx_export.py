"""Export a trained model's scorer (not the GNN) to ONNX.

DESIGN.md: PyG's scatter-softmax runs ~9x slower in onnxruntime on CPU and has had wrong-output
export bugs, so the graph is run once in PyTorch and only its result ships: the final user and
item embeddings (and biases, for the rating model) become initializers of a tiny graph that
takes a batch of user indices and a (batch, items) mask of items to exclude, and returns the
top-K item indices and scores. The exclusion is an input, so the file's size does not grow with
the number of interactions.

The ONNX graphs are written node by node with onnx's helper rather than traced by
torch.onnx: a trace of even this tiny module took seconds per file, and a night now exports
several (the candidate, a winning baseline, the serving refit). The torch modules below stay the
reference the exported graphs are tested against (tests/test_onnx_export.py).

The tables are ONNX external data: written straight from the arrays into `<file>.data` beside
the graph, which holds only their names, shapes and offsets. So an export costs about what
writing the tables costs, with no protobuf copies, and a scorer may exceed protobuf's 2 GB
limit (a catalogue of tens of millions of users). onnxruntime and `onnx.load` read the tables
from beside the graph; the two files travel together.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from models_src.item_item import STD_FLOOR, blend
from models_src.models import GATBPR, RatingModel
from models_src.neighbours import NeighbourLists, gathered_scores


class TopKScorer(nn.Module):
    """score(u, i) = user_emb[u] · item_emb[i] + user_bias[u] + item_bias[i] + offset.

    With `item_item` (EASE^R's items x items weights, models_src/item_item.py) the score is the
    blend standardised(that) + blend_weight · standardised(history_u · item_item), where the
    user's history is the `exclude` row: the items they have already seen. With `neighbours`
    (each item's top-k neighbour lists, models_src/neighbours.py: what the nightly serves)
    history_u · W is gathered from the lists instead: no items x items table."""

    def __init__(
        self,
        user_emb: Tensor,
        item_emb: Tensor,
        k: int,
        user_bias: Tensor | None = None,
        item_bias: Tensor | None = None,
        offset: float = 0.0,
        item_item: Tensor | None = None,
        blend_weight: float = 0.0,
        neighbours: NeighbourLists | None = None,
    ) -> None:
        super().__init__()
        self.k = k
        self.register_buffer("user_emb", user_emb.detach().float().contiguous())
        self.register_buffer("item_emb", item_emb.detach().float().contiguous())
        zeros_u, zeros_i = torch.zeros(len(user_emb)), torch.zeros(len(item_emb))
        user_bias = zeros_u if user_bias is None else user_bias.detach()
        item_bias = zeros_i if item_bias is None else item_bias.detach()
        self.register_buffer("user_bias", user_bias.float().contiguous())
        self.register_buffer("item_bias", item_bias.float().contiguous())
        self.register_buffer("offset", torch.tensor(float(offset)))
        # None buffers stay out of the state dict: a scorer without a blend has none.
        dense, sparse = item_item is not None, neighbours is not None
        self.register_buffer(
            "item_item", item_item.detach().float().contiguous() if dense else None
        )
        lists = (neighbours.indices.long(), neighbours.weights.float()) if sparse else (None, None)
        self.register_buffer("neighbour_items", lists[0])
        self.register_buffer("neighbour_weights", lists[1])
        blended = dense or sparse
        self.register_buffer("blend_weight", torch.tensor(float(blend_weight)) if blended else None)

    @property
    def blended(self) -> bool:
        return self.item_item is not None or self.neighbour_items is not None

    def scores(self, users: Tensor, history: Tensor | None = None) -> Tensor:
        """(users, items) scores; `history` (users x items 0/1) is needed by a blend."""
        dot = self.user_emb[users] @ self.item_emb.T
        scores = dot + self.user_bias[users].unsqueeze(1) + self.item_bias.unsqueeze(0)
        scores = scores + self.offset
        if not self.blended:
            return scores
        if history is None:
            raise ValueError("a blended scorer needs the users' history")
        if self.item_item is not None:
            learned = history.float() @ self.item_item
        else:
            learned = gathered_scores(history, self.neighbour_items, self.neighbour_weights)
        return blend(scores, learned, float(self.blend_weight))

    def forward(self, users: Tensor, exclude: Tensor) -> tuple[Tensor, Tensor]:
        scores = self.scores(users, exclude).masked_fill(exclude, float("-inf"))
        top = torch.topk(scores, self.k, dim=1)
        return top.indices, top.values


@torch.no_grad()
def gat_bpr_scorer(
    model: GATBPR,
    edge_index: Tensor,
    k: int,
    item_item: Tensor | None = None,
    blend_weight: float = 0.0,
    neighbours: NeighbourLists | None = None,
) -> TopKScorer:
    model.eval()
    users, items = model.split_embedding(model.get_embedding(edge_index))
    return TopKScorer(
        users, items, k, item_item=item_item, blend_weight=blend_weight, neighbours=neighbours
    )


@torch.no_grad()
def rating_scorer(model: RatingModel, k: int) -> TopKScorer:
    return TopKScorer(
        model.user_embedding.weight,
        model.item_embedding.weight,
        k,
        model.user_bias.weight.squeeze(-1),
        model.item_bias.weight.squeeze(-1),
        float(model.global_mean),
    )


def id_map_checksum(user_ids: list[str], item_ids: list[str]) -> str:
    """sha256 of the id maps the indices refer to: a scorer is only valid with these maps."""
    return hashlib.sha256(json.dumps([user_ids, item_ids]).encode()).hexdigest()


class PairScorer(nn.Module):
    """Predicted rating of (user, item) pairs, clipped to the scale. An index past what the
    model knows (a user or item that arrived later) falls back to the biases it does know."""

    def __init__(self, model: RatingModel) -> None:
        super().__init__()
        self.register_buffer("user_emb", model.user_embedding.weight.detach().float().contiguous())
        self.register_buffer("item_emb", model.item_embedding.weight.detach().float().contiguous())
        # (n, 1) bias tables as (n,) vectors; the embeddings keep their (n, dim) shape, dim 1 too.
        for name, table in (("user_bias", model.user_bias), ("item_bias", model.item_bias)):
            self.register_buffer(name, table.weight.detach().float().squeeze(-1).contiguous())
        self.register_buffer("offset", model.global_mean.detach().float().clone())
        self.register_buffer("low", model.rating_range[0].detach().clone())
        self.register_buffer("high", model.rating_range[1].detach().clone())

    def forward(self, users: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        known_user = users < self.user_emb.shape[0]
        known_item = items < self.item_emb.shape[0]
        u = torch.clamp(users, max=self.user_emb.shape[0] - 1)
        i = torch.clamp(items, max=self.item_emb.shape[0] - 1)
        both = (known_user & known_item).float()
        dot = (self.user_emb[u] * self.item_emb[i]).sum(-1) * both
        rating = (
            self.offset
            + self.user_bias[u] * known_user.float()
            + self.item_bias[i] * known_item.float()
            + dot
        )
        return torch.clamp(rating, self.low, self.high), both


# Opset 17: TopK with K as an input, Unsqueeze/ReduceSum with axes as inputs; onnxruntime >= 1.14.
OPSET = 17


# Tables from this size go to the external data file; small constants stay in the graph.
EXTERNAL_MIN_BYTES = 1024
# Each external table starts on a page boundary, so onnxruntime can map it rather than copy it.
ALIGNMENT = 4096


def external_data_path(path: Path) -> Path:
    """Where the tables of the ONNX graph at `path` are written."""
    return path.with_name(path.name + ".data")


def _laid_out(tensor: Tensor) -> np.ndarray:
    """`tensor` as a row-major float32 array (a transposed view is copied: torch's contiguous()
    lays one out about four times as fast as numpy's ascontiguousarray)."""
    return tensor.detach().cpu().float().contiguous().numpy()


class _Tables:
    """Initializers of one graph: large tables appended to its external data file, small ones
    inline."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.location = external_data_path(path)
        self.file = self.location.open("wb")
        self.initializers: list = []

    def table(self, name: str, tensor: Tensor) -> None:
        self.array(name, _laid_out(tensor))

    def constant(self, name: str, value, dtype) -> None:
        self.array(name, np.asarray(value, dtype=dtype))

    def array(self, name: str, array: np.ndarray) -> None:
        from onnx import TensorProto, helper, numpy_helper

        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))  # ONNX's order
        if array.nbytes < EXTERNAL_MIN_BYTES:
            self.initializers.append(numpy_helper.from_array(array, name))
            return
        offset = -(-self.file.tell() // ALIGNMENT) * ALIGNMENT
        self.file.seek(offset)
        array.tofile(self.file)
        tensor = TensorProto(name=name, dims=array.shape)
        tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        # onnx's set_external_data wants the bytes in the proto first: the copy this avoids.
        for key, value in (("location", self.location.name), ("offset", offset)):
            tensor.external_data.add(key=key, value=str(value))
        tensor.external_data.add(key="length", value=str(array.nbytes))
        tensor.data_location = TensorProto.EXTERNAL
        self.initializers.append(tensor)

    def close(self) -> list:
        self.file.close()
        return self.initializers


def export_scorer(scorer: TopKScorer, path: Path, metadata: dict[str, str]) -> Path:
    """The top-K scorer as ONNX, built node by node from its tables (no torch tracing, so an
    export takes milliseconds whatever the model): users and a (users x items) exclusion mask
    in, the top-K item indices and scores out; batch size dynamic; `metadata` in its
    metadata_props. The same arithmetic, in the same order, as `TopKScorer.forward`."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Gather", ["user_emb", "users"], ["user_rows"], axis=0),
        # MatMul on a stored (dim x items) table: Gemm with transB=1 on the table as trained
        # would save the transposed copy at export, but scored slower in onnxruntime.
        helper.make_node("MatMul", ["user_rows", "item_emb_t"], ["dot"]),
        helper.make_node("Gather", ["user_bias", "users"], ["user_bias_rows"], axis=0),
        helper.make_node("Unsqueeze", ["user_bias_rows", "axis_1"], ["user_bias_column"]),
        helper.make_node("Add", ["dot", "user_bias_column"], ["with_user_bias"]),
        helper.make_node("Add", ["with_user_bias", "item_bias"], ["with_item_bias"]),
        helper.make_node("Add", ["with_item_bias", "offset"], ["embedding_scores"]),
    ]
    if not scorer.blended:
        nodes.append(helper.make_node("Identity", ["embedding_scores"], ["scores_all"]))
    else:
        learned = _dense_item_item_nodes() if scorer.item_item is not None else _gather_nodes()
        nodes += learned + _blend_nodes()
    nodes += [
        helper.make_node("Where", ["exclude", "minus_infinity", "scores_all"], ["masked"]),
        helper.make_node("TopK", ["masked", "k"], ["scores", "items"], axis=1),
    ]
    tables = _Tables(path)
    # The transposed item table is laid out on a second thread while the user table is written
    # (torch's copy and the file write both release the GIL): about as long as each other.
    with ThreadPoolExecutor(max_workers=1) as pool:
        item_emb_t = pool.submit(_laid_out, scorer.item_emb.T)
        tables.table("user_emb", scorer.user_emb)
        tables.array("item_emb_t", item_emb_t.result())
    tables.table("user_bias", scorer.user_bias)
    tables.table("item_bias", scorer.item_bias)
    tables.table("offset", scorer.offset)
    tables.constant("axis_1", [1], np.int64)
    tables.constant("minus_infinity", -np.inf, np.float32)
    tables.constant("k", [scorer.k], np.int64)
    if scorer.item_item is not None:
        tables.table("item_item", scorer.item_item)
    if scorer.neighbour_items is not None:
        # int32 indices: half the file of int64, cast back once per batch in the graph.
        tables.array("neighbour_items", scorer.neighbour_items.numpy().astype(np.int32))
        tables.table("neighbour_weights", scorer.neighbour_weights)
        for name, value in (("row", [0]), ("column", [1])):
            tables.constant(f"{name}_index", value, np.int64)
        tables.constant("flat", [-1], np.int64)
    if scorer.blended:
        tables.table("blend_weight", scorer.blend_weight)
        tables.constant("std_floor", STD_FLOOR, np.float32)
    items = len(scorer.item_emb)
    graph = helper.make_graph(
        nodes,
        "encore_top_k_scorer",
        [
            helper.make_tensor_value_info("users", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("exclude", TensorProto.BOOL, ["batch", items]),
        ],
        [
            helper.make_tensor_value_info("items", TensorProto.INT64, ["batch", scorer.k]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", scorer.k]),
        ],
        tables.close(),
    )
    full = {"k": str(scorer.k), "num_items": str(items), **metadata}
    return _save(graph, path, full)


def _standardise_nodes(name: str) -> list:
    """`name` -> `name`_standardised: each row centred and divided by its population standard
    deviation (floored), as models_src/item_item.py's `standardised`."""
    from onnx import helper

    return [
        helper.make_node("ReduceMean", [name], [f"{name}_mean"], axes=[1], keepdims=1),
        helper.make_node("Sub", [name, f"{name}_mean"], [f"{name}_centred"]),
        helper.make_node("Mul", [f"{name}_centred", f"{name}_centred"], [f"{name}_squares"]),
        helper.make_node("ReduceMean", [f"{name}_squares"], [f"{name}_var"], axes=[1], keepdims=1),
        helper.make_node("Sqrt", [f"{name}_var"], [f"{name}_std"]),
        helper.make_node("Max", [f"{name}_std", "std_floor"], [f"{name}_spread"]),
        helper.make_node("Div", [f"{name}_centred", f"{name}_spread"], [f"{name}_standardised"]),
    ]


def _dense_item_item_nodes() -> list:
    """exclude (the users' history) -> item_item_scores = history · B, B dense."""
    from onnx import TensorProto, helper

    return [
        helper.make_node("Cast", ["exclude"], ["history"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["history", "item_item"], ["item_item_scores"]),
    ]


def _gather_nodes() -> list:
    """exclude (the users' history) -> item_item_scores = history · W from the neighbour lists,
    as models_src/neighbours.py's `gathered_scores`: each (user, seen item) pair scatter-adds
    the item's k neighbour weights into the user's row of a flat (batch x items) buffer."""
    from onnx import TensorProto, helper

    return [
        helper.make_node("NonZero", ["exclude"], ["pairs"]),  # (2, pairs): user row, seen item
        helper.make_node("Gather", ["pairs", "row_index"], ["pair_users_2d"], axis=0),
        helper.make_node("Gather", ["pairs", "column_index"], ["pair_items_2d"], axis=0),
        helper.make_node("Reshape", ["pair_users_2d", "flat"], ["pair_users"]),
        helper.make_node("Reshape", ["pair_items_2d", "flat"], ["pair_items"]),
        helper.make_node("Gather", ["neighbour_items", "pair_items"], ["targets_32"], axis=0),
        helper.make_node("Cast", ["targets_32"], ["targets"], to=TensorProto.INT64),
        helper.make_node("Gather", ["neighbour_weights", "pair_items"], ["votes"], axis=0),
        helper.make_node("Shape", ["exclude"], ["batch_items"]),
        helper.make_node("Gather", ["batch_items", "column_index"], ["num_items"], axis=0),
        helper.make_node("Mul", ["pair_users", "num_items"], ["row_starts"]),
        helper.make_node("Unsqueeze", ["row_starts", "axis_1"], ["row_starts_column"]),
        helper.make_node("Add", ["row_starts_column", "targets"], ["flat_targets_2d"]),
        helper.make_node("Reshape", ["flat_targets_2d", "flat"], ["flat_targets"]),
        helper.make_node("Reshape", ["votes", "flat"], ["flat_votes"]),
        helper.make_node("ReduceProd", ["batch_items"], ["cells"], keepdims=1),
        helper.make_node(
            "ConstantOfShape",
            ["cells"],
            ["empty"],
            value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]),
        ),
        helper.make_node(
            "ScatterElements",
            ["empty", "flat_targets", "flat_votes"],
            ["summed"],
            axis=0,
            reduction="add",
        ),
        helper.make_node("Reshape", ["summed", "batch_items"], ["item_item_scores"]),
    ]


def _blend_nodes() -> list:
    """embedding_scores, item_item_scores -> scores_all, the blend of models_src/item_item.py:
    standardised(embedding) + weight · standardised(history · B)."""
    from onnx import helper

    return [
        *_standardise_nodes("embedding_scores"),
        *_standardise_nodes("item_item_scores"),
        helper.make_node("Mul", ["item_item_scores_standardised", "blend_weight"], ["weighted"]),
        helper.make_node("Add", ["embedding_scores_standardised", "weighted"], ["scores_all"]),
    ]


def export_pair_scorer(scorer: PairScorer, path: Path, metadata: dict[str, str]) -> Path:
    """The pair scorer as ONNX, built node by node: users, items in; the clipped rating and a
    1/0 'the model knew both' out. The same arithmetic, in the same order, as
    `PairScorer.forward` (an index past the tables falls back to the biases it knows)."""
    from onnx import TensorProto, helper

    n_users, n_items = scorer.user_emb.shape[0], scorer.item_emb.shape[0]
    nodes = [
        helper.make_node("Less", ["users", "num_users"], ["known_user"]),
        helper.make_node("Less", ["items", "num_items"], ["known_item"]),
        helper.make_node("Min", ["users", "last_user"], ["user_rows"]),
        helper.make_node("Min", ["items", "last_item"], ["item_rows"]),
        helper.make_node("And", ["known_user", "known_item"], ["known_both"]),
        helper.make_node("Cast", ["known_both"], ["known"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["known_user"], ["known_user_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["known_item"], ["known_item_f"], to=TensorProto.FLOAT),
        helper.make_node("Gather", ["user_emb", "user_rows"], ["user_vectors"], axis=0),
        helper.make_node("Gather", ["item_emb", "item_rows"], ["item_vectors"], axis=0),
        helper.make_node("Mul", ["user_vectors", "item_vectors"], ["products"]),
        helper.make_node("ReduceSum", ["products", "axis_1"], ["raw_dot"], keepdims=0),
        helper.make_node("Mul", ["raw_dot", "known"], ["dot"]),
        helper.make_node("Gather", ["user_bias", "user_rows"], ["user_bias_rows"], axis=0),
        helper.make_node("Gather", ["item_bias", "item_rows"], ["item_bias_rows"], axis=0),
        helper.make_node("Mul", ["user_bias_rows", "known_user_f"], ["user_term"]),
        helper.make_node("Mul", ["item_bias_rows", "known_item_f"], ["item_term"]),
        helper.make_node("Add", ["offset", "user_term"], ["with_user"]),
        helper.make_node("Add", ["with_user", "item_term"], ["with_item"]),
        helper.make_node("Add", ["with_item", "dot"], ["unclipped"]),
        helper.make_node("Clip", ["unclipped", "low", "high"], ["rating"]),
    ]
    tables = _Tables(path)
    for name in ("user_emb", "item_emb", "user_bias", "item_bias", "offset", "low", "high"):
        tables.table(name, getattr(scorer, name))
    tables.constant("num_users", n_users, np.int64)
    tables.constant("num_items", n_items, np.int64)
    tables.constant("last_user", n_users - 1, np.int64)
    tables.constant("last_item", n_items - 1, np.int64)
    tables.constant("axis_1", [1], np.int64)
    graph = helper.make_graph(
        nodes,
        "encore_pair_scorer",
        [
            helper.make_tensor_value_info("users", TensorProto.INT64, ["pairs"]),
            helper.make_tensor_value_info("items", TensorProto.INT64, ["pairs"]),
        ],
        [
            helper.make_tensor_value_info("rating", TensorProto.FLOAT, ["pairs"]),
            helper.make_tensor_value_info("known", TensorProto.FLOAT, ["pairs"]),
        ],
        tables.close(),
    )
    return _save(graph, path, metadata)


def _save(graph, path: Path, metadata: dict[str, str]) -> Path:
    """The graph as a checked model file, with `metadata` in its metadata_props (its tables
    are already in the external data file beside it)."""
    import onnx
    from onnx import helper

    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="encore"
    )
    model.ir_version = 8  # what onnxruntime >= 1.14 reads
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    # By path, so the checker also finds every external table where the graph says it is.
    onnx.checker.check_model(str(path), full_check=True)
    return path
