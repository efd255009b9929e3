"""The models' parameters, defined once: one pydantic class per model kind, `extra="forbid"`.

Everything else is derived from these classes: the nightly defaults (`models_src.config.
tuned_defaults`), the Prefect run form (flows/params.py nests them), the `encore nightly --set`
option, the tuning job's search space (the "tune" entry of a field's JSON schema) and the
docs' parameter table (`python -m models_src.params --readme docs/reference/parameters.md`,
checked by tests/test_params.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Params(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # Fields that steer how a run is orchestrated rather than what is trained (not TrainConfig's).
    ORCHESTRATION: ClassVar[frozenset[str]] = frozenset()

    def training_fields(self) -> dict[str, Any]:
        """The values models_src.config.TrainConfig takes."""
        return self.model_dump(exclude=set(self.ORCHESTRATION))


# The tuning job's search space is declared on the parameters themselves (the "tune" key of a
# field's JSON schema), so a searched parameter and its default cannot drift apart.
def _search(low: float, high: float, log: bool = False, integer: bool = False) -> dict:
    return {"tune": {"low": low, "high": high, "log": log, "integer": integer}}


def _choices(*values: Any) -> dict:
    return {"tune": {"choices": list(values)}}


def search_space(params: type[BaseModel]) -> dict[str, dict]:
    """name -> models_src.tuning.Dimension fields, for every field of `params` with a "tune"
    entry."""
    space = {}
    for name, field in params.model_fields.items():
        extra = field.json_schema_extra
        if isinstance(extra, dict) and "tune" in extra:
            space[name] = dict(extra["tune"])
    return space


class GatBprParams(_Params):
    """GAT-BPR (implicit feedback): the nightly's defaults, chosen on val to hold across dataset
    shapes (bench/results/tune.md; attention and the losses in bench/results/ablation.md)."""

    ORCHESTRATION = frozenset({"processes"})

    epochs: int = Field(50, ge=1, description="Upper bound; early stopping usually ends sooner.")
    patience: int = Field(5, ge=1, description="Epochs without a better val Recall@K to stop.")
    lr: float = Field(
        0.035,
        gt=0,
        description="Adam learning rate.",
        json_schema_extra=_search(5e-3, 0.1, log=True),
    )
    batch_size: int = Field(
        8192,
        ge=1,
        description="Positive pairs per step.",
        json_schema_extra=_choices(4096, 8192, 32768),
    )
    max_steps_per_epoch: int = Field(
        256,
        ge=1,
        description="Steps per epoch at most: on large data the batch grows past batch_size, "
        "so an epoch's cost grows with the data, not with its square.",
    )
    negatives: int = Field(
        16,
        ge=1,
        description="Sampled negatives per positive (BPR).",
        json_schema_extra=_choices(1, 4, 8, 16),
    )
    embedding_dim: int = Field(
        128, ge=1, description="Embedding size.", json_schema_extra=_choices(32, 64, 128, 256)
    )
    heads: int = Field(4, ge=1, description="Attention heads per GATConv layer (with attention).")
    num_layers: int = Field(
        3,
        ge=1,
        description="Propagation layers (hops).",
        json_schema_extra=_search(1, 3, integer=True),
    )
    l2: float = Field(
        3e-5,
        ge=0,
        description="L2 on the batch's layer-0 embeddings.",
        json_schema_extra=_search(1e-6, 3e-3, log=True),
    )
    use_scheduler: bool = Field(True, description="ReduceLROnPlateau on val Recall@K.")
    attention: bool = Field(
        False,
        description="Learned attention over neighbours (GATConv); off propagates with "
        "LightGCN's fixed symmetric weights (bench/results/ablation.md).",
    )
    loss: Literal["bpr", "softmax"] = Field(
        "bpr", description="BPR on dot products, or sampled softmax on cosine similarity."
    )
    temperature: float = Field(0.1, gt=0, description="Sampled softmax temperature.")
    hard_negatives: bool = Field(
        False,
        description="BPR against the highest-scoring of each positive's sampled negatives "
        "(dynamic negative sampling) instead of against all of them.",
    )
    item_item: bool = Field(
        True,
        description="Blend the scores with item-item weights (each item's top-k neighbours of "
        "EASE^R or RP3beta), which ones and their weight chosen on val after training "
        "(bench/results/blend.md).",
    )
    item_item_max_items: int = Field(
        20_000,
        ge=0,
        description="Largest catalogue for which the blend may hold an items x items matrix: "
        "EASE^R's inverse while its neighbour lists are built (when users outnumber items), or "
        "its dense weights with item_item_dense.",
    )
    item_item_dense: bool = Field(
        False,
        description="Serve EASE^R's dense items x items weights (up to item_item_max_items) "
        "instead of neighbour lists: the lists served as well on ml-100k and Last.fm "
        "(served_quality.py) at a fraction of the size.",
    )
    recency_prior: bool = Field(
        True,
        description="Add recent popularity to the served scores as an item bias, its window and "
        "weight chosen on val after training (0 when it does not help; models_src/recency.py).",
    )
    cl_weight: float = Field(
        0.0, ge=0, description="Weight of XSimGCL's contrastive term (0: off)."
    )
    cl_eps: float = Field(0.1, ge=0, description="XSimGCL: length of the embedding noise.")
    cl_temperature: float = Field(0.2, gt=0, description="XSimGCL: InfoNCE temperature.")
    cl_layer: int = Field(1, ge=1, description="XSimGCL: the layer contrasted with the output.")
    positives: Literal["all", "liked"] = Field(
        "all",
        description="Explicit ratings: learn the lists from every rated item, or from the liked "
        "ones only (held-out liked items are what the lists are judged on either way).",
    )
    minibatch: Literal["auto", "full", "sampled"] = Field(
        "auto",
        description="Train on the full graph, or on subgraphs sampled around each batch; auto "
        "samples when a full-graph step would not fit in memory.",
    )
    fanout: int = Field(10, ge=1, description="Sampled neighbours per node and layer.")
    processes: int = Field(
        1,
        ge=1,
        description="Data-parallel training processes under torchrun (gloo on CPU, nccl with "
        "one GPU each); 1 trains in the task's own process.",
    )


class RatingParams(_Params):
    """The rating model (explicit ratings, MSE)."""

    epochs: int = Field(50, ge=1, description="Upper bound; early stopping usually ends sooner.")
    patience: int = Field(5, ge=1, description="Epochs without a better val RMSE to stop.")
    lr: float = Field(
        3e-3,
        gt=0,
        description="Adam learning rate.",
        json_schema_extra=_search(1e-3, 3e-2, log=True),
    )
    batch_size: int = Field(
        1024, ge=1, description="Ratings per step.", json_schema_extra=_choices(256, 1024, 4096)
    )
    embedding_dim: int = Field(
        50, ge=1, description="Embedding size.", json_schema_extra=_choices(16, 32, 50, 64, 128)
    )
    l2: float = Field(
        0.05,
        ge=0,
        description="L2 on the factor rows each batch touches (per example); the biases are "
        "the bias baseline's, fitted in closed form with their own regularisation chosen on val.",
        json_schema_extra=_search(1e-3, 0.3, log=True),
    )
    use_scheduler: bool = Field(True, description="ReduceLROnPlateau on val RMSE.")


MODEL_PARAMS: dict[str, type[_Params]] = {"gat-bpr": GatBprParams, "rating": RatingParams}
SECTIONS = {"gat-bpr": "gat_bpr", "rating": "rating"}  # their names in the nightly parameters


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("|", "\\|")


def _searched(spec: dict | None) -> str:
    if not spec:
        return ""
    if "choices" in spec:
        return ", ".join(str(c) for c in spec["choices"])
    scale = " (log)" if spec.get("log") else ""
    return f"{spec['low']:g} – {spec['high']:g}{scale}"


def parameter_table() -> str:
    """The docs' parameter table: every model parameter, its default, what it does and the
    tuning job's range."""
    lines = [
        "| parameter | default | what it does | tuned over |",
        "|---|---|---|---|",
    ]
    for kind, params in MODEL_PARAMS.items():
        defaults, space = params(), search_space(params)
        for name, field in params.model_fields.items():
            lines.append(
                f"| `{SECTIONS[kind]}.{name}` | {_cell(getattr(defaults, name))} |"
                f" {_cell(field.description or '')} | {_searched(space.get(name))} |"
            )
    return "\n".join(lines)


def replace_marked_section(text: str, name: str, body: str) -> str:
    """`text` with what lies between `<!-- name:start -->` and `<!-- name:end -->` replaced by
    `body` (one line break on each side); everything around the markers is kept. Raises
    ValueError when the markers are missing, rather than writing a truncated file."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    head, found_start, rest = text.partition(start)
    _, found_end, tail = rest.partition(end)
    if not (found_start and found_end):
        raise ValueError(f"the markers {start} ... {end} are missing")
    return f"{head}{start}\n{body}\n{end}{tail}"


def rewrite_readme(path: Path) -> None:
    """Replace a page's parameter table between its markers with the generated one."""
    path.write_text(replace_marked_section(path.read_text(), "parameters", parameter_table()))


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--readme"]:
        rewrite_readme(Path(sys.argv[2]))
    else:
        print(parameter_table())
