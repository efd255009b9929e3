"""Export a trained model's scorer (not the GNN) to ONNX.

DESIGN.md: PyG's scatter-softmax runs ~9x slower in onnxruntime on CPU and has had wrong-output
export bugs, so the graph is run once in PyTorch and only its result ships: the final user and
item embeddings (and biases, for the rating model) become initializers of a tiny graph that
takes a batch of user indices and a (batch, items) mask of items to exclude, and returns the
top-K item indices and scores. The exclusion is an input, so the file's size does not grow with
the number of interactions.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from models_src.models import GATBPR, RatingModel
from models_src.seeding import GLOBAL_RNG_LOCK


class TopKScorer(nn.Module):
    """score(u, i) = user_emb[u] · item_emb[i] + user_bias[u] + item_bias[i] + offset."""

    def __init__(
        self,
        user_emb: Tensor,
        item_emb: Tensor,
        k: int,
        user_bias: Tensor | None = None,
        item_bias: Tensor | None = None,
        offset: float = 0.0,
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

    def scores(self, users: Tensor) -> Tensor:
        dot = self.user_emb[users] @ self.item_emb.T
        return dot + self.user_bias[users].unsqueeze(1) + self.item_bias.unsqueeze(0) + self.offset

    def forward(self, users: Tensor, exclude: Tensor) -> tuple[Tensor, Tensor]:
        scores = self.scores(users).masked_fill(exclude, float("-inf"))
        top = torch.topk(scores, self.k, dim=1)
        return top.indices, top.values


@torch.no_grad()
def gat_bpr_scorer(model: GATBPR, edge_index: Tensor, k: int) -> TopKScorer:
    model.eval()
    users, items = model.split_embedding(model.get_embedding(edge_index))
    return TopKScorer(users, items, k)


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
        for name, table in (
            ("user_emb", model.user_embedding),
            ("item_emb", model.item_embedding),
            ("user_bias", model.user_bias),
            ("item_bias", model.item_bias),
        ):
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


def export_scorer(scorer: TopKScorer, path: Path, metadata: dict[str, str]) -> Path:
    """The top-K scorer as ONNX (batch size dynamic), `metadata` in its metadata_props."""
    users = torch.arange(min(2, len(scorer.user_emb)))
    exclude = torch.zeros(len(users), len(scorer.item_emb), dtype=torch.bool)
    full = {"k": str(scorer.k), "num_items": str(len(scorer.item_emb)), **metadata}
    return _export(scorer, (users, exclude), ["users", "exclude"], ["items", "scores"], path, full)


def export_pair_scorer(scorer: PairScorer, path: Path, metadata: dict[str, str]) -> Path:
    """The pair scorer as ONNX: users, items in; rating and a 1/0 'model knew both' out."""
    # Two distinct example tensors: the exporter would fold one tensor passed twice into a
    # single graph input.
    users, items = torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.long)
    return _export(scorer, (users, items), ["users", "items"], ["rating", "known"], path, metadata)


def _export(
    module: nn.Module,
    example: tuple,
    inputs: list[str],
    outputs: list[str],
    path: Path,
    metadata: dict[str, str],
) -> Path:
    """torch.onnx (dynamo exporter) with a dynamic batch, metadata, and onnx.checker."""
    import onnx

    batch = torch.export.Dim("batch")
    path.parent.mkdir(parents=True, exist_ok=True)
    # The exporter saves and restores torch's global RNG around its tracing (models_src/seeding.py).
    with GLOBAL_RNG_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            example,
            input_names=inputs,
            output_names=outputs,
            dynamic_shapes=tuple({0: batch} for _ in example),
            dynamo=True,
            verbose=False,
        )
    model = program.model_proto
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path
