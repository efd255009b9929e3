"""The `batch_score` flow: the champion's ONNX scorer over every user, into DuckDB and Parquet."""

from __future__ import annotations

from typing import Literal

from prefect import flow

from tasks.home import EncoreHome
from tasks.score import batch_score_task


@flow(name="batch-score", flow_run_name="batch-score {dataset} ({kind})")
def batch_score(dataset: str, kind: Literal["gat-bpr", "rating"] = "gat-bpr") -> dict:
    """Replace the `recommendations` of `dataset` for `kind` with the current champion's.

    Args:
        dataset: a dataset with a champion model of this kind.
        kind: gat-bpr or rating.
    """
    home = EncoreHome.from_env().ensure()
    return batch_score_task(str(home.warehouse), dataset, kind, str(home.root / "exports"))
