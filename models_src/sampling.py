"""Mini-batches of the user-item graph for GAT-BPR when a full-graph step would not fit.

What PyG's LinkNeighborLoader does for a batch of links: take the batch's nodes (users, their
positive and negative items) as seeds and sample, per GAT layer, a fixed number of incoming
neighbours of the current frontier; the model then propagates over that subgraph only, and the
seeds' embeddings are exact functions of their sampled neighbourhoods.

Why not LinkNeighborLoader itself: its sampler needs `pyg-lib` or `torch-sparse`, and neither
installs here for torch 2.13 (no pyg-lib on the registry; torch-sparse 0.6.18 is a 2023 source
release that would compile on every install). This is the same sampling in plain torch
(uniform, with replacement, as `LinkNeighborLoader(..., replace=True)`); swap it for the loader
where pyg-lib is available. It draws from its own generator, so data-parallel processes keep
drawing the same batches and negatives from the global one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

# Memory of one full-graph training step, from probes of forward + backward on this machine
# (CPU, torch 2.13). GAT: the peak of a training worker per (edge, head, channel), everything in
# the process included, rounded up. LightGCN (a sparse product per layer): per (node, channel,
# layer) the activations, their gradients and the layer mean's stack, and per edge the CSR
# matrix with gcn_norm's temporaries; both rounded up from a 9.5M-edge, 300k-node probe.
GAT_BYTES_PER_EDGE_CHANNEL = 34
SPMM_BYTES_PER_NODE_CHANNEL_LAYER = 12
SPMM_BYTES_PER_EDGE = 64


@dataclass
class SampledGraph:
    """A subgraph: `nodes` (global ids, seeds first) and its edges in local ids."""

    nodes: Tensor
    edge_index: Tensor
    num_seeds: int


class NeighborSampler:
    def __init__(
        self, edge_index: Tensor, num_nodes: int, fanouts: list[int], seed: int = 0
    ) -> None:
        """`edge_index` as PyG's (source, target); `fanouts[h]`: neighbours per node at hop h."""
        source, target = edge_index.cpu()
        order = torch.argsort(target, stable=True)
        self.sources = source[order]
        self.degree = torch.bincount(target, minlength=num_nodes)  # incoming edges per node
        self.rowptr = torch.cat([torch.zeros(1, dtype=torch.long), self.degree.cumsum(0)])
        self.fanouts = list(fanouts)
        self.generator = torch.Generator().manual_seed(seed)

    def neighbours(self, nodes: Tensor, fanout: int) -> tuple[Tensor, Tensor]:
        """(neighbour, node) pairs: `fanout` incoming neighbours per node, drawn uniformly with
        replacement; a node without neighbours gets none."""
        start, degree = self.rowptr[nodes], self.rowptr[nodes + 1] - self.rowptr[nodes]
        has = degree > 0
        nodes, start, degree = nodes[has], start[has], degree[has]
        draw = torch.rand(len(nodes), fanout, generator=self.generator)
        offsets = (draw * degree.unsqueeze(1)).long().clamp(max=(degree - 1).unsqueeze(1))
        picked = self.sources[start.unsqueeze(1) + offsets]
        return picked.flatten(), nodes.repeat_interleave(fanout)

    def sample(self, seeds: Tensor) -> SampledGraph:
        """The seeds' sampled computation graph, one hop per fanout (the model's layers)."""
        seeds = torch.unique(seeds.cpu())
        frontier, sources, targets = seeds, [], []
        for fanout in self.fanouts:
            neighbour, node = self.neighbours(frontier, fanout)
            sources.append(neighbour)
            targets.append(node)
            frontier = torch.unique(neighbour)
        others = torch.cat([*sources, seeds])
        others = others[~torch.isin(others, seeds)]
        nodes = torch.cat([seeds, torch.unique(others)])
        local = torch.full((int(nodes.max()) + 1,), -1, dtype=torch.long)
        local[nodes] = torch.arange(len(nodes))
        edges = torch.stack([local[torch.cat(sources)], local[torch.cat(targets)]])
        return SampledGraph(nodes, edges, len(seeds))


def sampled_edge_weight(edge_index: Tensor, degree: Tensor) -> Tensor:
    """LightGCN's weights for a sampled subgraph's edges (drawn neighbour j -> node i that drew
    it; `degree`: the whole graph's degree of each of the subgraph's nodes), chosen so that each
    node's weighted sum estimates, without bias, the sum it gets on the whole graph,
    sum_j x_j / sqrt(d_i d_j) over all its d_i neighbours. Each of the m_i edges into i is a
    uniform draw among those neighbours, so each weighs d_i / m_i / sqrt(d_i d_j).

    PyG's gcn_norm on the subgraph itself would take the draws' counts for degrees (a scale the
    whole graph, which evaluation and serving propagate over, never has) and give the last
    hop's nodes, which drew nothing and so have no incoming edge, degree 0: their edges would
    weigh nothing and a step would see one hop less than the model has layers."""
    source, target = edge_index
    draws = torch.bincount(target, minlength=len(degree)).clamp(min=1).to(torch.float32)
    degree = degree.to(torch.float32)
    return degree[target].sqrt() / (draws[target] * degree[source].sqrt())


def full_graph_step_bytes(
    num_edges: int, num_nodes: int, heads: int, channels: int, layers: int, attention: bool
) -> int:
    """Estimated memory of one full-graph training step. GATConv materialises a message per
    edge, head and channel; LightGCN's sparse product keeps per layer only node-sized tables,
    so its cost is the nodes', plus the sparse matrix's."""
    if attention:
        return num_edges * heads * channels * GAT_BYTES_PER_EDGE_CHANNEL
    node_tables = num_nodes * channels * (layers + 1) * SPMM_BYTES_PER_NODE_CHANNEL_LAYER
    return node_tables + num_edges * SPMM_BYTES_PER_EDGE


def full_graph_fits(need_bytes: int, device: torch.device) -> bool:
    """Would a step needing `need_bytes` fit in half the device's memory?"""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return need_bytes < free // 2
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return need_bytes < total // 2
