"""The nightly retrain: ingest -> validate -> per model: train -> gate -> score -> run report.

The flow only composes; every step is a task in `tasks/`. It reads as the night does:

1. take the data home's lock (one nightly run at a time; a second one waits or is skipped);
2. the `ingest` flow loads and validates tonight's files (a failed snapshot stops only its
   dataset: the others go on, and the champion of the failed one keeps serving);
3. per dataset and model that is due, the `retrain-model` flow exports the snapshot, trains,
   publishes a candidate (ONNX), gates it against the champion and MostPopular on the same
   splits, and batch-scores with whoever is champion afterwards. A model that fails does not
   stop the next one;
4. the run report (markdown + table artifacts, and a file under `reports/`).

The run ends Failed when a snapshot failed validation or a model's branch raised, after the
report is published, so the UI shows red with the reason while everything else still happened.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from prefect import flow, tags
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from prefect.states import Completed

from flows.ingest import ingest
from flows.params import DEFAULT_PARAMS, ModelKind, NightlyParams
from tasks.home import EncoreHome
from tasks.lock import LockHeld, exclusive_lock
from tasks.nightly import (
    gate_candidate_task,
    plan_training,
    publish_candidate_task,
    publish_night_report,
)
from tasks.report import stage_clock
from tasks.score import batch_score_task
from tasks.train import export_snapshot_task, train_model_task


class NightlyRunFailed(RuntimeError):
    """A snapshot failed validation or a model's branch failed; the message says which."""


@contextmanager
def parent_heartbeat_only() -> Iterator[None]:
    """Run subflows without a heartbeat thread of their own.

    A subflow runs in this process, whose flow run already sends heartbeats (what detects a
    crashed run), so a second heartbeat per subflow adds nothing, and it costs ~1 s at the
    subflow's end: Prefect 3.8 joins that thread while it sleeps in whole seconds (PR
    PrefectHQ/prefect#19641). Measured: 1.1-1.2 s per subflow with it, 0.13 s without.
    """
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def _nightly_name() -> str:
    return f"nightly {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"


def _retrain_name() -> str:
    p = flow_run.parameters
    return f"retrain {p['model']} on {p['dataset']} snapshot {p['snapshot_id']}"


@flow(name="retrain-model", flow_run_name=_retrain_name)
def retrain_model(
    dataset: str,
    model: ModelKind,
    snapshot_id: int,
    train_config: dict,
    gate_thresholds: dict,
    score_kept_champion: bool = True,
) -> dict:
    """One model's branch of the night: export, train, publish, gate, score.

    Args:
        dataset: the dataset to train on.
        model: gat-bpr or rating.
        snapshot_id: the passed snapshot to train on (rows of passed snapshots up to it).
        train_config: models_src.config.TrainConfig fields.
        gate_thresholds: models_src.gate.GateThresholds fields.
        score_kept_champion: re-score with the champion when the challenger is rejected.
    """
    home = EncoreHome.from_env().ensure()
    warehouse_path = str(home.warehouse)
    outcome: dict = {"dataset": dataset, "model": model, "snapshot_id": snapshot_id}
    timings: dict[str, float] = {}
    outcome["timings"] = timings
    with stage_clock(timings, "export"):
        export = export_snapshot_task(
            warehouse_path, dataset, str(home.root / "exports"), snapshot_id
        )
    with stage_clock(timings, "train"):
        stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%S}"
        outcome["training"] = train_model_task(
            export, dataset, model, train_config, str(home.root / "runs" / stamp)
        )
    with stage_clock(timings, "publish (ONNX export)"):
        published = publish_candidate_task(
            warehouse_path, outcome["training"], dataset, gate_thresholds["k"]
        )
    outcome["model_dir"] = published["model_dir"]
    with stage_clock(timings, "gate"):
        gate = gate_candidate_task(
            warehouse_path, published["version"], dataset, export["path"], gate_thresholds
        )
    outcome["gate"] = gate
    if gate["promote"] or (score_kept_champion and gate["champion_before"]):
        with stage_clock(timings, "batch scoring"):
            outcome["scoring"] = batch_score_task(
                warehouse_path, dataset, model, str(home.root / "exports")
            )
    outcome["status"] = "promoted" if gate["promote"] else "rejected"
    return outcome


def _run_branch(item: dict, params: NightlyParams) -> dict:
    """Run one model's subflow; a failure becomes an outcome (the next model still runs)."""
    with tags(item["model"], f"dataset:{item['dataset']}"), parent_heartbeat_only():
        state = retrain_model(
            item["dataset"],
            item["model"],
            item["snapshot_id"],
            params.train_config(item["model"]),
            params.gate_thresholds(),
            params.score_kept_champion,
            return_state=True,
        )
    if state.is_completed():
        return state.result()
    error = state.result(raise_on_failure=False)
    return {**item, "status": "failed", "stage": "retrain-model", "reason": f"{error!r}"}


def _problems(ingested: dict, outcomes: list[dict]) -> list[str]:
    problems = [f"validation failed: {name}" for name in ingested["failed"]]
    problems += [
        f"{o['model']} on {o['dataset']} failed: {o['reason']}"
        for o in outcomes
        if o["status"] == "failed"
    ]
    return problems


@flow(name="nightly-retrain", flow_run_name=_nightly_name)
def nightly_retrain(params: NightlyParams = DEFAULT_PARAMS) -> dict:
    """Ingest tonight's files, retrain each model, promote only what beats the champion, and
    batch-score with the champions. See the run report artifact for what happened and why."""
    home = EncoreHome.from_env().ensure()
    logger = get_run_logger()
    owner = f"nightly flow run {flow_run.id or 'local'}"
    try:
        with exclusive_lock(home.root / "nightly.lock", owner, params.lock_wait_seconds):
            return _night(home, params)
    except LockHeld as held:
        message = f"skipped: another nightly run is in progress on {home.root} ({held})"
        logger.warning(message)
        return Completed(name="Skipped", message=message, data={"skipped": message})


def _night(home: EncoreHome, params: NightlyParams) -> dict:
    started, timings = time.perf_counter(), {}
    now = datetime.now(UTC)
    with stage_clock(timings, "ingest + validate"), parent_heartbeat_only():
        ingested = ingest(
            sources_file=params.sources_file,
            datasets=params.datasets,
            run_validation=True,
            thresholds=params.validation,
            fail_on_invalid=False,
        )
    datasets = [r["dataset"] for r in ingested["reports"]] + list(ingested["idle"])
    plan = plan_training(
        str(home.warehouse), datasets, params.models, params.retrain_without_new_data
    )
    outcomes = []
    for item in plan:
        if item["status"] == "due":
            outcome = _run_branch(item, params)
            for stage, seconds in outcome.get("timings", {}).items():
                timings[stage] = timings.get(stage, 0.0) + seconds
        else:
            outcome = item
        outcomes.append(outcome)
    night = {
        "started_at": f"{now:%Y-%m-%d %H:%M:%S} UTC",
        "stamp": f"{now:%Y%m%dT%H%M%S}",
        "home": str(home.root),
        "ingest": {"reports": ingested["reports"], "idle": ingested["idle"]},
        "outcomes": outcomes,
        "problems": _problems(ingested, outcomes),
        "timings": timings,
        "seconds": time.perf_counter() - started,
    }
    report = publish_night_report(night, str(home.reports))
    night["report_path"] = report["path"]
    if night["problems"]:
        raise NightlyRunFailed("; ".join(night["problems"]) + f". Run report: {report['path']}")
    return night
