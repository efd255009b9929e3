"""Sampled-subgraph training of GAT-BPR: the sampler draws real edges, the model propagates on the
subgraph, and training on it learns; auto keeps small graphs full."""

from __future__ import annotations

import torch
from conftest import planted

from models_src.config import TrainConfig
from models_src.data import bipartite_edge_index, split_interactions
from models_src.learners import make_learner
from models_src.sampling import NeighborSampler, full_graph_fits, full_graph_step_bytes
from models_src.trainers import AdvancedTrainer


def test_sampled_edges_exist_point_at_their_seeds_and_respect_the_fanout():
    data = planted(users=50, items_per_group=10, groups=["a", "b"], seed=1)
    data.rating = None
    edge_index = bipartite_edge_index(data)
    nodes = data.num_users + data.num_items + data.num_groups
    sampler = NeighborSampler(edge_index, nodes, fanouts=[3, 2], seed=0)
    seeds = torch.tensor([0, 7, data.num_users + 4])
    graph = sampler.sample(seeds)

    assert graph.num_seeds == 3 and torch.equal(graph.nodes[:3], seeds.sort().values)
    assert len(torch.unique(graph.nodes)) == len(graph.nodes)
    real = {tuple(edge) for edge in edge_index.T.tolist()}
    sampled = graph.nodes[graph.edge_index].T.tolist()
    assert sampled and all(tuple(edge) in real for edge in sampled)
    # Hop 1 draws 3 neighbours for each seed (hop 2 may add edges into a seed that is also a
    # neighbour of another seed's neighbours).
    into_seeds = torch.bincount(graph.edge_index[1][graph.edge_index[1] < 3], minlength=3)
    assert torch.all(into_seeds >= 3)
    assert len(sampled) <= 3 * 3 + 2 * len(graph.nodes)


def test_training_on_sampled_subgraphs_learns(tmp_path):
    data = planted(users=300, items_per_group=40, groups=["a", "b", "c", "d"], seed=2)
    data.rating = None
    config = TrainConfig(
        model="gat-bpr", epochs=6, lr=0.05, batch_size=1024, negatives=4, num_layers=1,
        l2=1e-3, minibatch="sampled", fanout=5, device="cpu", patience=6,
    )  # fmt: skip
    torch.manual_seed(0)
    learner = make_learner(
        split_interactions(data, "hash", 0.15, 0.15), config, torch.device("cpu")
    )
    assert learner.sampler is not None
    final = AdvancedTrainer(learner, config, tmp_path, log=lambda _: None).fit()
    # 10 random picks of 160 items would recall about 10/160 of a user's held-out items.
    assert final["val"]["recall@10"] > 3 * 10 / 160


def test_auto_keeps_small_graphs_full_and_samples_when_the_step_would_not_fit():
    data = planted(users=40, items_per_group=5, groups=["a", "b"], seed=3)
    data.rating = None
    splits = split_interactions(data, "hash", 0.15, 0.15)
    auto = make_learner(splits, TrainConfig(model="gat-bpr", device="cpu"), torch.device("cpu"))
    assert auto.sampler is None
    cpu = torch.device("cpu")
    assert full_graph_fits(full_graph_step_bytes(10_000, 3_000, 4, 32, 2, True), cpu)
    assert not full_graph_fits(full_graph_step_bytes(10**12, 10**6, 4, 32, 2, True), cpu)


def test_lightgcn_steps_are_sized_by_nodes_not_by_edges_times_heads():
    """A 10M-listen night's graph (9.5M directed edges, 300k nodes, 128 channels, 3 layers)
    needs a few GB as LightGCN, where the attention estimate would ask for 165 GB."""
    edges, nodes = 9_500_000, 300_000
    lightgcn = full_graph_step_bytes(edges, nodes, 4, 128, 3, attention=False)
    attention = full_graph_step_bytes(edges, nodes, 4, 128, 3, attention=True)
    assert 1.5e9 < lightgcn < 4e9
    assert attention > 40 * lightgcn
    # More nodes cost more even on the same edges; heads do not matter without attention.
    assert full_graph_step_bytes(edges, 2 * nodes, 4, 128, 3, False) > lightgcn
    assert full_graph_step_bytes(edges, nodes, 1, 128, 3, False) == lightgcn
