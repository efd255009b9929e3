"""Encore's old runs out of Prefect's database: what Prefect's own vacuum does on a long-running
server, for the temporary server of `encore nightly` too.

Prefect vacuums finished flow runs only in a long-running server (`make server` turns that on);
the temporary server that `encore nightly` starts in the data home never does, so every night's
runs, task runs and artifacts (the run report with its curves) stayed there forever. Only
Encore's own flows are touched: a shared Prefect server holds other teams' runs too.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterEndTime,
)

ENCORE_FLOWS = ("nightly-retrain", "ingest", "train", "batch-score", "tune")
# At most this many runs a night: a first clean-up of a long history is spread over nights.
BATCH = 200  # the API's largest page


def prune_prefect_history(days: float, flows: tuple[str, ...] = ENCORE_FLOWS) -> dict:
    """Delete Encore's flow runs that ended more than `days` ago, with their artifacts (their
    task runs and states go with them). Returns how many of each were deleted."""
    cutoff = datetime.now(UTC) - timedelta(days=days)
    deleted = {"flow_runs": 0, "artifacts": 0}
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=list(flows))),
            flow_run_filter=FlowRunFilter(end_time=FlowRunFilterEndTime(before_=cutoff)),
            limit=BATCH,
        )
        for run in runs:
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
            )
            for artifact in artifacts:
                client.delete_artifact(artifact.id)
            client.delete_flow_run(run.id)
            deleted["artifacts"] += len(artifacts)
            deleted["flow_runs"] += 1
    return deleted
