"""Training configuration: every knob of both trainers, with the seeds' defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # torch is imported where used: the CLI reads configs without it
    import torch

ModelKind = Literal["gat-bpr", "rating"]
Precision = Literal["fp32", "bf16"]


# Keys a model version's recorded config carries besides TrainConfig's: a baseline's fitted
# parameters (tasks/registry/publish.py). Read back from the registry, they are not knobs.
RECORD_ONLY_KEYS = frozenset({"baseline"})


@dataclass
class TrainConfig:
    model: ModelKind = "gat-bpr"
    epochs: int = 10
    lr: float = 0.01
    batch_size: int = 512
    embedding_dim: int = 32
    heads: int = 4
    num_layers: int = 2
    negatives: int = 4  # sampled negatives per positive (BPR)
    l2: float = 1e-4  # BPR: L2 on the batch's layer-0 embeddings; rating: on the batch's factors
    # The rating model's closed-form biases: their regularisation (None: chosen on val; a serving
    # refit takes the gated run's, which has no val to choose on).
    bias_regularization: float | None = None
    weight_decay: float = 0.0
    patience: int = 5
    min_lr: float = 1e-4
    lr_factor: float = 0.5
    lr_patience: int = 3
    use_scheduler: bool = False
    val_ratio: float = 0.15
    test_ratio: float = 0.15
    # auto: the forward holdout (time) when the data has timestamps, else hash (models_src/data.py)
    split: Literal["auto", "hash", "time", "day-hash"] = "hash"
    split_salt: str = "encore"
    # The time split's held-out days: test the last ones, val the ones before (data.time_cuts);
    # None: val_ratio and test_ratio of the events.
    holdout_days: float | None = None
    k: int = 10
    device: str = "auto"
    # The training step's arithmetic: bf16 runs GAT-BPR's propagation (and the rating model's
    # forward) under torch.autocast; weights, optimizer state, the loss and evaluation stay fp32.
    precision: Precision = "fp32"
    seed: int = 42
    use_groups: bool = True  # side nodes (artist, genre) join the graph when the source has them
    rating_threshold: float | None = None  # liked = rating >= this (default: the scale's top 40 %)
    # GAT-BPR on explicit ratings: learn from every rated pair, or from the liked ones only.
    positives: Literal["all", "liked"] = "all"
    eval_batch_size: int = 1024
    checkpoint_every: int = 1
    # GAT-BPR steps: the full graph, or sampled subgraphs around each batch (models_src/
    # sampling.py); auto samples when a full-graph step would not fit in memory.
    minibatch: Literal["auto", "full", "sampled"] = "auto"
    fanout: int = 10  # neighbours sampled per node and layer
    # The ranking loss: BPR on dot products, or sampled softmax on cosine similarity at this
    # temperature (models_src/models/gat_bpr.py).
    loss: Literal["bpr", "softmax"] = "bpr"
    temperature: float = 0.1
    # GAT-BPR: batches grow on large data so an epoch is at most this many full-graph steps.
    max_steps_per_epoch: int = 256
    # BPR against the hardest (highest-scoring) of each positive's sampled negatives (dynamic
    # negative sampling, Zhang et al., SIGIR 2013) instead of the mean over all of them.
    hard_negatives: bool = False
    attention: bool = True  # False: LightGCN's symmetric propagation (no learned weights)
    # XSimGCL's contrastive term (models_src/models/gat_bpr.py): weight (0 = off), noise length,
    # InfoNCE temperature, and the layer whose embedding is the second view.
    cl_weight: float = 0.0
    cl_eps: float = 0.1
    cl_temperature: float = 0.2
    cl_layer: int = 1
    # GAT-BPR's scores blended with item-item weights chosen on val after training
    # (models_src/item_item.py): each item's top-k neighbour lists, or with `item_item_dense`
    # EASE^R's dense matrix; no items x items array past `item_item_max_items` items.
    item_item: bool = False
    item_item_max_items: int = 20_000
    item_item_dense: bool = False
    # After the blend: recent popularity added to the served scores as an item bias, window and
    # weight chosen on val (models_src/recency.py); weight 0 when it does not help.
    recency_prior: bool = False
    # "study <name> trial <n>" when a tuning study (models_src/tuning.py) chose the parameters:
    # recorded with the model version.
    tuned_from: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """The config of `values`; an unknown key is an error naming the nearest known one
        (a misspelled parameter must not be dropped silently)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known - RECORD_ONLY_KEYS)
        if unknown:
            raise ValueError(unknown_keys_message(unknown, known))
        return cls(**{k: v for k, v in values.items() if k in known})

    @property
    def monitor(self) -> str:
        """The validation metric early stopping and the LR schedule watch."""
        return f"recall@{self.k}"


def unknown_keys_message(unknown: list[str], known: set[str]) -> str:
    """'unknown parameter lrr (did you mean lr?); valid: ...'"""
    import difflib

    hints = []
    for name in unknown:
        near = difflib.get_close_matches(name, known, n=1)
        hints.append(f"{name} (did you mean {near[0]}?)" if near else name)
    return f"unknown parameter {', '.join(hints)}; valid: {', '.join(sorted(known))}"


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "--device cuda: torch sees no CUDA device on this machine; use auto or cpu"
        )
    return torch.device(name)


def training_autocast(device: torch.device, precision: Precision) -> torch.autocast:
    """The autocast context of a training step: bf16 where asked, a no-op for fp32 (so the
    default arithmetic is exactly what it was before the option existed)."""
    import torch

    return torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16"
    )


LIKED_SHARE_OF_SCALE = 0.4


def relevance_threshold(low: float, high: float, threshold: float | None) -> float:
    """'The user liked it': a rating in the scale's upper 40 % (>= 3.4 on 1-5, so 4 and 5;
    >= 3.2 on 0.5-5; >= 6.4 on 1-10), unless the source sets its own threshold."""
    if threshold is not None:
        return threshold
    return low + (1.0 - LIKED_SHARE_OF_SCALE) * (high - low)


def rating_scale(data) -> tuple[float, float]:
    """The source's rating scale (from the export's metadata), else the observed range."""
    scale = data.meta.get("rating_scale") or (float(data.rating.min()), float(data.rating.max()))
    return float(scale[0]), float(scale[1])


def like_threshold(data, configured: float | None = None) -> float | None:
    """The like threshold of explicit data (`data.rating` set); None for implicit data."""
    if data.rating is None:
        return None
    return relevance_threshold(*rating_scale(data), configured)


def tuned_defaults(model: ModelKind) -> dict[str, Any]:
    """The nightly's defaults as TrainConfig fields, read from the one definition of each
    model's parameters (models_src/params.py); the CLIs keep the seeds' defaults above for
    compatibility."""
    from models_src.params import MODEL_PARAMS

    return {"model": model, **MODEL_PARAMS[model]().training_fields()}
