"""The `batch_score` flow: the champions' ONNX scorers over every user, into DuckDB and Parquet."""

from __future__ import annotations

from typing import Literal

from prefect import flow

from tasks.home import EncoreHome
from tasks.score import batch_score_task, list_champions_task


def _run_name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters
    return f"batch-score {p.get('dataset') or 'all datasets'} ({p.get('kind') or 'all kinds'})"


@flow(name="batch-score", flow_run_name=_run_name)
def batch_score(
    dataset: str | None = None, kind: Literal["gat-bpr", "rating"] | None = None
) -> list[dict]:
    """Replace the `recommendations` with the current champions' top-K.

    Args:
        dataset: only this dataset (default: every dataset with a champion).
        kind: only this model kind, gat-bpr or rating (default: both).
    """
    home = EncoreHome.from_env().ensure()
    warehouse_path = str(home.warehouse)
    return [
        batch_score_task(warehouse_path, name, model, str(home.root / "exports"))
        for name, model in list_champions_task(warehouse_path, dataset, kind)
    ]
