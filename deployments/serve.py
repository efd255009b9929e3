"""The single-process alternative to a work pool: `make serve` (or `python deployments/serve.py`).

Registers the same deployments as prefect.yaml (nightly on the cron, batch-score on demand, the
tuning job on its weekly cron)
with the Prefect server at PREFECT_API_URL and runs their flows in this process's children until
stopped. No work pool, no worker: right for one machine; the work pool is right when the runs
should move to other infrastructure (Docker, Kubernetes) later.
"""

from __future__ import annotations

import os

from tasks.home import configure_environment

configure_environment()  # PREFECT_HOME and caches inside the data home, before Prefect loads

from prefect import serve  # noqa: E402
from prefect.client.schemas.objects import (  # noqa: E402
    ConcurrencyLimitConfig,
    ConcurrencyLimitStrategy,
)
from prefect.schedules import Cron  # noqa: E402

from flows.batch_score import batch_score  # noqa: E402
from flows.nightly import nightly_retrain  # noqa: E402
from flows.tune import tune  # noqa: E402

ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)


def main() -> None:
    cron = os.environ.get("ENCORE_CRON", "0 2 * * *")
    timezone = os.environ.get("ENCORE_TIMEZONE", "UTC")
    serve(
        nightly_retrain.to_deployment(
            name="nightly",
            schedules=[Cron(cron, timezone=timezone)],
            concurrency_limit=ONE_AT_A_TIME,
            tags=["encore", "nightly"],
        ),
        batch_score.to_deployment(
            name="manual", concurrency_limit=ONE_AT_A_TIME, tags=["encore", "scoring"]
        ),
        tune.to_deployment(
            name="weekly",
            schedules=[Cron(os.environ.get("ENCORE_TUNE_CRON", "0 8 * * 6"), timezone=timezone)],
            concurrency_limit=ONE_AT_A_TIME,
            tags=["encore", "tuning"],
        ),
    )


if __name__ == "__main__":
    main()
