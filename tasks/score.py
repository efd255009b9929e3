"""Prefect tasks around the registry and batch scoring (thin: I/O and reporting only)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

from tasks.retries import IO_RETRIES, artifact_key
from tasks.warehouse.registry import ensure_registry
from tasks.warehouse.schema import warehouse
from tasks.warehouse.scoring import (
    ScoringPlan,
    load_scored_parts,
    plan_scoring,
    score_user_range,
)


@task(name="plan scoring", task_run_name="plan scoring of {dataset} ({kind})", **IO_RETRIES)
def plan_scoring_task(
    warehouse_path: str, dataset: str, kind: str, exports_dir: str
) -> ScoringPlan:
    """Check the champion and write what scoring workers read (they never open the warehouse)."""
    with warehouse(Path(warehouse_path)) as con:
        return plan_scoring(con, kind, dataset, Path(exports_dir) / "scoring")


@task(
    name="score users",
    task_run_name="score {plan.dataset} users {start}-{stop} ({plan.kind})",
    **IO_RETRIES,
)
def score_range_task(plan: ScoringPlan, start: int, stop: int) -> dict:
    """One user range's top-K into a Parquet part: runs on any worker that sees the files."""
    return score_user_range(plan, start, stop)


@task(
    name="load scores",
    task_run_name="load {plan.dataset} recommendations ({plan.kind})",
    **IO_RETRIES,
)
def load_scores_task(
    warehouse_path: str, plan: ScoringPlan, parts: list[dict], exports_dir: str, seconds: float
) -> dict:
    """The parts into `recommendations` in one transaction, and the Parquet export."""
    with warehouse(Path(warehouse_path)) as con:
        result = {**load_scored_parts(con, plan, parts, Path(exports_dir)), "seconds": seconds}
    _scoring_artifact(plan.dataset, plan.kind, result)
    return result


def _scoring_artifact(dataset: str, kind: str, result: dict) -> None:
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
