"""Prefect tasks around the registry and batch scoring (thin: I/O and reporting only)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

from tasks.registry.registry import ensure_registry
from tasks.retries import IO_RETRIES, artifact_key
from tasks.score.scoring import (
    ScoringPlan,
    load_scored_parts,
    plan_scoring,
    score_user_range,
)
from tasks.warehouse.schema import warehouse


@task(name="plan scoring", task_run_name="plan scoring of {dataset}", **IO_RETRIES)
def plan_scoring_task(warehouse_path: str, dataset: str, exports_dir: str) -> ScoringPlan:
    """Check the ranking champion and write what scoring workers read (they never open the
    warehouse)."""
    with warehouse(Path(warehouse_path)) as con:
        return plan_scoring(con, dataset, Path(exports_dir) / "scoring")


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
        key=artifact_key(f"scoring-{dataset}"),
        markdown=(
            f"## Batch scoring of `{dataset}` with {kind} v{result['model_version']}"
            f" (serving for champion v{result['champion']})\n\n"
            "| users | by the model | popularity fallback | rows | seconds |\n"
            "|---:|---:|---:|---:|---:|\n"
            f"| {result['users']:,} | {result['model_users']:,} | {result['fallback_users']:,} |"
            f" {result['rows']:,} | {result['seconds']:.1f} |\n\nParquet: `{result['parquet']}`"
        ),
    )


@task(name="list champions")
def list_champions_task(warehouse_path: str, dataset: str | None) -> list[str]:
    """Every dataset with a ranking champion (or just `dataset`)."""
    with warehouse(Path(warehouse_path)) as con:
        ensure_registry(con)
        rows = con.execute(
            """SELECT dataset FROM model_versions WHERE status = 'champion' AND slot = 'ranking'
                 AND (? IS NULL OR dataset = ?) ORDER BY 1""",
            [dataset, dataset],
        ).fetchall()
    if not rows:
        raise LookupError(
            f"no ranking champion for {dataset or 'any dataset'}: nothing to score with"
        )
    return [row[0] for row in rows]
