"""The gate, run: challenger, champion and MostPopular scored now on tonight's splits."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import duckdb
import numpy as np
import torch

from models_src.checkpoint import load_checkpoint
from models_src.config import TrainConfig, relevance_threshold
from models_src.data import Interactions
from models_src.gate import GateThresholds, Verdict, decide
from models_src.learners import split_for_training
from models_src.metrics import mae, rmse
from models_src.serving import (
    ServedModel,
    evaluate_rating_served,
    evaluate_served,
    popularity_counts,
)
from tasks.warehouse.publish import EMBEDDINGS_FILE
from tasks.warehouse.registry import champion, record_gate_decision, verify_artifacts, version_row


def _served(row: dict, popularity: torch.Tensor) -> ServedModel:
    verify_artifacts(row)
    state = load_checkpoint(Path(row["artifact_dir"]) / EMBEDDINGS_FILE)
    scale = state.get("rating_range")
    return ServedModel(state["buffers"], popularity, tuple(scale) if scale else None)


def _metrics(model: ServedModel, splits: dict, k: int, threshold: float | None) -> dict:
    metrics = evaluate_served(model.score_users, splits, k, threshold)
    if threshold is not None:
        for split, values in evaluate_rating_served(model, splits).items():
            metrics[split].update(values)
    return metrics


def mean_predictor_errors(splits: dict) -> dict:
    """RMSE and MAE of predicting the training mean for every val/test rating: the floor a
    rating model must beat."""
    mean = float(np.mean(splits["train"].rating))
    errors = {}
    for split in ("val", "test"):
        target = torch.from_numpy(splits[split].rating.astype(np.float32))
        predicted = torch.full_like(target, mean)
        errors[split] = {"rmse": rmse(predicted, target), "mae": mae(predicted, target)}
    return errors


def gate_version(
    con: duckdb.DuckDBPyConnection,
    version: int,
    export_path: Path,
    thresholds: GateThresholds | None = None,
) -> tuple[Verdict, dict]:
    """Score the challenger `version`, the current champion and MostPopular on tonight's export
    (split with the challenger's own split settings), decide, and record the decision."""
    thresholds = thresholds or GateThresholds()
    row = version_row(con, version)
    config = json.loads(row["config_json"])
    data = Interactions.from_parquet(export_path)
    splits = split_for_training(data, TrainConfig.from_dict(config))
    popularity = popularity_counts(splits["train"])
    threshold = None
    if row["kind"] == "rating":
        low, high = data.meta.get("rating_scale") or (data.rating.min(), data.rating.max())
        threshold = relevance_threshold(float(low), float(high), config.get("rating_threshold"))
    k = thresholds.k
    tables = {"challenger": _metrics(_served(row, popularity), splits, k, threshold)}
    current = champion(con, row["kind"], row["dataset"])
    if current is not None:
        tables["champion"] = _metrics(_served(current, popularity), splits, k, threshold)
    log_popularity = torch.log1p(popularity.float())
    tables["popularity"] = evaluate_served(
        lambda users: log_popularity.expand(len(users), -1), splits, k, threshold
    )
    if row["kind"] == "rating":
        for split, values in mean_predictor_errors(splits).items():
            tables["popularity"][split].update(values)
    verdict = decide(
        tables["challenger"],
        tables.get("champion"),
        tables["popularity"],
        thresholds,
        rating_model=row["kind"] == "rating",
    )
    record_gate_decision(
        con, version, verdict.promote, verdict.reasons, verdict.compared, asdict(thresholds)
    )
    return verdict, tables
