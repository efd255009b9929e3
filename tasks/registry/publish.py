"""From a trained run or a fitted baseline to a registered version with its ONNX scorer.

Every version, whatever its family, ships the same files: `scorer.onnx` (top-K, its tables in
`scorer.onnx.data`), the embedding
tables it was built from (`embeddings.pt`, so the gate can score it again on a later night),
`scorer_meta.json`, and for rating models `pairs.onnx` and its `.data` (predicted rating of
(user, item) pairs).
A GAT-BPR blended with EASE^R's item-item weights keeps that items x items matrix once, in
`scorer.onnx`: `embeddings.pt` names the file it is read back from (`load_version_tables`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import torch

from models_src.baselines import FittedBaseline
from models_src.checkpoint import load_checkpoint, save_checkpoint
from models_src.config import TrainConfig, like_threshold
from models_src.data import Interactions, bipartite_edge_index
from models_src.item_item import ease_weights
from models_src.learner_base import training_positives
from models_src.learners import split_for_training
from models_src.models import GATBPR, RatingModel
from models_src.neighbours import NeighbourLists, neighbours_from_choice
from models_src.onnx_export import (
    PairScorer,
    TopKScorer,
    export_pair_scorer,
    export_scorer,
    external_data_path,
    gat_bpr_scorer,
    id_map_checksum,
    rating_scorer,
)
from models_src.runs import RESULT_FILE
from tasks.registry.registry import allocate_version, register_candidate

SCORER_FILE = "scorer.onnx"
PAIRS_FILE = "pairs.onnx"
EMBEDDINGS_FILE = "embeddings.pt"
META_FILE = "scorer_meta.json"
# Written by the train task on the task runner (tasks/gate/gating.py `rank_run_ahead`): the best
# checkpoint's scorer tables, which publish exports instead of propagating the graph again, and
# their ranking on val and test, which the gate reuses.
SERVED_TABLES_FILE = "served_tables.pt"
# A blend's item-item tables (EASE^R's dense B, or neighbour lists): stored in the ONNX file
# only, read back from it by `load_version_tables`.
ITEM_ITEM_TABLES = ("item_item", "neighbour_items", "neighbour_weights")
RANKED_AHEAD_FILE = "served.evaluation.npz"
# What a version keeps of its run directory: what serving, the gate, rollback and warm start read
# (the best checkpoint, the scorers and their tables) and what a person looks at (metrics,
# curves, the run's result). Resume checkpoints and final weights stay behind with the run.
PUBLISHED_FILES = (
    "best_model.pt",
    SCORER_FILE,
    external_data_path(Path(SCORER_FILE)).name,
    PAIRS_FILE,
    external_data_path(Path(PAIRS_FILE)).name,
    EMBEDDINGS_FILE,
    META_FILE,
    "metrics.json",
    "history.png",
    RESULT_FILE,
    RANKED_AHEAD_FILE,
)

# A last look at a version's exported files before it is registered (raises to refuse it).
Check = Callable[[Path, TopKScorer], None]


def build_model(state: dict) -> GATBPR | RatingModel:
    args = state["model_args"]
    if state["model_kind"] == "rating":
        model = RatingModel(**{**args, "rating_range": tuple(args["rating_range"])})
    else:
        model = GATBPR(**args)
    model.load_state_dict(state["model"])
    return model


def trained_positives(state: dict) -> Interactions:
    """The pairs a GAT-BPR checkpoint learned from: its train split's positives, or every
    interaction for a serving refit (`artifacts.holdout` false)."""
    data = Interactions.from_parquet(Path(state["artifacts"]["data"]))
    config = TrainConfig.from_dict(state["config"])
    train = (
        split_for_training(data, config)["train"]
        if state["artifacts"].get("holdout", True)
        else data
    )
    return training_positives(train, config, like_threshold(train, config.rating_threshold))


def build_scorer(state: dict, k: int) -> TopKScorer:
    """A checkpoint as a TopKScorer (GAT-BPR: its training graph propagated once, and EASE^R's
    weights refitted on the same pairs when training chose a blend)."""
    model = build_model(state)
    if isinstance(model, RatingModel):
        return rating_scorer(model, k)
    positives = trained_positives(state)
    graph = bipartite_edge_index(positives, with_groups=model.num_groups > 0)
    blend = state.get("item_item") or {}
    if not blend.get("weight"):
        scorer = gat_bpr_scorer(model, graph, k)
    elif blend.get("method"):  # neighbour lists, past the dense cap
        lists = neighbours_from_choice(positives, blend)
        scorer = gat_bpr_scorer(model, graph, k, neighbours=lists, blend_weight=blend["weight"])
    else:
        weights = ease_weights(positives, blend["lambda"])
        scorer = gat_bpr_scorer(model, graph, k, item_item=weights, blend_weight=blend["weight"])
    return with_recency_prior(scorer, state.get("recency_prior"), positives)


def with_recency_prior(scorer: TopKScorer, prior: dict | None, positives: Interactions):
    """The recency prior training chose, as the scorer's item bias: the decayed popularity of
    the pairs it learned from (aged from the newest of train, or of everything for a refit),
    scaled by the spread of the scorer's own embedding scores, as training measured it."""
    if not prior or not prior.get("weight"):
        return scorer
    from models_src.recency import popularity_scores, prior_bias, score_spread

    user_emb, item_emb = scorer.user_emb, scorer.item_emb
    spread = score_spread(lambda users: user_emb[users] @ item_emb.T, len(user_emb))
    popularity = popularity_scores(positives, prior["half_life_days"])
    scorer.item_bias.copy_(prior_bias(popularity, prior["weight"], spread))
    return scorer


def run_scorer(run_dir: Path, state: dict, k: int) -> TopKScorer:
    """The run's scorer: from the tables its train task saved, or built from the checkpoint."""
    path = run_dir / SERVED_TABLES_FILE
    if not path.exists():
        return build_scorer(state, k)
    t = load_checkpoint(path)
    blend_weight = t.get("blend_weight")
    lists = t.get("neighbour_items")
    return TopKScorer(
        t["user_emb"],
        t["item_emb"],
        k,
        t["user_bias"],
        t["item_bias"],
        float(t["offset"]),
        t.get("item_item"),
        0.0 if blend_weight is None else float(blend_weight),
        None if lists is None else NeighbourLists(lists, t["neighbour_weights"]),
    )


def load_version_tables(artifact_dir: Path) -> dict:
    """A version's `embeddings.pt`, with a blend's item-item matrix read back from its ONNX
    scorer into `buffers`."""
    state = load_checkpoint(artifact_dir / EMBEDDINGS_FILE)
    source = state.get("item_item_from")
    if source:
        import onnx
        from onnx import numpy_helper

        graph = onnx.load(artifact_dir / source).graph
        for table in graph.initializer:
            if table.name in ITEM_ITEM_TABLES:
                array = numpy_helper.to_array(table)
                as_torch = array.astype(np.int64) if array.dtype == np.int32 else array.copy()
                state["buffers"][table.name] = torch.from_numpy(as_torch)
    return state


def _register(
    con: duckdb.DuckDBPyConnection,
    scorer: TopKScorer,
    record: dict,
    run_dir: Path,
    models_root: Path,
    pair_model: RatingModel | None = None,
    check: Check | None = None,
) -> int:
    """Export the scorer(s) stamped with the version they will have, save the embeddings, run
    `check` on them (it raises to refuse), and register the directory. `record`: kind, dataset,
    snapshot_id, config, metrics, user_ids, item_ids, evaluation, refit_of, rating_range."""
    version = allocate_version(con)
    stamp = {
        "model_version": str(version),
        "kind": record["kind"],
        "dataset": record["dataset"],
        "id_map_sha256": id_map_checksum(record["user_ids"], record["item_ids"]),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    export_scorer(scorer, run_dir / SCORER_FILE, stamp)
    if pair_model is not None:
        export_pair_scorer(PairScorer(pair_model), run_dir / PAIRS_FILE, stamp)
    meta = {"num_users": len(scorer.user_emb), "num_items": len(scorer.item_emb), "k": scorer.k}
    (run_dir / META_FILE).write_text(json.dumps(meta))
    buffers = dict(scorer.state_dict())
    # The item-item tables are kept once, in the ONNX file.
    blended = [buffers.pop(name) for name in ITEM_ITEM_TABLES if name in buffers] != []
    save_checkpoint(
        run_dir / EMBEDDINGS_FILE,
        {
            "kind": record["kind"],
            "buffers": buffers,
            "rating_range": record.get("rating_range"),
            "config": record["config"],
            "item_item_from": SCORER_FILE if blended else None,
        },
    )
    if check is not None:
        check(run_dir, scorer)
    return register_candidate(
        con,
        record["kind"],
        record["dataset"],
        record["snapshot_id"],
        record["config"],
        record["metrics"],
        run_dir,
        models_root,
        version=version,
        evaluation=record.get("evaluation"),
        refit_of=record.get("refit_of"),
        files=PUBLISHED_FILES,
    )


def publish_run(
    con: duckdb.DuckDBPyConnection,
    run_dir: Path,
    dataset: str,
    metrics: dict,
    models_root: Path,
    k: int = 10,
    evaluation: dict | None = None,
    refit_of: int | None = None,
    check: Check | None = None,
) -> int:
    """Export a training run's best checkpoint and register it: a candidate, or with
    `refit_of` the serving refit of that version. Returns the version."""
    state = load_checkpoint(run_dir / "best_model.pt")
    artifacts = state["artifacts"]
    rating = state["model_kind"] == "rating"
    record = {
        "kind": state["model_kind"],
        "dataset": dataset,
        "snapshot_id": artifacts.get("snapshot_id"),
        "config": state["config"],
        "metrics": metrics,
        "user_ids": artifacts["user_ids"],
        "item_ids": artifacts["item_ids"],
        "evaluation": evaluation,
        "refit_of": refit_of,
        "rating_range": state["model_args"].get("rating_range"),
    }
    scorer = run_scorer(run_dir, state, k)
    pair_model = build_model(state) if rating else None
    return _register(con, scorer, record, run_dir, models_root, pair_model, check)


def bias_rating_model(fitted: FittedBaseline, rating_range: tuple[float, float]) -> RatingModel:
    """The bias baseline as a rating model with empty taste vectors, for the pair scorer."""
    b = fitted.buffers
    model = RatingModel(
        len(b["user_bias"]), len(b["item_bias"]), 1, float(b["offset"]), rating_range
    )
    with torch.no_grad():
        model.user_embedding.weight.zero_()
        model.item_embedding.weight.zero_()
        model.user_bias.weight.copy_(b["user_bias"].unsqueeze(1))
        model.item_bias.weight.copy_(b["item_bias"].unsqueeze(1))
    return model


def publish_baseline(
    con: duckdb.DuckDBPyConnection,
    fitted: FittedBaseline,
    data: Interactions,
    dataset: str,
    run_dir: Path,
    models_root: Path,
    k: int,
    metrics: dict,
    evaluation: dict | None,
    config: dict,
    refit_of: int | None = None,
    check: Check | None = None,
) -> int:
    """Register a fitted baseline (MostPopular, ALS, bias) like any trained model."""
    b = fitted.buffers
    scorer = TopKScorer(
        b["user_emb"], b["item_emb"], k, b["user_bias"], b["item_bias"], float(b["offset"])
    )
    rating_range = None
    pair_model = None
    if fitted.family == "bias":
        low, high = data.meta.get("rating_scale") or (
            float(np.min(data.rating)),
            float(np.max(data.rating)),
        )
        rating_range = (float(low), float(high))
        pair_model = bias_rating_model(fitted, rating_range)
    record = {
        "kind": fitted.family,
        "dataset": dataset,
        "snapshot_id": data.meta.get("snapshot_id"),
        "config": {**config, "model": fitted.family, "baseline": _plain(fitted.params)},
        "metrics": metrics,
        "user_ids": data.meta.get("user_ids", []),
        "item_ids": data.meta.get("item_ids", []),
        "evaluation": evaluation,
        "refit_of": refit_of,
        "rating_range": list(rating_range) if rating_range else None,
    }
    return _register(con, scorer, record, run_dir, models_root, pair_model, check)


def _plain(params: dict) -> dict:
    return json.loads(json.dumps(params, default=float))
