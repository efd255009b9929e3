"""GAT-BPR: graph attention over the user-item graph, trained with the BPR loss.

Learnable embeddings for every node (users, items, and side nodes such as artists or genres)
are propagated by GATConv layers over the undirected interaction graph; a node's final
embedding is the mean of its embeddings at every layer (LightGCN's layer combination), and a
user-item score is the dot product of the two. Two choices from the GNN-recommender literature
make it both fast and accurate on id-only graphs (measured in bench/bench_train.py):
- no nonlinearity between layers and no bias: propagation stays a (learned, attention-weighted)
  smoothing of the embeddings, as LightGCN found best for id features;
- the layer mean keeps layer 0 in the final embedding, a residual path that stops attention
  from over-smoothing popular items into everyone's top-K.
API split PyG's way (`torch_geometric.nn.models.LightGCN`): `get_embedding`, `forward`,
`recommend`, `loss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATConv


class GATBPR(nn.Module):
    def __init__(
        self,
        num_users: int,
        num_items: int,
        num_groups: int = 0,
        embedding_dim: int = 32,
        heads: int = 4,
        num_layers: int = 2,
        attention_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_users, self.num_items, self.num_groups = num_users, num_items, num_groups
        self.embedding_dim, self.heads, self.num_layers = embedding_dim, heads, num_layers
        self.embedding = nn.Embedding(num_users + num_items + num_groups, embedding_dim)
        # concat=False averages the heads, so every layer keeps the embedding size.
        self.convs = nn.ModuleList(
            GATConv(
                embedding_dim,
                embedding_dim,
                heads=heads,
                concat=False,
                add_self_loops=False,
                bias=False,
                dropout=attention_dropout,
            )
            for _ in range(num_layers)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.embedding.weight, std=0.1)
        for conv in self.convs:
            conv.reset_parameters()
            # Start each layer's feature transform at the identity: the layer begins as plain
            # attention-weighted averaging, and learns a transform only where it helps.
            with torch.no_grad():
                eye = torch.eye(self.embedding_dim).repeat(self.heads, 1)
                conv.lin.weight.copy_(eye)

    def get_embedding(self, edge_index: Tensor, nodes: Tensor | None = None) -> Tensor:
        """Final embedding of every node: the mean over layers 0..L. With `nodes`, of a
        subgraph: `edge_index` is in positions of `nodes` (models_src/sampling.py)."""
        x = self.embedding.weight if nodes is None else self.embedding(nodes)
        layers = [x]
        for conv in self.convs:
            x = conv(x, edge_index)
            layers.append(x)
        return torch.stack(layers).mean(dim=0)

    def split_embedding(self, embedding: Tensor) -> tuple[Tensor, Tensor]:
        users = embedding[: self.num_users]
        items = embedding[self.num_users : self.num_users + self.num_items]
        return users, items

    def forward(self, edge_index: Tensor, users: Tensor, items: Tensor) -> Tensor:
        """Scores of (user, item) pairs."""
        user_emb, item_emb = self.split_embedding(self.get_embedding(edge_index))
        return (user_emb[users] * item_emb[items]).sum(dim=-1)

    @torch.no_grad()
    def recommend(
        self, edge_index: Tensor, users: Tensor, k: int, exclude: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Top-k items and scores per user; `exclude` is a (users, items) bool mask of items
        never to recommend (masked to -inf before topk)."""
        user_emb, item_emb = self.split_embedding(self.get_embedding(edge_index))
        scores = user_emb[users] @ item_emb.T
        if exclude is not None:
            scores = scores.masked_fill(exclude, float("-inf"))
        top = torch.topk(scores, k, dim=1)
        return top.indices, top.values

    @staticmethod
    def loss(
        positive: Tensor, negative: Tensor, batch_embeddings: list[Tensor], l2: float = 1e-4
    ) -> Tensor:
        """BPR: -log σ(s_pos - s_neg), averaged over every (positive, negative) pair, plus L2
        on the layer-0 embeddings used by the batch (not on the whole table, which would
        shrink rarely-seen users every step)."""
        if negative.dim() == 2:
            positive = positive.unsqueeze(1)
        ranking = -F.logsigmoid(positive - negative).mean()
        reg = sum(e.pow(2).sum() for e in batch_embeddings) / positive.shape[0]
        return ranking + l2 * reg
