"""Prefect tasks of the nightly retrain that are not ingest, training or scoring: what is due,
publishing a candidate, the gate, and the run report (each thin: I/O around one call)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from models_src.gate import GateThresholds
from tasks.report import metrics_rows, nightly_report_markdown
from tasks.retries import IO_RETRIES, artifact_key
from tasks.warehouse.export import latest_passed_snapshot
from tasks.warehouse.gating import gate_version
from tasks.warehouse.publish import publish_run
from tasks.warehouse.registry import champion, ensure_registry
from tasks.warehouse.schema import warehouse

DEFAULT_MODELS = {"implicit": ["gat-bpr"], "explicit": ["rating"]}


def _due(con, dataset: str, model: str, retrain: bool) -> dict:
    """Is `model` on `dataset` due tonight? A work item, or a skip with its reason."""
    item = {"dataset": dataset, "model": model}
    snapshot = latest_passed_snapshot(con, dataset)
    newest, status = con.execute(
        "SELECT snapshot_id, status FROM snapshots WHERE dataset = ?"
        " ORDER BY snapshot_id DESC LIMIT 1",
        [dataset],
    ).fetchone() or (None, None)
    current = champion(con, model, dataset)
    serving = f"champion v{current['version']} keeps serving" if current else "no champion yet"
    if snapshot is None:
        return {**item, "status": "skipped", "reason": f"no passed snapshot yet; {serving}"}
    if newest != snapshot and status != "passed":
        return {
            **item,
            "status": "skipped",
            "snapshot_id": newest,
            "reason": f"snapshot {newest} is {status} (see Data); {serving}",
        }
    trained = con.execute(
        "SELECT version, status FROM model_versions WHERE kind = ? AND dataset = ?"
        " AND snapshot_id = ? ORDER BY version DESC LIMIT 1",
        [model, dataset, snapshot],
    ).fetchone()
    if trained and not retrain:
        return {
            **item,
            "status": "skipped",
            "snapshot_id": snapshot,
            "reason": f"no new data: snapshot {snapshot} already trained v{trained[0]}"
            f" ({trained[1]}); {serving}",
        }
    return {**item, "status": "due", "snapshot_id": snapshot}


@task(
    name="plan training",
    task_run_name="plan training",
    **IO_RETRIES,
)
def plan_training(
    warehouse_path: str,
    datasets: list[str],
    models: dict[str, list[str]],
    retrain_without_new_data: bool,
) -> list[dict]:
    """Per dataset and model: due (with the snapshot to train on) or skipped (with why)."""
    plan = []
    with warehouse(Path(warehouse_path)) as con:
        ensure_registry(con)
        kinds = dict(con.execute("SELECT name, kind FROM datasets").fetchall())
        for dataset in datasets:
            if dataset not in kinds:
                continue  # never ingested: the ingest section of the report says why
            chosen = models[dataset] if dataset in models else DEFAULT_MODELS[kinds[dataset]]
            for model in chosen:
                plan.append(_due(con, dataset, model, retrain_without_new_data))
    return plan


@task(
    name="publish candidate",
    task_run_name="publish {run[model]} from {run[run_dir]}",
    **IO_RETRIES,
)
def publish_candidate_task(warehouse_path: str, run: dict, dataset: str, k: int) -> dict:
    """Export the run's ONNX scorer and register it as a candidate version."""
    metrics = {split: run[split] for split in ("val", "test")}
    models_root = Path(warehouse_path).parent / "models"
    with warehouse(Path(warehouse_path)) as con:
        version = publish_run(con, Path(run["run_dir"]), dataset, metrics, models_root, k)
        row = con.execute(
            "SELECT artifact_dir FROM model_versions WHERE version = ?", [version]
        ).fetchone()
    return {"version": version, "model_dir": row[0]}


@task(name="gate", task_run_name="gate v{version} on {dataset}")
def gate_candidate_task(
    warehouse_path: str, version: int, dataset: str, export_path: str, thresholds: dict
) -> dict:
    """Challenger vs champion vs MostPopular on tonight's splits; promotes or rejects (logged)."""
    gate = GateThresholds(**thresholds)
    with warehouse(Path(warehouse_path)) as con:
        row = con.execute("SELECT kind FROM model_versions WHERE version = ?", [version]).fetchone()
        before = champion(con, row[0], dataset)
        verdict, tables = gate_version(con, version, Path(export_path), gate)
    result = {
        "version": version,
        "promote": verdict.promote,
        "reasons": verdict.reasons,
        "compared": verdict.compared,
        "tables": tables,
        "thresholds": asdict(gate),
        "champion_before": before["version"] if before else None,
    }
    create_table_artifact(
        table=metrics_rows({"dataset": dataset, "model": row[0], "gate": result}),
        key=artifact_key(f"metrics-{dataset}-{row[0]}"),
        description=f"v{version} vs champion vs MostPopular: "
        + ("promoted" if verdict.promote else "rejected"),
    )
    return json.loads(json.dumps(result, default=float))


@task(name="run report", task_run_name="run report")
def publish_night_report(night: dict, reports_dir: str) -> dict:
    """The run report: a markdown artifact, a metrics table artifact and a file under reports/."""
    text = nightly_report_markdown(night)
    path = Path(reports_dir) / f"nightly-{night['stamp']}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    create_markdown_artifact(
        markdown=text,
        key="nightly-report",
        description="Nightly retrain: " + ("; ".join(night["problems"]) or "completed"),
    )
    rows = [row for outcome in night["outcomes"] for row in metrics_rows(outcome)]
    if rows:
        create_table_artifact(
            table=rows, key="nightly-metrics", description="Challenger vs champion, per split"
        )
    return {"path": str(path), "markdown": text}
