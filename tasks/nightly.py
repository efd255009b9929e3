"""Prefect tasks of the nightly retrain that are not ingest, training or scoring: what is due,
publishing a candidate, the gate, registering the serving refit, cleaning the data home and the
run report (each thin: I/O around one call)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger

from models_src.gate import GateThresholds
from tasks.files import write_text_atomically
from tasks.prefect_history import prune_prefect_history
from tasks.report import metrics_rows, nightly_report_markdown, rounded_rows
from tasks.retries import IO_RETRIES, artifact_key
from tasks.warehouse.export import latest_passed_snapshot
from tasks.warehouse.gating import gate_version
from tasks.warehouse.publish import publish_run
from tasks.warehouse.refit import publish_serving_refit
from tasks.warehouse.registry import (
    abandon_candidate,
    champion,
    ensure_registry,
    serving_version,
    slot_of,
    version_row,
)
from tasks.warehouse.retention import RetentionPolicy, apply_removals, plan_removals
from tasks.warehouse.schema import warehouse

# Lists for every dataset (GAT-BPR, judged on liked items for ratings); predicted stars too for
# explicit ones.
DEFAULT_MODELS = {"implicit": ["gat-bpr"], "explicit": ["gat-bpr", "rating"]}


def _due(con, dataset: str, model: str, retrain: bool) -> dict:
    """Is `model` on `dataset` due tonight? A work item, or a skip with its reason."""
    item = {"dataset": dataset, "model": model}
    snapshot = latest_passed_snapshot(con, dataset)
    newest, status = con.execute(
        "SELECT snapshot_id, status FROM snapshots WHERE dataset = ?"
        " ORDER BY snapshot_id DESC LIMIT 1",
        [dataset],
    ).fetchone() or (None, None)
    current = champion(con, slot_of(model), dataset)
    serving = (
        f"champion v{current['version']} ({current['kind']}) keeps serving"
        if current
        else "no champion yet"
    )
    if snapshot is None:
        return {**item, "status": "skipped", "reason": f"no passed snapshot yet; {serving}"}
    if newest != snapshot and status != "passed":
        return {
            **item,
            "status": "skipped",
            "snapshot_id": newest,
            "reason": f"snapshot {newest} is {status} (see Data); {serving}",
        }
    # A version abandoned as interrupted does not count as trained (so a retried plan still
    # trains its snapshot again).
    trained = con.execute(
        "SELECT version, status FROM model_versions WHERE kind = ? AND dataset = ?"
        " AND snapshot_id = ? AND role = 'evaluated' AND version NOT IN"
        " (SELECT challenger FROM promotions WHERE action = 'interrupted')"
        " ORDER BY version DESC LIMIT 1",
        [model, dataset, snapshot],
    ).fetchone()
    item["lists_missing"] = _lists_missing(con, current)
    if trained and trained[1] == "candidate":  # published, then the night was killed
        abandon_candidate(con, trained[0], INTERRUPTED)
        healed = f"v{trained[0]} was {INTERRUPTED}"
        return {**item, "status": "due", "snapshot_id": snapshot, "healed": healed}
    if trained and not retrain:
        reason = (
            f"no new data: snapshot {snapshot} already trained v{trained[0]}"
            f" ({trained[1]}); {serving}"
        )
        if item["lists_missing"]:  # a champion whose scoring was killed
            return {**item, "status": "score", "snapshot_id": snapshot, "reason": reason}
        return {**item, "status": "skipped", "snapshot_id": snapshot, "reason": reason}
    return {**item, "status": "due", "snapshot_id": snapshot}


INTERRUPTED = "published, but its night ended before the gate: its snapshot is trained again"


def _lists_missing(con, current: dict | None) -> bool:
    """A ranking champion with none of its serving version's lists in `recommendations` (the
    night that crowned it was killed before its lists were loaded)."""
    if current is None or current["slot"] != "ranking":
        return False
    serving = serving_version(con, current)
    exists = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'recommendations'"
    ).fetchone()[0]
    if not exists:
        return True
    found = con.execute(
        "SELECT count(*) FROM recommendations WHERE dataset = ? AND model_version = ?",
        [current["dataset"], serving["version"]],
    ).fetchone()[0]
    return found == 0


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
    task_run_name="publish {run[model]} on {dataset}",
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
    warehouse_path: str,
    version: int,
    dataset: str,
    export_path: str,
    thresholds: dict,
    baseline_files: dict[str, str],
) -> dict:
    """Challenger vs tonight's baselines vs the champion, paired on tonight's val (test
    confirms): the winner is crowned (a baseline registered first), every decision logged."""
    gate = GateThresholds(**thresholds)
    logger = get_run_logger()
    with warehouse(Path(warehouse_path)) as con:
        row = version_row(con, version)
        before = champion(con, row["slot"], dataset)
        verdict, tables = gate_version(
            con,
            version,
            Path(export_path),
            Path(warehouse_path).parent / "models",
            gate,
            baseline_files,
        )
        after = champion(con, row["slot"], dataset)
    for line in verdict.reasons:
        logger.info(line)
    for warning in verdict.warnings:
        logger.warning(warning)
    result = {
        "version": version,
        "model": row["kind"],
        "promote": verdict.promote,
        "serve": verdict.serve,
        "serve_role": verdict.serve_role,
        "serve_family": verdict.serve_family,
        "rule": verdict.rule,
        "reasons": verdict.reasons,
        "warnings": verdict.warnings,
        "compared": verdict.compared,
        "tables": tables,
        "thresholds": asdict(gate),
        "champion_before": before["version"] if before else None,
        "champion_after": after["version"] if after else None,
        "champion_after_family": after["kind"] if after else None,
    }
    create_table_artifact(
        table=rounded_rows(
            metrics_rows({"dataset": dataset, "model": row["kind"], "gate": result})
        ),
        key=artifact_key(f"metrics-{dataset}-{row['kind']}"),
        description=f"v{version} vs tonight's baselines vs the champion: {verdict.serve} serves",
    )
    return json.loads(json.dumps(result, default=float))


@task(
    name="publish serving refit",
    task_run_name="check and register the serving refit of v{version}",
    **IO_RETRIES,
)
def publish_serving_task(
    warehouse_path: str, version: int, refit: dict, export_path: str, thresholds: dict
) -> dict:
    """Check the refit (finite, ONNX parity, no collapse) and register it as `version`'s serving
    model; a refused refit leaves the evaluated champion serving, with a warning."""
    with warehouse(Path(warehouse_path)) as con:
        result = publish_serving_refit(
            con,
            version,
            refit,
            Path(export_path),
            Path(warehouse_path).parent / "models",
            GateThresholds(**thresholds),
        )
    if "refused" in result:
        get_run_logger().warning(
            f"serving refit of v{version} refused ({result['refused']}); v{version} itself serves"
        )
    return result


@task(name="run report", task_run_name="run report")
def publish_night_report(night: dict, reports_dir: str) -> dict:
    """The run report: a markdown artifact, a metrics table artifact and a file under reports/."""
    text = nightly_report_markdown(night)
    path = Path(reports_dir) / f"nightly-{night['stamp']}.md"
    write_text_atomically(path, text)
    create_markdown_artifact(
        markdown=text,
        key="nightly-report",
        description="Nightly retrain: " + ("; ".join(night["problems"]) or "completed"),
    )
    rows = [row for outcome in night["outcomes"] for row in metrics_rows(outcome)]
    if rows:
        create_table_artifact(
            table=rounded_rows(rows),
            key="nightly-metrics",
            description="Challenger vs champion, per split",
        )
    return {"path": str(path), "markdown": text}


@task(name="clean data home", task_run_name="clean the data home")
def clean_data_home_task(warehouse_path: str, policy: RetentionPolicy) -> dict:
    """Remove what the retention policy no longer keeps (tasks/warehouse/retention.py)."""
    with warehouse(Path(warehouse_path)) as con:
        result = apply_removals(con, plan_removals(con, Path(warehouse_path).parent, policy))
    result["prefect"] = prune_prefect_history(policy.prefect_days)
    get_run_logger().info(
        f"removed {len(result['removed'])} folders ({result['bytes'] / 1e6:,.1f} MB),"
        f" the files of {len(result['versions'])} model versions among them, and"
        f" {result['prefect']['flow_runs']} flow runs older than {policy.prefect_days:g} days"
        " from Prefect's database"
    )
    return result
