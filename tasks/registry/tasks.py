"""Prefect tasks of the registry: a trained run or baseline published as a candidate version, and
the data home cleaned by the retention policy at the end of a night."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.logging import get_run_logger

from tasks.prefect_history import prune_prefect_history
from tasks.registry.publish import publish_run
from tasks.registry.retention import RetentionPolicy, apply_removals, plan_removals
from tasks.retries import IO_RETRIES
from tasks.warehouse.schema import warehouse


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


@task(name="clean data home", task_run_name="clean the data home")
def clean_data_home_task(warehouse_path: str, policy: RetentionPolicy) -> dict:
    """Remove what the retention policy no longer keeps (tasks/registry/retention.py)."""
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
