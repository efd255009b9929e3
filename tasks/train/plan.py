"""What is due tonight: which models to train on which snapshot, and why the others are not
(the questions are in tasks/train/due.py; this task also heals what a killed night left)."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from tasks.registry.registry import abandon_candidate, ensure_registry
from tasks.retries import IO_RETRIES
from tasks.train.due import INTERRUPTED, assess_all
from tasks.warehouse.schema import warehouse


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
    exports_dir: str | None = None,
) -> list[dict]:
    """Per dataset and model: due (with the snapshot to train on) or skipped (with why); a
    champion whose lists are missing from the warehouse or from `exports_dir` is scored. A
    version a killed night published but never gated is marked interrupted and trained again."""
    exports = Path(exports_dir) if exports_dir else None
    with warehouse(Path(warehouse_path)) as con:
        ensure_registry(con)
        plan = assess_all(con, datasets, models, retrain_without_new_data, exports)
        for item in plan:
            if "interrupted" in item:
                version = item.pop("interrupted")
                abandon_candidate(con, version, INTERRUPTED)
                item["healed"] = f"v{version} was {INTERRUPTED}"
    return plan
