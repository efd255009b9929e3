"""Prefect tasks around the registry and batch scoring (thin: I/O and reporting only)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

from tasks.ingest import IO_RETRIES, artifact_key
from tasks.warehouse.registry import ensure_registry
from tasks.warehouse.schema import warehouse
from tasks.warehouse.scoring import score_dataset


@task(
    name="batch score",
    task_run_name="score {dataset} with the {kind} champion",
    **IO_RETRIES,
)
def batch_score_task(warehouse_path: str, dataset: str, kind: str, exports_dir: str) -> dict:
    with warehouse(Path(warehouse_path)) as con:
        result = score_dataset(con, kind, dataset, Path(exports_dir))
    create_markdown_artifact(
        key=artifact_key(f"scoring-{dataset}-{kind}"),
        markdown=(
            f"## Batch scoring of `{dataset}` with {kind} version {result['model_version']}\n\n"
            "| users | by the model | popularity fallback | rows | seconds |\n"
            "|---:|---:|---:|---:|---:|\n"
            f"| {result['users']:,} | {result['model_users']:,} | {result['fallback_users']:,} |"
            f" {result['rows']:,} | {result['seconds']:.1f} |\n\nParquet: `{result['parquet']}`"
        ),
    )
    return result


@task(name="list champions")
def list_champions_task(
    warehouse_path: str, dataset: str | None, kind: str | None
) -> list[tuple[str, str]]:
    """(dataset, kind) of every champion, optionally of one dataset and/or kind."""
    with warehouse(Path(warehouse_path)) as con:
        ensure_registry(con)
        rows = con.execute(
            """SELECT dataset, kind FROM model_versions WHERE status = 'champion'
                 AND (? IS NULL OR dataset = ?) AND (? IS NULL OR kind = ?) ORDER BY 1, 2""",
            [dataset, dataset, kind, kind],
        ).fetchall()
    if not rows:
        wanted = " ".join(filter(None, [kind, dataset])) or "any dataset"
        raise LookupError(f"no champion model for {wanted}: nothing to score with")
    return [tuple(row) for row in rows]
