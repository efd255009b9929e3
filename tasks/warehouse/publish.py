"""From a finished training run to a registered candidate with its ONNX scorer."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb

from models_src.checkpoint import load_checkpoint, save_checkpoint
from models_src.config import TrainConfig
from models_src.data import Interactions, bipartite_edge_index
from models_src.learners import split_for_training
from models_src.models import GATBPR, RatingModel
from models_src.onnx_export import (
    PairScorer,
    export_pair_scorer,
    export_scorer,
    gat_bpr_scorer,
    id_map_checksum,
    rating_scorer,
)
from tasks.warehouse.registry import allocate_version, register_candidate

SCORER_FILE = "scorer.onnx"
PAIRS_FILE = "pairs.onnx"
EMBEDDINGS_FILE = "embeddings.pt"


def build_model(state: dict) -> GATBPR | RatingModel:
    args = state["model_args"]
    if state["model_kind"] == "rating":
        model = RatingModel(**{**args, "rating_range": tuple(args["rating_range"])})
    else:
        model = GATBPR(**args)
    model.load_state_dict(state["model"])
    return model


def build_scorer(state: dict, k: int):
    """A checkpoint as a TopKScorer (GAT-BPR: its training graph propagated once)."""
    model, config = build_model(state), state["config"]
    if isinstance(model, RatingModel):
        return rating_scorer(model, k)
    data = Interactions.from_parquet(Path(state["artifacts"]["data"]))
    train = split_for_training(data, TrainConfig.from_dict(config))["train"]
    return gat_bpr_scorer(model, bipartite_edge_index(train, with_groups=model.num_groups > 0), k)


def publish_run(
    con: duckdb.DuckDBPyConnection,
    run_dir: Path,
    dataset: str,
    metrics: dict,
    models_root: Path,
    k: int = 10,
) -> int:
    """Export the run's scorer to ONNX (stamped with its future version) and register the run
    as a candidate; returns the version."""
    state = load_checkpoint(run_dir / "best_model.pt")
    scorer = build_scorer(state, k)
    artifacts = state["artifacts"]
    version = allocate_version(con)
    stamp = {
        "model_version": str(version),
        "kind": state["model_kind"],
        "dataset": dataset,
        "id_map_sha256": id_map_checksum(artifacts["user_ids"], artifacts["item_ids"]),
    }
    export_scorer(scorer, run_dir / SCORER_FILE, stamp)
    if state["model_kind"] == "rating":
        export_pair_scorer(PairScorer(build_model(state)), run_dir / PAIRS_FILE, stamp)
    meta = {"num_users": len(scorer.user_emb), "num_items": len(scorer.item_emb), "k": k}
    (run_dir / "scorer_meta.json").write_text(json.dumps(meta))
    # The final embeddings, so the gate can score this version again on any later night.
    save_checkpoint(
        run_dir / EMBEDDINGS_FILE,
        {
            "kind": state["model_kind"],
            "buffers": dict(scorer.state_dict()),
            "rating_range": state["model_args"].get("rating_range"),
            "config": state["config"],
        },
    )
    return register_candidate(
        con,
        state["model_kind"],
        dataset,
        artifacts.get("snapshot_id"),
        state["config"],
        metrics,
        run_dir,
        models_root,
        version=version,
    )
