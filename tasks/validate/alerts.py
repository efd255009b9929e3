"""The Prefect event behind the validation alert (deployments/alerts.py turns it into a message).

Prefect emits flow-run state changes itself, but a snapshot that fails validation does not fail
the nightly run at once: the other datasets go on training for the rest of the night. This event
says so the moment validation decides, with what failed and where the report is.

Kept apart from tasks/validate/tasks.py so that deployments/alerts.py can name the event without
importing Great Expectations.
"""

from __future__ import annotations

import logging

from prefect.events import emit_event
from prefect.exceptions import MissingContextError
from prefect.logging import get_logger, get_run_logger

VALIDATION_FAILED = "encore.validation.failed"
# What an expectation outcome carries into the event; its sample of failing ids stays in the
# report (events are capped in size, and ids say little in a chat message).
_OUTCOME_FIELDS = ("expectation", "level", "column", "description", "unexpected_count", "observed")


def emit_validation_failed(report: dict) -> None:
    """Emit `encore.validation.failed` for a failed validation report; nothing when it passed.

    Best effort: an alert that cannot be sent must not turn a validation verdict into a crash.
    """
    if report["status"] == "passed":
        return
    try:
        emit_event(
            event=VALIDATION_FAILED,
            resource={
                "prefect.resource.id": f"encore.dataset.{report['dataset']}",
                "prefect.resource.name": report["dataset"],
            },
            related=_root_flow_run(),
            payload=validation_payload(report),
        )
    except Exception as error:
        _logger().warning("could not emit %s: %r", VALIDATION_FAILED, error)


def validation_payload(report: dict) -> dict:
    """The dataset, the snapshot, every failed expectation and the report's path."""
    return {
        "dataset": report["dataset"],
        "snapshot_id": report["snapshot_id"],
        "failed": [{k: o.get(k) for k in _OUTCOME_FIELDS} for o in report["failed"]],
        "unreadable_files": [e["error"] for e in report.get("file_errors", [])],
        "report_path": report.get("report_path"),
    }


def _root_flow_run() -> list[dict[str, str]]:
    """The run a person knows (the nightly, not its `ingest` subflow) as the first related
    flow run: the alert's template resolves `flow_run` to the first one it finds, and Prefect
    appends the subflow's own run after it."""
    from prefect.runtime import flow_run

    root = flow_run.root_flow_run_id
    if not root:
        return []
    return [
        {"prefect.resource.id": f"prefect.flow-run.{root}", "prefect.resource.role": "flow-run"}
    ]


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("encore.alerts")
