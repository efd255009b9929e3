"""The serving refit, checked and registered: the champion's configuration trained on all of the
snapshot (models_src/runs.py), so the lists users get come from a model that saw val and test too.

Before it is registered as the champion's serving version it must show:
- finite scores (every embedding and bias a finite number);
- ONNX parity: onnxruntime's top-K scores equal torch's on a sample of users;
- no collapse: on tonight's val (train items excluded, val items it has now trained on) its
  primary metric is not below the evaluated champion's by more than the gate's tolerance
  (ranking), or its RMSE not above it by more than the RMSE tolerance (ratings).
A refit that fails any check is not registered: the evaluated champion itself keeps serving, and
the night reports a warning with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import torch

from models_src.gate import GateThresholds
from models_src.onnx_export import TopKScorer
from models_src.runs import load_baseline
from tasks.gate.gating import Night
from tasks.registry.publish import SCORER_FILE, publish_baseline, publish_run
from tasks.registry.registry import version_row
from tasks.score.scoring import open_session

PARITY_USERS = 256
PARITY_TOLERANCE = 1e-4


class RefitRefused(RuntimeError):
    """The serving refit failed a check; the evaluated champion keeps serving."""


def _finite(scorer: TopKScorer) -> None:
    for name, table in scorer.state_dict().items():
        if not torch.isfinite(table).all():
            raise RefitRefused(f"its {name} holds NaN or infinite values")


def _onnx_parity(run_dir: Path, scorer: TopKScorer) -> None:
    users = torch.arange(min(PARITY_USERS, len(scorer.user_emb)))
    # Some items marked seen: a blend reads them as the users' history (models_src/item_item.py).
    generator = torch.Generator().manual_seed(0)
    exclude = torch.rand(len(users), len(scorer.item_emb), generator=generator) < 0.05
    with torch.no_grad():
        _, expected = scorer(users, exclude)
    session = open_session(run_dir / SCORER_FILE, threads=1)
    _, actual = session.run(None, {"users": users.numpy(), "exclude": exclude.numpy()})
    if not np.allclose(actual, expected.numpy(), rtol=PARITY_TOLERANCE, atol=PARITY_TOLERANCE):
        worst = float(np.max(np.abs(actual - expected.numpy())))
        raise RefitRefused(f"onnxruntime's top-K scores differ from torch's by up to {worst:.2e}")


def _no_collapse(night: Night, evaluated: dict, t: GateThresholds, scorer: TopKScorer) -> None:
    buffers = dict(scorer.state_dict())
    model = night.served(buffers)
    _, tables = night.contender("serving refit", "serving", evaluated["kind"], model, t.k)
    gated = json.loads(evaluated["metrics_json"]).get("val", {})
    if night.rating:
        now, before = tables["val"]["rmse"], float(gated.get("rmse", np.nan))
        bound = before * (1.0 + t.rmse_tolerance)
        if not now <= bound:
            raise RefitRefused(
                f"its val RMSE {now:.4f} is above {bound:.4f} (the gated model's {before:.4f}"
                " plus the tolerance)"
            )
        return
    metric = f"recall@{t.k}"
    now, before = tables["val"][metric], float(gated.get(metric, np.nan))
    bound = before * (1.0 - t.tolerance)
    if not now >= bound:
        raise RefitRefused(
            f"its val {metric} {now:.4f} is below {bound:.4f} (the gated model's"
            f" {before:.4f} less the tolerance): it looks collapsed"
        )


def publish_serving_refit(
    con: duckdb.DuckDBPyConnection,
    evaluated_version: int,
    refit: dict,
    export_path: Path,
    models_root: Path,
    thresholds: GateThresholds,
) -> dict:
    """Check the refit and register it as `evaluated_version`'s serving version. `refit` is
    {"run_dir"} for a trained model or {"baseline_file"} for a baseline. Returns what happened:
    {"version"} when registered, {"refused": reason} when a check failed."""
    evaluated = version_row(con, evaluated_version)
    night = Night.load(export_path, json.loads(evaluated["config_json"]), thresholds.k)
    dataset, k = evaluated["dataset"], thresholds.k
    metrics = {"refit_of": evaluated_version}

    def check(run_dir: Path, scorer: TopKScorer) -> None:
        _finite(scorer)
        _onnx_parity(run_dir, scorer)
        _no_collapse(night, evaluated, thresholds, scorer)

    try:
        if "baseline_file" in refit:
            baseline_file = Path(refit["baseline_file"])
            version = publish_baseline(
                con,
                load_baseline(baseline_file),
                night.data,
                dataset,
                baseline_file.parent / f"{baseline_file.name}-version",
                models_root,
                k,
                metrics,
                night.record,
                json.loads(evaluated["config_json"]),
                refit_of=evaluated_version,
                check=check,
            )
        else:
            version = publish_run(
                con,
                Path(refit["run_dir"]),
                dataset,
                metrics,
                models_root,
                k,
                night.record,
                refit_of=evaluated_version,
                check=check,
            )
    except RefitRefused as refused:
        return {"refused": str(refused)}
    return {"version": version}
