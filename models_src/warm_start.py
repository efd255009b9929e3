"""Warm start: begin tonight's training from the champion's weights instead of from random.

Tonight's data has every user, item and group the champion knew, plus the ones that arrived
since. Rows are matched by external id (never by position: group codes follow sorted names, so
one new artist shifts them), copied from the champion, and the new rows are initialised so the
first epoch already ranks sensibly for them:

- GAT-BPR: a new node starts at the mean of its neighbours' champion embeddings in tonight's
  training graph (a user at the mean of the items it played, an item at the mean of its
  listeners and its artist): one step of the propagation the model itself does. A node with no
  known neighbour keeps the model's random initialisation.
- Rating model: the champion's factors are copied; the biases are always tonight's closed-form
  fit, and new users and items keep small random factors, so a new user's prediction starts at
  tonight's bias baseline, the classic cold-start answer. (Mean-of-neighbours is not meaningful
  here: user and item factors live in different roles of a dot product.)

Everything that does not depend on the number of nodes (GATConv weights) is copied as is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from models_src.bpr_learner import BPRLearner
from models_src.checkpoint import load_checkpoint
from models_src.learner_base import Learner
from models_src.rating_learner import RatingLearner

# Constructor arguments that must match for the champion's weights to fit tonight's model.
SHAPE_ARGS = {
    "gat-bpr": ("embedding_dim", "heads", "num_layers", "attention", "cosine"),
    "rating": ("embedding_dim",),
}
# GAT-BPR arguments added after the first checkpoints, at the value those checkpoints had.
ADDED_ARGS = {"attention": True, "cosine": False}


class WarmStartIncompatible(ValueError):
    """The champion cannot seed tonight's model (other kind or shape); train from scratch."""


@dataclass
class WarmStartReport:
    """What was carried over: the report and the run's metrics say so."""

    checkpoint: str
    kept: dict[str, int]
    new: dict[str, int]
    dropped: dict[str, int]

    def to_dict(self) -> dict:
        return asdict(self)


def _row_map(old_ids: list, new_ids: list) -> tuple[Tensor, Tensor]:
    """(old rows, new rows) of the ids present in both lists."""
    position = {external: index for index, external in enumerate(new_ids)}
    pairs = [(old, position[e]) for old, e in enumerate(old_ids) if e in position]
    if not pairs:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    old_rows, new_rows = zip(*pairs, strict=True)
    return torch.tensor(old_rows), torch.tensor(new_rows)


def _check_compatible(state: dict, learner: Learner, kind: str) -> None:
    if state.get("model_kind") != kind:
        raise WarmStartIncompatible(f"the champion is a {state.get('model_kind')} model")
    ours = learner.model_args()
    for name in SHAPE_ARGS[kind]:
        theirs = state["model_args"].get(name, ADDED_ARGS.get(name))
        if theirs != ours[name]:
            raise WarmStartIncompatible(
                f"the champion has {name}={theirs}, tonight's config {ours[name]}"
            )


def _section_maps(
    old_artifacts: dict, new_artifacts: dict, sections: tuple[str, ...]
) -> dict[str, tuple[Tensor, Tensor, int, int]]:
    """Per section (users, items, groups): old rows, new rows, old count, new count."""
    maps = {}
    for section in sections:
        old_ids = list(old_artifacts.get(f"{section[:-1]}_ids", []))
        new_ids = list(new_artifacts.get(f"{section[:-1]}_ids", []))
        old_rows, new_rows = _row_map(old_ids, new_ids)
        maps[section] = (old_rows, new_rows, len(old_ids), len(new_ids))
    return maps


def _neighbour_mean_init(
    weight: Tensor, edge_index: Tensor, known: Tensor
) -> tuple[Tensor, Tensor]:
    """Rows not `known` get the mean of their known neighbours' rows; returns (weight, filled)."""
    source, target = edge_index
    useful = known[source] & ~known[target]
    source, target = source[useful], target[useful]
    total = torch.zeros_like(weight).index_add_(0, target, weight[source])
    count = torch.zeros(len(weight), device=weight.device).index_add_(
        0, target, torch.ones(len(target), device=weight.device)
    )
    filled = count > 0
    weight = weight.clone()
    weight[filled] = total[filled] / count[filled].unsqueeze(1)
    return weight, filled


def _warm_gat_bpr(learner: BPRLearner, state: dict, maps: dict) -> dict[str, int]:
    model, old = learner.model, state["model"]
    old_args = state["model_args"]
    old_offsets = {"users": 0, "items": old_args["num_users"]}
    old_offsets["groups"] = old_offsets["items"] + old_args["num_items"]
    new_offsets = {
        "users": 0,
        "items": model.num_users,
        "groups": model.num_users + model.num_items,
    }
    weight = model.embedding.weight.detach().clone()
    known = torch.zeros(len(weight), dtype=torch.bool, device=weight.device)
    old_weight = old["embedding.weight"].to(weight.device)
    for section, (old_rows, new_rows, _, _) in maps.items():
        if section == "groups" and model.num_groups == 0:
            continue
        target = (new_rows + new_offsets[section]).to(weight.device)
        weight[target] = old_weight[(old_rows + old_offsets[section]).to(weight.device)]
        known[target] = True
    weight, filled = _neighbour_mean_init(weight, learner.edge_index, known)
    with torch.no_grad():
        model.embedding.weight.copy_(weight)
        for name, tensor in model.state_dict().items():
            if name != "embedding.weight" and name in old and old[name].shape == tensor.shape:
                tensor.copy_(old[name])
    return {"initialised_from_neighbours": int(filled.sum())}


def _warm_rating(learner: RatingLearner, state: dict, maps: dict) -> dict[str, int]:
    model, old = learner.model, state["model"]
    # The factors only: the biases are tonight's closed-form fit (models_src/models/rating.py).
    tables = {"users": ("user_embedding.weight",), "items": ("item_embedding.weight",)}
    params = dict(model.named_parameters())
    with torch.no_grad():
        for section, names in tables.items():
            old_rows, new_rows, _, _ = maps[section]
            for name in names:
                device = params[name].device
                params[name][new_rows.to(device)] = old[name][old_rows].to(device)
    return {}


def warm_start(learner: Learner, artifacts: dict, checkpoint_path: Path) -> WarmStartReport:
    """Load the champion at `checkpoint_path` into `learner.model`, extended to tonight's ids.

    `artifacts` are tonight's (models_src.learners.prepare_learner): the id lists the champion's
    own artifacts are matched against. Raises WarmStartIncompatible when shapes differ.
    """
    state = load_checkpoint(checkpoint_path, map_location="cpu")
    kind = "gat-bpr" if isinstance(learner, BPRLearner) else "rating"
    _check_compatible(state, learner, kind)
    sections = ("users", "items", "groups") if kind == "gat-bpr" else ("users", "items")
    maps = _section_maps(state["artifacts"], artifacts, sections)
    if kind == "gat-bpr":
        extra = _warm_gat_bpr(learner, state, maps)
    else:
        extra = _warm_rating(learner, state, maps)
    kept = {section: len(m[0]) for section, m in maps.items()}
    return WarmStartReport(
        checkpoint=str(checkpoint_path),
        kept=kept,
        new={section: m[3] - kept[section] for section, m in maps.items()} | extra,
        dropped={section: m[2] - kept[section] for section, m in maps.items()},
    )
