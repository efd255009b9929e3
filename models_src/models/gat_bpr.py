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

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATConv, LGConv
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import to_torch_csr_tensor

from models_src.sampling import sampled_edge_weight


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
        cosine: bool = False,
        attention: bool = True,
    ) -> None:
        """`cosine`: users and items are compared by the angle of their embeddings (a model
        trained with `softmax_loss`), so `split_embedding` returns them normalised.
        `attention` False propagates with LightGCN's fixed symmetric weights (PyG's LGConv)
        instead of learned attention: the ablation's control, kept as an option."""
        super().__init__()
        self.num_users, self.num_items, self.num_groups = num_users, num_items, num_groups
        self.cosine, self.attention = cosine, attention
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
            if attention
            else LGConv(normalize=False)  # normalised once, in propagation_graph
            for _ in range(num_layers)
        )
        self._graph_cache: tuple[Tensor, Tensor] | None = None
        # The whole graph's node degrees, which steps on sampled subgraphs weigh their edges by
        # (`propagation_graph`), on the training device; set by whoever samples. A plain
        # attribute, not a buffer: the graph's, not the model's, so never saved or broadcast.
        self.whole_graph_degree: Tensor | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.embedding.weight, std=0.1)
        for conv in self.convs:
            conv.reset_parameters()
            if not isinstance(conv, GATConv):
                continue
            # Start each layer's feature transform at the identity: the layer begins as plain
            # attention-weighted averaging, and learns a transform only where it helps.
            with torch.no_grad():
                eye = torch.eye(self.embedding_dim).repeat(self.heads, 1)
                conv.lin.weight.copy_(eye)

    def get_embedding(self, edge_index: Tensor, nodes: Tensor | None = None) -> Tensor:
        """Final embedding of every node: the mean over layers 0..L. With `nodes`, of a
        subgraph: `edge_index` is in positions of `nodes` (models_src/sampling.py)."""
        return self.perturbed_embedding(edge_index, nodes, view_layer=0)[0]

    def perturbed_embedding(
        self,
        edge_index: Tensor,
        nodes: Tensor | None = None,
        eps: float = 0.0,
        view_layer: int = 1,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The final embedding and layer `view_layer`'s, with XSimGCL's noise (Yu et al., TKDE
        2023) when `eps` > 0: every propagated layer moves by a random vector of length `eps`
        in its own orthant, so the two are two views of each node for a contrastive loss
        computed from one propagation (SimGCL needs three)."""
        x = self.embedding.weight if nodes is None else self.embedding(nodes)
        # The whole graph is undirected (models_src/data.py's bipartite_edge_index); a sampled
        # subgraph's edges point from the drawn neighbours to the nodes that drew them.
        symmetric = nodes is None
        graph = self.propagation_graph(edge_index, x.size(0), nodes)
        if self._propagates_linearly(x, symmetric, eps, view_layer):
            return SymmetricLayerMean.apply(x, graph, self.num_layers), x
        layers, view = [x], x
        for depth, conv in enumerate(self.convs, start=1):
            x = self._layer(conv, x, graph)
            if eps > 0:
                noise = torch.rand(x.shape, device=x.device, generator=generator)
                x = x + torch.sign(x) * F.normalize(noise, dim=-1) * eps
            layers.append(x)
            if depth == view_layer:
                view = x
        return torch.stack(layers).mean(dim=0), view

    def _propagates_linearly(self, x: Tensor, symmetric: bool, eps: float, view_layer: int) -> bool:
        """Whether the layer mean is LightGCN's linear smoothing of `x` by a symmetric matrix,
        which SymmetricLayerMean computes and differentiates in a fraction of autograd's
        memory: no attention, no noise, no intermediate layer asked for as a view, and fp32
        (under autocast each layer's dtype is autocast's choice, the layers' path below)."""
        plain = not self.attention and eps == 0 and view_layer == 0
        return plain and symmetric and not torch.is_autocast_enabled(x.device.type)

    def _layer(self, conv: nn.Module, x: Tensor, graph: Tensor) -> Tensor:
        """One propagation layer. Under bf16 autocast on CPU the LightGCN layer's sparse CSR
        product stays fp32: torch has no bf16 kernel for it there. On CUDA autocast hands it to
        cuSPARSE in bf16 (tests/test_gpu.py checks that it does)."""
        if self.attention or x.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
            return conv(x, graph)
        with torch.autocast("cpu", enabled=False):
            return conv(x.float(), graph)

    def propagation_graph(
        self, edge_index: Tensor, num_nodes: int, nodes: Tensor | None = None
    ) -> Tensor:
        """What the layers propagate over: the edge list for attention; without it, LightGCN's
        weighted adjacency as a sparse CSR matrix, built once per graph and reused by every
        layer and step (one sparse matrix product per layer instead of a degree computation
        and a scatter per layer and step). The whole graph (`nodes` None) is undirected:
        D^-1/2 A D^-1/2, its own transpose. A subgraph sampled around a batch (`nodes`: its
        nodes' global ids) is directed, drawn neighbour -> the node that drew it: rows are the
        edges' targets (PyG's adj_t), so each node sums what its sampled neighbours bring,
        weighted by the whole graph's degrees (`sampled_edge_weight`) so that training learns
        the propagation evaluation and serving apply to the whole graph."""
        if self.attention:
            return edge_index
        cached = self._graph_cache
        if cached is not None and cached[0] is edge_index:
            return cached[1]
        if nodes is None:
            rows_are_targets, weight = gcn_norm(edge_index, None, num_nodes, add_self_loops=False)
        else:
            if self.whole_graph_degree is None:
                raise ValueError("a sampled subgraph needs whole_graph_degree set on the model")
            weight = sampled_edge_weight(edge_index, self.whole_graph_degree[nodes])
            rows_are_targets = edge_index.flip(0)
        with warnings.catch_warnings():  # torch calls sparse CSR "beta": it is what we want
            warnings.simplefilter("ignore", UserWarning)
            adjacency = to_torch_csr_tensor(rows_are_targets, weight, size=(num_nodes, num_nodes))
        self._graph_cache = (edge_index, adjacency)
        return adjacency

    def split_embedding(self, embedding: Tensor) -> tuple[Tensor, Tensor]:
        """Users' and items' rows of the final embedding, as scored by a dot product."""
        users = embedding[: self.num_users]
        items = embedding[self.num_users : self.num_users + self.num_items]
        if self.cosine:
            return F.normalize(users, dim=-1), F.normalize(items, dim=-1)
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
        ranking = GATBPR.ranking_loss(positive, negative)
        return ranking + l2 * GATBPR.l2_penalty(batch_embeddings, positive.shape[0])

    @staticmethod
    def ranking_loss(positive: Tensor, negative: Tensor) -> Tensor:
        """BPR's ranking term alone: -log σ(s_pos - s_neg), averaged over every pair."""
        if negative.dim() == 2:
            positive = positive.unsqueeze(1)
        return -F.logsigmoid(positive - negative).mean()

    @staticmethod
    def l2_penalty(batch_embeddings: list[Tensor], batch_size: int) -> Tensor:
        """Squared norm of the layer-0 embeddings a batch used, per positive pair."""
        return sum(e.pow(2).sum() for e in batch_embeddings) / batch_size

    @staticmethod
    def l2_penalty_of_nodes(table: Tensor, used: Tensor, batch_size: Tensor | int) -> Tensor:
        """`l2_penalty` of the rows `used` of `table` (one entry per use, repeats counted),
        computed once per distinct row weighted by its count: the same value and gradient
        without gathering a (uses x dim) copy (8 negatives make that 10x the batch)."""
        counts = torch.bincount(used, minlength=table.size(0))
        rows = counts.nonzero().squeeze(1)
        squared = table[rows].pow(2).sum(-1)
        return (counts[rows].to(table.dtype) * squared).sum() / batch_size

    @staticmethod
    def softmax_loss(
        user: Tensor, positive: Tensor, negative: Tensor, temperature: float
    ) -> Tensor:
        """Sampled softmax (Wu et al., "On the Effectiveness of Sampled Softmax Loss for Item
        Recommendation", TOIS 2024): the positive's cross-entropy against the negatives, on
        cosine similarity sharpened by `temperature`. Unlike BPR it weighs every negative by
        how close it scores, so hard negatives dominate and popular items are not inflated.
        Shapes: user, positive (B, D); negative (B, N, D)."""
        user, positive = F.normalize(user, dim=-1), F.normalize(positive, dim=-1)
        negative = F.normalize(negative, dim=-1)
        pos = (user * positive).sum(-1, keepdim=True)
        neg = (user.unsqueeze(1) * negative).sum(-1)
        logits = torch.cat([pos, neg], dim=1) / temperature
        target = torch.zeros(len(user), dtype=torch.long, device=user.device)
        return F.cross_entropy(logits, target)

    @staticmethod
    def contrastive_loss(first: Tensor, second: Tensor, temperature: float) -> Tensor:
        """InfoNCE between two views of the same nodes (row i of each): each node's other view
        is its positive, the other nodes' are its negatives (XSimGCL's cross-layer term)."""
        first, second = F.normalize(first, dim=-1), F.normalize(second, dim=-1)
        logits = first @ second.T / temperature
        return F.cross_entropy(logits, torch.arange(len(first), device=first.device))


class SymmetricLayerMean(torch.autograd.Function):
    """mean(x, A x, A^2 x, ..., A^L x) for a symmetric sparse A: LightGCN's propagation and
    layer mean in one step, and its gradient the same operator applied to the incoming
    gradient (the operator is symmetric, as A is).

    Autograd through L sparse products and a stacked mean keeps every layer, the stack and,
    in each product's backward, a transposed copy of A: 1.2 GB above the floor of the 10M
    bench-scale night's training worker, its largest process. This holds three node tables
    at a time and never transposes A."""

    @staticmethod
    def forward(ctx, x: Tensor, adjacency: Tensor, num_layers: int) -> Tensor:
        ctx.adjacency, ctx.num_layers = adjacency, num_layers
        return layer_mean(adjacency, x, num_layers)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        return layer_mean(ctx.adjacency, grad, ctx.num_layers), None, None


def layer_mean(adjacency: Tensor, x: Tensor, num_layers: int) -> Tensor:
    """mean(x, A x, ..., A^L x), summed as it goes."""
    total, layer = x.clone(), x
    for _ in range(num_layers):
        layer = torch.sparse.mm(adjacency, layer)
        total += layer
    return total.div_(num_layers + 1)
