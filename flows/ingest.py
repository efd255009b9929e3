"""The `ingest` flow: landing files -> DuckDB warehouse -> Great Expectations -> summary.

Reads like the run itself: plan what is new, then per dataset open a snapshot, load its new
files (one task, one transaction per file), validate the snapshot, and publish one summary. Every
step is a task in `tasks/ingest/tasks.py` or `tasks/validate/tasks.py`.
"""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run
from prefect.states import Failed, State

from tasks.home import EncoreHome
from tasks.ingest.tasks import (
    ingest_files_task,
    open_snapshot_task,
    plan_ingest,
    publish_ingest_summary,
)
from tasks.validate.report import report_summary
from tasks.validate.tasks import validate_snapshot_task, validation_outcome
from tasks.validate.thresholds import ValidationThresholds


class SnapshotFailed(RuntimeError):
    """At least one snapshot failed validation: it will not be trained on (see the report)."""


def _run_name() -> str:
    datasets = flow_run.parameters.get("datasets")
    return f"ingest {', '.join(datasets) if datasets else 'all datasets'}"


@flow(name="ingest", flow_run_name=_run_name)
def ingest(
    sources_file: str | None = None,
    datasets: list[str] | None = None,
    run_validation: bool = True,
    thresholds: ValidationThresholds | None = None,
    fail_on_invalid: bool = True,
) -> dict | State:
    """Load every new landing file of each dataset and validate the resulting snapshots.

    Args:
        sources_file: the `sources.toml` naming the datasets (default: the data home's).
        datasets: only these datasets (default: all in the sources file).
        run_validation: validate each new snapshot (off leaves it pending for `encore validate`).
        thresholds: the validation bounds (default: ValidationThresholds()).
        fail_on_invalid: end Failed when a snapshot fails validation (the nightly flow turns it
            off: it goes on with the datasets that passed and reports the others).
    """
    home = EncoreHome.from_env().ensure()
    sources = sources_file or str(home.sources_file)
    warehouse_path = str(home.warehouse)
    plan = plan_ingest(sources, warehouse_path, datasets)
    reports, idle, errors, held = [], {}, {}, {}
    refused = {
        dataset: planned["refused"] for dataset, planned in plan.items() if planned["refused"]
    }
    for dataset, planned in plan.items():
        files = planned["files"]
        if not files and (planned["pending"] is None or not run_validation):
            idle[dataset] = "no new files in the landing folder"
            if planned["held_back"]:
                held[dataset] = planned["held_back"]
                idle[dataset] += f"; {planned['held_back']}"
            continue
        try:
            report = _ingest_dataset(
                sources, warehouse_path, dataset, files, run_validation, thresholds, home
            )
        except Exception as error:  # one dataset's failure never stops another's
            errors[dataset] = f"{type(error).__name__}: {error}"
            idle[dataset] = f"ingest failed ({errors[dataset]}); its snapshot stays pending"
            continue
        if report is not None:
            reports.append(report)
    publish_ingest_summary(reports, idle)
    summary = "\n".join(report_summary(r) for r in reports)
    failed = [
        f"{r['dataset']} (snapshot {r['snapshot_id']})" for r in reports if r["status"] != "passed"
    ]
    broken = [f"validation failed for {', '.join(failed)}"] if failed else []
    broken += [f"ingest of {dataset} failed: {why}" for dataset, why in errors.items()]
    if broken and fail_on_invalid:
        # The run's Failed state, not a raised exception: no engine traceback for an expected
        # outcome; calling the flow still raises SnapshotFailed (a failed state's data).
        failure = SnapshotFailed("; ".join(broken) + (f"\n\n{summary}" if summary else ""))
        return Failed(message="; ".join(broken), data=failure)
    result = {
        "reports": reports,
        "idle": idle,
        "summary": summary,
        "failed": failed,
        "errors": errors,
        "held_back": held,
        "refused_before": refused,
    }
    # Failed, not Completed, in the UI, with the result still handed to the nightly flow (which
    # reads it with return_state=True and goes on with the datasets that passed).
    return Failed(message="; ".join(broken), data=result) if broken else result


def _ingest_dataset(
    sources: str,
    warehouse_path: str,
    dataset: str,
    files: list[str],
    run_validation: bool,
    thresholds: ValidationThresholds | None,
    home: EncoreHome,
) -> dict | None:
    """One dataset: its snapshot (an interrupted ingest's pending one is reopened, so its files
    are validated with tonight's), tonight's files, and the validation report."""
    snapshot_id = open_snapshot_task(warehouse_path, dataset)
    if files:
        ingest_files_task(sources, warehouse_path, dataset, files, snapshot_id)
    if not run_validation:
        return None
    validated = validate_snapshot_task(
        warehouse_path,
        snapshot_id,
        thresholds or ValidationThresholds(),
        str(home.reports),
        return_state=True,
    )
    return validation_outcome(validated)
