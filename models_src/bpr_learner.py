"""GAT-BPR's epoch and evaluation: BPR (or sampled softmax) steps on the full graph or on sampled
subgraphs, data-parallel under torchrun, top-K on the held-out pairs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models_src.config import (
    Precision,
    TrainConfig,
    like_threshold,
    training_autocast,
)
from models_src.data import Interactions, bipartite_edge_index
from models_src.distributed import current as current_data_parallel
from models_src.evaluation import Protocol
from models_src.learner_base import Learner, _batches, training_positives
from models_src.models import GATBPR
from models_src.sampling import NeighborSampler, full_graph_fits, full_graph_step_bytes
from models_src.seeding import run_generator, seeded_global_rng

# Negative sampling looks train pairs up in a user x item bool mask up to this many cells
# (64 MB), by binary search of sorted pair keys beyond it (a large catalogue).
SEEN_MASK_MAX_CELLS = 64 * 2**20


# A BPR step gathers (2 + negatives) embedding rows per positive, and their gradients; batches
# past this many rows are taken in chunks of it (128 MB per gathered copy at 128 channels).
PAIR_ROWS_PER_CHUNK = 2**18


@dataclass(frozen=True)
class Contrast:
    """XSimGCL's contrastive term of a BPR step (TrainConfig.cl_*)."""

    weight: float
    eps: float
    temperature: float
    layer: int
    max_nodes: int = 4096  # per node type and step: the InfoNCE logits are nodes x nodes

    @classmethod
    def from_config(cls, config: TrainConfig) -> Contrast | None:
        if config.cl_weight <= 0:
            return None
        layer = min(config.cl_layer, config.num_layers)
        return cls(config.cl_weight, config.cl_eps, config.cl_temperature, layer)


class BPRStep(nn.Module):
    """One BPR step's loss as a module's forward: DistributedDataParallel synchronises the
    gradients of what runs through a forward call, and GATBPR's training step is not its
    forward (that scores pairs)."""

    def __init__(
        self,
        model: GATBPR,
        l2: float,
        contrast: Contrast | None = None,
        generator: torch.Generator | None = None,
        temperature: float | None = None,
        hard_negatives: bool = False,
        precision: Precision = "fp32",
    ) -> None:
        """`temperature`: train with the sampled softmax loss (None: BPR). `hard_negatives`:
        BPR against each positive's highest-scoring sampled negative only. `precision` bf16:
        the propagation (the step's cost) runs under autocast; the scores and the loss are
        computed from its output cast back to fp32, so the loss keeps fp32's resolution."""
        super().__init__()
        self.model, self.l2, self.temperature = model, l2, temperature
        self.hard_negatives, self.precision = hard_negatives, precision
        self.contrast, self.generator = contrast, generator

    def forward(
        self,
        edge_index: Tensor,
        users: Tensor,
        positives: Tensor,
        negatives: Tensor,
        nodes: Tensor | None = None,
    ) -> Tensor:
        """The batch's BPR loss (plus the contrastive term when configured). Node ids are
        global, or positions in `nodes` when the step runs on a sampled subgraph (then items
        are already offset past the users)."""
        embedding, view = self.propagate(edge_index, nodes)
        pairs = self.pair_loss(embedding, users, positives, negatives, nodes)
        return pairs + self.batch_terms(embedding, view, users, positives, negatives, nodes)

    def backward_in_chunks(
        self,
        edge_index: Tensor,
        users: Tensor,
        positives: Tensor,
        negatives: Tensor,
        nodes: Tensor | None,
        chunk: int,
    ) -> Tensor:
        """`forward(...).backward()` with the pair terms taken `chunk` positives at a time;
        returns the loss. The propagation runs once: its output is cut from the graph, each
        chunk's loss sends its gradient back to that cut, and the summed gradient then goes
        through the propagation once. The same gradients as one backward, while the gathered
        (positives x negatives x channels) embeddings exist for one chunk at a time: on large
        data the batch grows with it (max_steps_per_epoch), and with it those tensors.

        Not under DistributedDataParallel, whose gradient hooks need the backward of the
        forward's own output; there each process's shard of the batch bounds them instead."""
        embedding, view = self.propagate(edge_index, nodes)
        cut = embedding.detach().requires_grad_()
        cut_view = view.detach().requires_grad_() if self.contrast else view
        total = torch.zeros((), device=embedding.device)
        for start in range(0, len(users), chunk):
            part = slice(start, start + chunk)
            share = len(users[part]) / len(users)  # the pair loss is a mean over the batch
            loss = share * self.pair_loss(cut, users[part], positives[part], negatives[part], nodes)
            loss.backward()
            total += loss.detach()
        rest = self.batch_terms(cut, cut_view, users, positives, negatives, nodes)
        rest.backward()
        roots, grads = [embedding], [cut.grad]
        if self.contrast and cut_view.grad is not None:
            roots.append(view)
            grads.append(cut_view.grad)
        torch.autograd.backward(roots, grads)
        return total + rest.detach()

    def propagate(self, edge_index: Tensor, nodes: Tensor | None) -> tuple[Tensor, Tensor]:
        """The propagated embedding of every node and the contrastive view (fp32)."""
        contrast = self.contrast
        with training_autocast(edge_index.device, self.precision):
            embedding, view = self.model.perturbed_embedding(
                edge_index,
                nodes,
                eps=contrast.eps if contrast else 0.0,
                view_layer=contrast.layer if contrast else 0,
                generator=self.generator,
            )
        # No-ops in fp32 (the same tensors); under bf16 the loss is computed in fp32.
        return embedding.float(), view.float()

    def pair_loss(
        self,
        embedding: Tensor,
        users: Tensor,
        positives: Tensor,
        negatives: Tensor,
        nodes: Tensor | None,
    ) -> Tensor:
        """The ranking term: each positive against its sampled negatives, averaged."""
        offset = self.model.num_users if nodes is None else 0
        # F.embedding: its backward sums repeated rows faster on CPU than indexing's index_put.
        user_emb = F.embedding(users, embedding)
        pos_emb = F.embedding(offset + positives, embedding)
        neg_emb = F.embedding(offset + negatives, embedding)
        if self.temperature is not None:
            return self.model.softmax_loss(user_emb, pos_emb, neg_emb, self.temperature)
        pos_scores = (user_emb * pos_emb).sum(-1)
        neg_scores = torch.bmm(neg_emb, user_emb.unsqueeze(2)).squeeze(2)
        if self.hard_negatives:
            neg_scores = neg_scores.max(dim=1).values
        return self.model.ranking_loss(pos_scores, neg_scores)

    def batch_terms(
        self,
        embedding: Tensor,
        view: Tensor,
        users: Tensor,
        positives: Tensor,
        negatives: Tensor,
        nodes: Tensor | None,
    ) -> Tensor:
        """What the whole batch adds once: L2 on the layer-0 embeddings it used, and the
        contrastive term on (a sample of) its distinct nodes."""
        offset = self.model.num_users if nodes is None else 0
        layer0 = self.model.embedding.weight if nodes is None else self.model.embedding(nodes)
        used = torch.cat([users, offset + positives, offset + negatives.flatten()])
        loss = self.l2 * self.model.l2_penalty_of_nodes(layer0, used, len(users))
        contrast = self.contrast
        if contrast is None:
            return loss
        terms = [
            self.model.contrastive_loss(embedding[ids], view[ids], contrast.temperature)
            for ids in (self._some(users), self._some(offset + positives))
        ]
        return loss + contrast.weight * sum(terms)

    def _some(self, ids: Tensor) -> Tensor:
        """The batch's distinct nodes, at most `max_nodes` of them (drawn from the run's
        generator)."""
        unique = torch.unique(ids)
        limit = self.contrast.max_nodes
        if len(unique) <= limit:
            return unique
        pick = torch.randperm(len(unique), device=unique.device, generator=self.generator)
        return unique[pick[:limit]]


class BPRLearner(Learner):
    """GAT-BPR on implicit feedback.

    Each step propagates the whole graph once and scores a large batch of positives against
    several sampled negatives: propagation dominates the cost of a step, so big batches with
    several negatives get the most learning out of each propagation (DESIGN.md's levers).

    Under torchrun (models_src/distributed.py) every process draws the same batches and
    negatives and takes its shard of each; DistributedDataParallel averages the gradients.
    """

    mode = "max"

    def __init__(self, splits: dict[str, Interactions], config: TrainConfig, device: torch.device):
        self.splits, self.config, self.device = splits, config, device
        self.monitor = config.monitor
        train = splits["train"]
        self.num_users, self.num_items = train.num_users, train.num_items
        num_groups = train.num_groups if config.use_groups else 0
        # Explicit data: held-out items count as relevant when liked; training positives are
        # every rated pair or the liked ones only (config.positives).
        self.like_threshold = like_threshold(train, config.rating_threshold)
        positives = training_positives(train, config, self.like_threshold)
        with seeded_global_rng(config.seed):
            model = GATBPR(
                train.num_users,
                train.num_items,
                num_groups,
                embedding_dim=config.embedding_dim,
                heads=config.heads,
                num_layers=config.num_layers,
                cosine=config.loss == "softmax",
                attention=config.attention,
            )
        self.model = model.to(device)
        self.generator = run_generator(config.seed, device)
        self.edge_index = bipartite_edge_index(positives, with_groups=num_groups > 0).to(device)
        self.users = torch.from_numpy(positives.user).to(device)
        self.items = torch.from_numpy(positives.item).to(device)
        # Train pairs (a pair rated low is no negative either), for negative sampling: a
        # user x item bit mask when it is small enough, else sorted (user * num_items + item) keys.
        self.seen_mask: Tensor | None = None
        self.seen_keys: Tensor | None = None
        if self.num_users * self.num_items <= SEEN_MASK_MAX_CELLS:
            self.seen_mask = torch.zeros(
                self.num_users, self.num_items, dtype=torch.bool, device=device
            )
            self.seen_mask[torch.from_numpy(train.user), torch.from_numpy(train.item)] = True
        else:
            self.seen_keys = torch.unique(
                torch.from_numpy(train.user * self.num_items + train.item).to(device)
            )
        self.protocol = Protocol(splits, self.like_threshold)
        self.parallel = current_data_parallel()
        self.sampler = self._sampler(config, device)
        self.step: nn.Module = BPRStep(
            self.model,
            config.l2,
            Contrast.from_config(config),
            self.generator,
            config.temperature if config.loss == "softmax" else None,
            config.hard_negatives,
            config.precision,
        )
        if self.parallel.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.step = nn.parallel.DistributedDataParallel(self.step, device_ids=ids)

    def model_args(self) -> dict:
        m = self.model
        return {
            "num_users": m.num_users,
            "num_items": m.num_items,
            "num_groups": m.num_groups,
            "embedding_dim": m.embedding_dim,
            "heads": m.heads,
            "num_layers": m.num_layers,
            "cosine": m.cosine,
            "attention": m.attention,
        }

    @property
    def batch_size(self) -> int:
        """`batch_size`, grown on large data so an epoch takes at most `max_steps_per_epoch`
        full-graph propagations: each costs in proportion to the graph, so with a fixed batch
        an epoch would cost the square of the data's size."""
        steps = self.config.max_steps_per_epoch
        return max(self.config.batch_size, math.ceil(len(self.users) / steps))

    def sample_negatives(self, users: Tensor) -> Tensor:
        """Items each user has not interacted with in train, uniformly: draw, then redraw
        those that hit a seen item (checking only the redrawn ones) until none does. Only a
        user who has seen (nearly) every item could exhaust the rounds; such a user keeps the
        last draws."""
        negatives = self._draw_items((len(users), self.config.negatives))
        clash = self._seen(users.unsqueeze(1).expand_as(negatives), negatives)
        rows, cols = clash.nonzero(as_tuple=True)
        for _ in range(64):
            if len(rows) == 0:
                break
            redrawn = self._draw_items((len(rows),))
            negatives[rows, cols] = redrawn
            still = self._seen(users[rows], redrawn)
            rows, cols = rows[still], cols[still]
        return negatives

    def _draw_items(self, shape: tuple[int, ...]) -> Tensor:
        return torch.randint(0, self.num_items, shape, device=self.device, generator=self.generator)

    def _seen(self, users: Tensor, items: Tensor) -> Tensor:
        """Whether each (user, item) is a train pair: a lookup in the user x item bit mask when
        the catalogue is small enough to hold one, a binary search of the sorted pair keys
        otherwise."""
        if self.seen_mask is not None:
            return self.seen_mask[users, items]
        keys = users * self.num_items + items
        position = torch.searchsorted(self.seen_keys, keys).clamp(max=len(self.seen_keys) - 1)
        return self.seen_keys[position] == keys

    def train_epoch(self, optimizer: torch.optim.Optimizer, epoch: int) -> float:
        self.model.train()
        total, steps = 0.0, 0
        batches = _batches(len(self.users), self.batch_size, f"epoch {epoch}", self.generator)
        for batch in batches:
            users, positives = self.users[batch], self.items[batch]
            # Drawn for the whole batch, so every process consumes the RNG alike and the
            # batches and negatives stay the same everywhere.
            negatives = self.sample_negatives(users)
            mine = self.parallel.shard(len(batch))
            # Weighted so the processes' mean is the whole batch's mean, shards of any size.
            share = (mine.stop - mine.start) * self.parallel.world_size / len(batch)
            optimizer.zero_grad()
            loss = self._backward(users[mine], positives[mine], negatives[mine], share)
            optimizer.step()
            total += float(self.parallel.mean(loss))
            steps += 1
        return total / max(steps, 1)

    def rng_state(self) -> dict[str, Tensor]:
        state = super().rng_state()
        if self.sampler is not None:
            state["sampler"] = self.sampler.generator.get_state()
        return state

    def set_rng_state(self, state: dict[str, Tensor]) -> None:
        super().set_rng_state(state)
        if self.sampler is not None and "sampler" in state:
            self.sampler.generator.set_state(state["sampler"].cpu())

    def _sampler(self, config: TrainConfig, device: torch.device) -> NeighborSampler | None:
        """Sampled subgraphs when asked, or (auto) when a full-graph step would not fit."""
        need = full_graph_step_bytes(
            num_edges=self.edge_index.shape[1],
            num_nodes=self.model.embedding.num_embeddings,
            heads=config.heads,
            channels=config.embedding_dim,
            layers=config.num_layers,
            attention=config.attention,
        )
        fits = full_graph_fits(need, device)
        if config.minibatch == "full" or (config.minibatch == "auto" and fits):
            return None
        nodes = self.model.embedding.num_embeddings
        fanouts = [config.fanout] * config.num_layers
        sampler = NeighborSampler(self.edge_index, nodes, fanouts, config.seed + self.parallel.rank)
        self.model.whole_graph_degree = sampler.degree.to(device)
        return sampler

    def _backward(
        self, users: Tensor, positives: Tensor, negatives: Tensor, share: float
    ) -> Tensor:
        """One step's loss (times `share`), its gradients accumulated on the parameters. A
        batch too large to gather at once is taken in chunks (`BPRStep.backward_in_chunks`)."""
        chunk = max(1, PAIR_ROWS_PER_CHUNK // (2 + negatives.shape[1]))
        if self.parallel.enabled or len(users) <= chunk:
            loss = share * self._step_loss(users, positives, negatives)
            loss.backward()
            return loss.detach()
        return self.step.backward_in_chunks(*self._step_inputs(users, positives, negatives), chunk)

    def _step_loss(self, users: Tensor, positives: Tensor, negatives: Tensor) -> Tensor:
        return self.step(*self._step_inputs(users, positives, negatives))

    def _step_inputs(self, users: Tensor, positives: Tensor, negatives: Tensor) -> tuple:
        """(edge_index, users, positives, negatives, nodes) of the step: the whole graph with
        global ids, or a subgraph sampled around the batch with positions in its `nodes`."""
        if self.sampler is None:
            return self.edge_index, users, positives, negatives, None
        offset = self.num_users
        seeds = torch.cat([users, offset + positives, offset + negatives.flatten()])
        graph = self.sampler.sample(seeds)
        nodes = graph.nodes.to(self.device)
        local = torch.empty(int(nodes.max()) + 1, dtype=torch.long, device=self.device)
        local[nodes] = torch.arange(len(nodes), device=self.device)
        return (
            graph.edge_index.to(self.device),
            local[users],
            local[offset + positives],
            local[offset + negatives],
            nodes,
        )

    @torch.no_grad()
    def item_scores(self) -> tuple[Tensor, Tensor]:
        self.model.eval()
        return self.model.split_embedding(self.model.get_embedding(self.edge_index))

    def evaluate(self, split: str) -> dict[str, float]:
        """The evaluation protocol's summary on `split` (models_src/evaluation.py). `train`
        scores the fit on the training pairs themselves (nothing excluded)."""
        user_emb, item_emb = self.item_scores()
        return self.protocol.evaluate(
            lambda users: user_emb[users] @ item_emb.T,
            split,
            k=self.config.k,
            batch_size=self.config.eval_batch_size,
            device=self.device,
        ).summary
