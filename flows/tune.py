"""The tuning job: an Optuna study per dataset and model, whose best trial the next nightly uses.

1. take the data home's tuning lock (one tuning job at a time: resuming a study marks the
   trials a killed job left running as failed, which is only right when no other job runs it);
2. export each dataset's latest passed snapshot (holding the nightly lock for the export only,
   so a running night finishes first and a long study never blocks the next night);
3. per dataset and model: open or resume the study, run the missing trials (on the Dask runner,
   one share per worker, side by side on the same journal file), then record the best trial
   for the nightly and publish the top trials and Optuna's plots as artifacts.

Trials train on the nightly's train split and are judged on its val split; test is never read.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from prefect import flow
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.states import Completed
from prefect.task_runners import TaskRunner

from flows.params import GatBprParams, ModelKind, RatingParams, TuneParams, search_space
from flows.runners import night_task_runner
from tasks.home import EncoreHome
from tasks.lock import LockHeld, exclusive_lock
from tasks.tune import (
    export_for_tuning_task,
    open_study_task,
    record_best_task,
    run_trials_task,
    tunable_datasets,
)

SEARCHED = {"gat-bpr": GatBprParams, "rating": RatingParams}
DEFAULT_TUNE_PARAMS = TuneParams()


def _tune_name() -> str:
    return f"tune {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC"


def trial_config(params: TuneParams, model: ModelKind) -> dict:
    """What every trial of `model` starts from: the nightly's configuration (without tuned
    parameters) with the trial's epoch budget."""
    config = params.nightly.train_config(model)
    return {**config, "epochs": min(config["epochs"], params.max_epochs)}


def shares(total: int, workers: int) -> list[int]:
    """`total` trials split over `workers` runners as evenly as possible, no empty share."""
    workers = max(1, min(workers, total))
    base, extra = divmod(total, workers)
    return [base + (1 if i < extra else 0) for i in range(workers)]


@flow(name="tune", flow_run_name=_tune_name)
def tune(params: TuneParams = DEFAULT_TUNE_PARAMS) -> dict:
    """Search GAT-BPR's and the rating model's parameters on val; the next nightly trains with
    the best ones found. See the study artifacts for the top trials and Optuna's plots."""
    home = EncoreHome.from_env().ensure()
    owner = f"tune flow run {flow_run.id or 'local'}"
    try:
        with exclusive_lock(home.root / "tuning.lock", owner, 0):
            return _tune(home, params)
    except LockHeld as held:
        message = f"skipped: another tuning job is in progress on {home.root} ({held})"
        get_run_logger().warning(message)
        return Completed(name="Skipped", message=message, data={"skipped": message})


def _tune(home: EncoreHome, params: TuneParams) -> dict:
    deadline = time.monotonic() + 60 * params.timeout_minutes if params.timeout_minutes else None
    planned = tunable_datasets(str(home.warehouse), params.datasets, params.models)
    owner = f"tune flow run {flow_run.id or 'local'} (export)"
    with exclusive_lock(home.root / "nightly.lock", owner, params.lock_wait_seconds):
        exports = {
            dataset: export_for_tuning_task(str(home.warehouse), str(home.root), dataset)
            for dataset in dict.fromkeys(item["dataset"] for item in planned)
        }
    studies = []
    workers = params.task_runner.workers if params.task_runner.kind == "dask" else 1
    with night_task_runner(params.task_runner) as runner:
        for item in planned:
            dataset, model = item["dataset"], item["model"]
            studies.append(
                _study(home, params, runner, workers, dataset, model, exports[dataset], deadline)
            )
    return {"studies": studies}


def _study(
    home: EncoreHome,
    params: TuneParams,
    runner: TaskRunner,
    workers: int,
    dataset: str,
    model: ModelKind,
    export: dict,
    deadline: float | None,
) -> dict:
    """Open or resume one study, run its missing trials, record its best."""
    seed = params.nightly.seed
    space = search_space(SEARCHED[model])
    opened = open_study_task(str(home.root), dataset, model, export["snapshot_id"], seed, space)
    missing = max(0, params.trials - opened["finished"])
    remaining = None if deadline is None else deadline - time.monotonic()
    if remaining is not None and remaining <= 0:
        missing = 0  # the job's time is spent: record what the study holds
    if missing:
        futures = [
            runner.submit(
                run_trials_task,
                {
                    "home_root": str(home.root),
                    "study": opened["study"],
                    "dataset": dataset,
                    "model": model,
                    "export_path": export["path"],
                    "base_config": trial_config(params, model),
                    "space": space,
                    "trials": share,
                    "timeout_seconds": remaining,
                    "seed": seed + index,  # each worker samples its own points
                },
            )
            for index, share in enumerate(shares(missing, workers))
        ]
        ran = sum(future.result() for future in futures)
    else:
        ran = 0
    metric = "rmse" if model == "rating" else f"recall@{params.nightly.k}"
    recorded = record_best_task(str(home.root), opened["study"], dataset, model, metric, seed)
    return {
        **recorded,
        "ran_now": ran,
        "resumed_from": opened["finished"],
        "seeded_from": opened["seeded_from"],
    }
