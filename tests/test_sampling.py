"""Sampled-subgraph training of GAT-BPR: the sampler draws real edges, the model propagates on the
subgraph, and training on it learns; auto keeps small graphs full."""

from __future__ import annotations

import torch
from conftest import planted

from models_src.config import TrainConfig
from models_src.data import bipartite_edge_index, split_interactions
from models_src.learners import make_learner
from models_src.models import GATBPR
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


def lightgcn_on(data, num_layers: int) -> tuple[GATBPR, torch.Tensor]:
    """A LightGCN-propagating GAT-BPR over `data`'s graph, told its degrees as a sampler does."""
    edge_index = bipartite_edge_index(data, with_groups=False)
    model = GATBPR(
        data.num_users, data.num_items, 0, embedding_dim=4, num_layers=num_layers, attention=False
    )
    nodes = data.num_users + data.num_items
    model.whole_graph_degree = torch.bincount(edge_index[1], minlength=nodes)
    return model, edge_index


def test_a_subgraph_of_every_edge_within_reach_gives_its_seed_the_whole_graphs_embedding():
    """Each node of the subgraph that drew neighbours drew all of them once: the sampled
    propagation is then the whole graph's exactly, for the seed, whose two layers reach the
    hop-2 users. (The subgraph's own gcn_norm would weigh those users' edges 0: they drew
    nothing, so have no incoming edge.)"""
    data = planted(users=30, items_per_group=6, groups=["a", "b"], seed=4)
    model, edge_index = lightgcn_on(data, num_layers=2)
    source, target = edge_index
    seed = torch.tensor([0])
    hop1 = source[target == 0]  # the seed's items, each an edge item -> seed
    into_hop1 = torch.isin(target, hop1)  # every user of those items -> the item
    sub_source = torch.cat([hop1, source[into_hop1]])
    sub_target = torch.cat([torch.zeros_like(hop1), target[into_hop1]])
    others = torch.unique(torch.cat([sub_source, sub_target]))
    nodes = torch.cat([seed, others[others != 0]])
    local = torch.full((int(nodes.max()) + 1,), -1)
    local[nodes] = torch.arange(len(nodes))
    sampled = model.get_embedding(torch.stack([local[sub_source], local[sub_target]]), nodes)
    whole = model.get_embedding(edge_index)
    assert torch.allclose(sampled[0], whole[0], atol=1e-6)


def test_sampled_steps_estimate_the_whole_graphs_propagation_without_bias():
    """Three draws per node, averaged over many samples, give the seeds the embedding the
    whole graph gives them (the estimate is unbiased, so the model trained on samples is the
    one evaluation and serving propagate over the whole graph): every coordinate of the mean
    lies within 4 standard errors of it."""
    torch.manual_seed(0)
    data = planted(users=40, items_per_group=8, groups=["a", "b"], seed=5)
    model, edge_index = lightgcn_on(data, num_layers=1)
    sampler = NeighborSampler(edge_index, len(model.whole_graph_degree), fanouts=[3], seed=0)
    seeds = torch.tensor([1, 2, data.num_users + 3])
    with torch.no_grad():
        whole = model.get_embedding(edge_index)[seeds]
        draws = [sampler.sample(seeds) for _ in range(4000)]
        estimates = torch.stack(
            [model.get_embedding(d.edge_index, d.nodes)[: d.num_seeds] for d in draws]
        )
    standard_error = estimates.std(0) / len(draws) ** 0.5
    assert (standard_error > 0).all()
    assert ((estimates.mean(0) - whole).abs() < 4 * standard_error).all()


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
