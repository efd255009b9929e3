"""Prefect tasks of the validation stage: a snapshot checked against the expectations, its report,
and the outcome read back from a Completed or Failed state (thin: around validation.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed, State

from tasks.report.report import significant
from tasks.retries import artifact_key
from tasks.validate.alerts import emit_validation_failed
from tasks.validate.report import report_markdown
from tasks.validate.thresholds import ValidationThresholds
from tasks.validate.validation import validate_snapshot
from tasks.warehouse.schema import warehouse


@task(name="validate snapshot", task_run_name="validate snapshot {snapshot_id}")
def validate_snapshot_task(
    warehouse_path: str, snapshot_id: int, thresholds: ValidationThresholds, reports_dir: str
) -> dict | State:
    with warehouse(Path(warehouse_path)) as con:
        report = validate_snapshot(con, snapshot_id, thresholds, Path(reports_dir))
    create_markdown_artifact(
        markdown=report_markdown(report),
        key=artifact_key(f"validation-{report['dataset']}"),
        description=f"Validation of snapshot {snapshot_id}: {report['status']}",
    )
    emit_validation_failed(report)  # the failure alert's event (deployments/alerts.py)
    if report["status"] != "passed":
        # The task itself ends Failed (red in the UI, next to the report). Its data is only the
        # report's path (Prefect logs a failed state's data whole): `validation_outcome` reads
        # the report back for the flow, which goes on with the other datasets.
        return Failed(
            message=validation_failure_line(report), data={"report_path": report["report_path"]}
        )
    return report


def result_of(state: State) -> Any:
    """A task's or flow's result whether it ended Completed or Failed with data (a failed
    validation carries its report's path); an exception it raised is raised here."""
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        raise result
    return result


def validation_outcome(state: State) -> dict:
    """The report of a `validate_snapshot_task` run, Completed or Failed."""
    result = result_of(state)
    if result.keys() == {"report_path"}:
        report = json.loads(Path(result["report_path"]).read_text())
        return {**report, "report_path": result["report_path"]}
    return result


def validation_failure_line(report: dict) -> str:
    """One line for a failed snapshot: what failed (rows failing a row check, the observed
    value of a table check), and where the report is."""
    failed = [
        f"{o['description']} ({o['unexpected_count']:,} rows failing)"
        if o["level"] == "row"
        else f"{o['description']} (observed {significant(o['observed'])})"
        for o in report["failed"]
    ]
    failed += [f"unreadable file: {e['error']}" for e in report["file_errors"]]
    where = f"; report: {report['report_path']}" if "report_path" in report else ""
    return (
        f"validation failed on snapshot {report['snapshot_id']} of {report['dataset']}: "
        + "; ".join(failed or ["see the report"])
        + where
    )
