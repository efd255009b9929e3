"""Prefect tasks of the ingest stage: which files are due, a snapshot per dataset, the files
loaded into it, and the ingest summary (thin: I/O and reporting around tasks/ingest/load.py)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger
from prefect.runtime import task_run

from tasks.faults import crash_point
from tasks.home import EncoreHome
from tasks.ingest.errors import IngestFileError
from tasks.ingest.load import ingest_file
from tasks.ingest.plan import plan_datasets
from tasks.ingest.snapshots import open_snapshot
from tasks.ingest.sources import DatasetSpec
from tasks.ingest.sources_file import load_datasets
from tasks.retries import IO_RETRIES
from tasks.validate.report import report_markdown
from tasks.warehouse.schema import warehouse


def find_dataset(sources_file: Path, name: str) -> DatasetSpec:
    for spec in load_datasets(sources_file):
        if spec.name == name:
            return spec
    raise KeyError(f"{sources_file}: no dataset named {name!r}")


def _warn(message: str) -> None:
    get_run_logger().warning(message)


@task(name="plan ingest", **IO_RETRIES)
def plan_ingest(sources_file: str, warehouse_path: str, datasets: list[str] | None) -> dict:
    """What is due per dataset (see `tasks.ingest.plan.plan_datasets`), as a flow's task."""
    return plan_datasets(sources_file, warehouse_path, datasets, _warn)


@task(name="open snapshot", task_run_name="open snapshot of {dataset}")
def open_snapshot_task(warehouse_path: str, dataset: str) -> int:
    with warehouse(Path(warehouse_path)) as con:
        return open_snapshot(con, dataset)


def _files_run_name() -> str:
    parameters = task_run.parameters
    count = len(parameters["paths"])
    what = Path(parameters["paths"][0]).name if count == 1 else f"{count} files"
    return f"ingest {parameters['dataset']}: {what}"


@task(
    name="ingest files",
    task_run_name=_files_run_name,
    **IO_RETRIES,
)
def ingest_files_task(
    sources_file: str, warehouse_path: str, dataset: str, paths: list[str], snapshot_id: int
) -> list[dict]:
    """Load tonight's files of one dataset into its snapshot, oldest first, each file in its own
    transaction. An unreadable file is recorded (its rows count as rejected, validation fails the
    snapshot) and the next file still loads. A retry skips the files already loaded (sha256).

    One task per dataset, not per file: a backfill of 30 daily files as 30 task runs cost more
    in Prefect bookkeeping (state changes, events on a server sharing the machine) than the
    loads themselves; the per-file accounting is in the validation and ingest artifacts.
    """
    spec = find_dataset(Path(sources_file), dataset)
    home = EncoreHome(Path(warehouse_path).parent)
    logger = get_run_logger()
    results = []
    with warehouse(Path(warehouse_path), temp_dir=home.tmp) as con:
        for path in paths:
            try:
                # The string as planned: Path() would squeeze a URL's `//` (s3://b/a//k).
                result = ingest_file(con, spec, path, snapshot_id)
            except IngestFileError as unreadable:
                logger.warning("%s", unreadable)
                continue
            logger.info(
                "%s: read %d = loaded %d + duplicates %d + conflicts %d + rejected %d"
                " (before validation, which may quarantine loaded rows)",
                Path(path).name,
                result.rows_read,
                result.loaded,
                result.duplicates,
                result.quarantined,
                result.rejected,
            )
            results.append(result.to_dict())
            crash_point("between files")
    return results


@task(name="publish ingest summary")
def publish_ingest_summary(reports: list[dict], skipped: dict[str, str]) -> str:
    """One markdown artifact and one table artifact for the whole run."""
    rows = [
        {
            "dataset": r["dataset"],
            "snapshot": r["snapshot_id"],
            "status": r["status"],
            **r["accounting"]["totals"],
        }
        for r in reports
    ]
    text = "\n\n".join(report_markdown(r) for r in reports)
    for dataset, why in skipped.items():
        text += f"\n\n`{dataset}`: {why}"
    if rows:
        create_table_artifact(table=rows, key="ingest-accounting", description="Row accounting")
    create_markdown_artifact(markdown=text or "Nothing to ingest.", key="ingest-summary")
    return text
