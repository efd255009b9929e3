"""The gate as a Prefect task: tonight's contenders evaluated and the verdict recorded
(tasks/gate/gating.py does the work; models_src/gate.py holds the rules)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.logging import get_run_logger

from models_src.gate import GateThresholds
from tasks.gate.gating import gate_version
from tasks.registry.registry import champion, slot_of, version_row
from tasks.report.report import metrics_rows, rounded_rows
from tasks.retries import artifact_key
from tasks.warehouse.schema import warehouse


@task(
    name="find the gate's champion", task_run_name="find the {model} champion of {dataset} to rank"
)
def champion_to_rank_task(warehouse_path: str, dataset: str, model: str) -> dict | None:
    """The champion `model`'s challenger will meet at the gate (its version, files and
    evaluation record), for the task runner to rank ahead beside training; None without one."""
    with warehouse(Path(warehouse_path)) as con:
        row = champion(con, slot_of(model), dataset)
    if row is None:
        return None
    return {key: row[key] for key in ("version", "artifact_dir", "evaluation_json")}


@task(name="gate", task_run_name="gate v{version} on {dataset}")
def gate_candidate_task(
    warehouse_path: str,
    version: int,
    dataset: str,
    export_path: str,
    thresholds: dict,
    baseline_files: dict[str, str],
    champion_ranking: str | None = None,
) -> dict:
    """Challenger vs tonight's baselines vs the champion, paired on tonight's val (test
    confirms): the winner is crowned (a baseline registered first), every decision logged.
    `champion_ranking`: the champion's ranking made ahead tonight, if it was."""
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
            Path(champion_ranking) if champion_ranking else None,
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
