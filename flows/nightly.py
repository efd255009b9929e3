"""The nightly retrain: ingest -> validate -> per model: train -> gate -> refit -> score -> report.

The flow only composes; every step is a task in `tasks/`. It reads as the night does:

1. take the data home's lock (one nightly run at a time; a second one waits or is skipped);
2. the `ingest` flow loads and validates tonight's files (a failed snapshot stops only its
   dataset: the others go on, and the champion of the failed one keeps serving);
3. per dataset and model that is due: export the snapshot and find the champion to warm-start
   from, then train, and fit tonight's baselines on the same split. Both run on the night's task
   runner (flows/runners.py: in-process, one model after another, or Dask, where every model
   trains side by side);
4. per model, in the flow's process (DuckDB has one writer): publish a candidate (ONNX), gate it
   against tonight's baselines and the champion (paired per user on val, test confirming); when
   the gate crowns a new champion, refit its configuration on all of the snapshot (on the
   runner) and register that as what serves; then batch-score the lists with it (user ranges on
   the task runner, loaded in one transaction). A model that fails does not stop the next one;
5. the run report (markdown + table artifacts, and a file under `reports/`).

The run ends Failed when a snapshot failed validation or a model's branch raised, after the
report is published, so the UI shows red with the reason while everything else still happened.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow
from prefect.futures import PrefectFuture
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from prefect.states import Completed, Failed, State
from prefect.task_runners import TaskRunner

from flows.batch_score import score_champion
from flows.ingest import ingest
from flows.params import DEFAULT_PARAMS, NightlyParams
from flows.runners import night_task_runner, scoring_parts
from tasks.faults import crash_point
from tasks.gate.tasks import champion_to_rank_task, gate_candidate_task
from tasks.home import EncoreHome
from tasks.lock import WRITER_LOCK, LockHeld, exclusive_lock
from tasks.refit.tasks import (
    kept_champion_inputs_task,
    publish_serving_task,
    refit_serving_task,
)
from tasks.registry.tasks import clean_data_home_task, publish_candidate_task
from tasks.report.report import stage_clock, still_serving
from tasks.report.tasks import publish_night_report
from tasks.train.plan import plan_training
from tasks.train.tasks import (
    export_snapshot_task,
    fit_baselines_task,
    train_model_task,
    warm_start_source_task,
)
from tasks.tune import load_tuned
from tasks.validate.tasks import result_of


class NightlyRunFailed(RuntimeError):
    """A snapshot failed validation or a model's branch failed; the message says which."""


@contextmanager
def parent_heartbeat_only() -> Iterator[None]:
    """Run subflows without a heartbeat thread of their own.

    A subflow runs in this process, whose flow run already sends heartbeats (what detects a
    crashed run), so a second heartbeat per subflow adds nothing, and it delays the subflow's
    end: Prefect 3.8 joins that thread while it sleeps in whole seconds (PR
    PrefectHQ/prefect#19641).
    """
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def _nightly_name() -> str:
    return f"nightly {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC"  # two runs a minute apart differ


class _Branch:
    """One due model's way through the night: exported, trained (maybe on a Dask worker), then
    published, gated and served in the flow's process. `outcome` is what the report shows."""

    def __init__(self, item: dict) -> None:
        self.item = item
        self.outcome: dict = {**item, "timings": {}}
        self.export: dict | None = None
        self.warm_source: dict | None = None
        self.training: PrefectFuture | None = None
        self.baselines: PrefectFuture | None = None
        self.champion_ranking: str | None = None  # where the baselines task ranks the champion

    def fail(self, stage: str, error: BaseException) -> None:
        self.outcome.update(status="failed", stage=stage, reason=f"{error!r}")

    @property
    def failed(self) -> bool:
        return self.outcome.get("status") == "failed"


def _start_training(
    branch: _Branch, params: NightlyParams, home: EncoreHome, runner: TaskRunner, stamp: str
) -> None:
    """Export the snapshot and find the champion to start from and the one the gate will
    compare (these read the warehouse, so in this process), then hand training, the baselines
    and the champion's ranking to the runner (it reads files only)."""
    dataset, model = branch.item["dataset"], branch.item["model"]
    tuned = load_tuned(home.root, dataset, model)  # the tuning job's best, when there is one
    warehouse_path, config = str(home.warehouse), params.train_config(model, tuned)
    if config.get("tuned_from"):
        branch.outcome["tuned_from"] = config["tuned_from"]
    runs_dir, timings = str(home.root / "runs" / stamp), branch.outcome["timings"]
    with stage_clock(timings, "export"):
        branch.export = export_snapshot_task(
            warehouse_path, dataset, str(home.root / "exports"), branch.item["snapshot_id"]
        )
        source = (
            warm_start_source_task(warehouse_path, dataset, model, branch.export["path"], config)
            if params.warm_start
            else None
        )
    branch.warm_source = source
    warm = source
    if source and "refused" not in source:
        warm = {**source, "config": params.warm_train_config(model, tuned)}
    inputs = {
        "export": branch.export,
        "dataset": dataset,
        "model": model,
        "config": config,
        "runs_dir": runs_dir,
    }
    # In-process, the runner trains here and now; on Dask this only submits, and the flow's
    # wait for the result adds to the same stages in _gate_and_serve.
    with stage_clock(timings, "train"):
        branch.training = runner.submit(
            train_model_task,
            {
                **inputs,
                "warm_start": warm,
                "processes": params.gat_bpr.processes if model == "gat-bpr" else 1,
            },
        )
    families = [] if model == "rating" else list(params.gate.baselines)
    gate_champion = champion_to_rank_task(warehouse_path, dataset, model)
    if gate_champion is not None:
        branch.champion_ranking = str(
            Path(runs_dir) / f"{dataset}-{model}-champion-snapshot"
            f"{branch.export['snapshot_id']}.evaluation.npz"
        )
    with stage_clock(timings, "baselines"):
        branch.baselines = runner.submit(
            fit_baselines_task,
            {
                **inputs,
                "families": families,
                "champion": gate_champion,
                "champion_ranking": branch.champion_ranking,
            },
        )


def _gate_and_serve(
    branch: _Branch, params: NightlyParams, home: EncoreHome, runner: TaskRunner
) -> None:
    """Wait for the model and the baselines, publish the model as a candidate, gate it, refit
    a new champion on all of the snapshot, and score the lists with what serves."""
    outcome, timings = branch.outcome, branch.outcome["timings"]
    dataset, model = branch.item["dataset"], branch.item["model"]
    warehouse_path = str(home.warehouse)
    with stage_clock(timings, "train"):
        outcome["training"] = branch.training.result()
    with stage_clock(timings, "baselines"):
        baseline_files = branch.baselines.result()
    with stage_clock(timings, "publish (ONNX export)"):
        published = publish_candidate_task(warehouse_path, outcome["training"], dataset, params.k)
    outcome["model_dir"] = published["model_dir"]
    crash_point("published")
    with stage_clock(timings, "gate"):
        gate = gate_candidate_task(
            warehouse_path,
            published["version"],
            dataset,
            branch.export["path"],
            params.gate_thresholds(),
            baseline_files,
            branch.champion_ranking,
        )
    outcome["gate"] = gate
    crash_point("gated")
    new_champion = gate["champion_after"] != gate["champion_before"]
    refreshed = False
    if new_champion and params.gate.serving_refit:
        with stage_clock(timings, "serving refit"):
            outcome["serving"] = _refit(branch, gate, baseline_files, params, home, runner)
        crash_point("refit")
    elif gate["champion_after"] is not None and params.gate.refresh_kept_champion:
        with stage_clock(timings, "serving refit"):
            refresh = _refresh(branch, gate["champion_after"], params, home, runner)
        if refresh is not None:
            outcome["serving"] = refresh
            refreshed = "version" in refresh
    rescore = (
        new_champion
        or refreshed
        or (params.score_kept_champion and gate["champion_before"])
        or branch.item.get("lists_missing")
    )
    if model != "rating" and gate["champion_after"] is not None and rescore:
        with stage_clock(timings, "batch scoring"):
            outcome["scoring"] = score_champion(
                runner,
                scoring_parts(params.task_runner),
                warehouse_path,
                dataset,
                str(home.root / "exports"),
            )
    outcome["status"] = _status(gate)


def _score_only(
    branch: _Branch, home: EncoreHome, runner: TaskRunner, params: NightlyParams
) -> None:
    """Nothing to train, but the champion has no lists (the night that crowned it was killed
    before they were loaded): score them now."""
    outcome = branch.outcome
    try:
        with stage_clock(outcome["timings"], "batch scoring"):
            outcome["scoring"] = score_champion(
                runner,
                scoring_parts(params.task_runner),
                str(home.warehouse),
                branch.item["dataset"],
                str(home.root / "exports"),
            )
    except Exception as error:  # the next model still runs
        branch.fail("scoring", error)
        return
    outcome["status"] = "rescored"


def _status(gate: dict) -> str:
    """promoted (the challenger serves), baseline (a baseline serves: a warning), kept (the
    champion serves on) or rejected (nothing serves yet)."""
    if gate["serve_role"] == "challenger":
        return "promoted"
    if gate["serve_role"] == "baseline":
        return "baseline"
    return "kept" if gate["champion_after"] is not None else "rejected"


def _refit(
    branch: _Branch,
    gate: dict,
    baseline_files: dict[str, str],
    params: NightlyParams,
    home: EncoreHome,
    runner: TaskRunner,
) -> dict:
    """The new champion's configuration trained on all of the snapshot (on the runner), then
    checked and registered as what serves for it."""
    training, version = branch.outcome["training"], gate["champion_after"]
    family = gate["champion_after_family"]
    from_baseline = gate["serve_role"] == "baseline"
    started = training.get("started_from") or {}
    warm = (branch.warm_source or {}).get("serving_checkpoint") if started.get("warm") else None
    refit = runner.submit(
        refit_serving_task,
        {
            "family": family,
            "version": version,
            "dataset": branch.item["dataset"],
            "export_path": branch.export["path"],
            "gated_run": None if from_baseline else training["run_dir"],
            "baseline_file": baseline_files[family] if from_baseline else None,
            "warm_checkpoint": warm,
            "out_dir": str(Path(training["run_dir"]).parent / f"serving-v{version}"),
        },
    ).result()
    return publish_serving_task(
        str(home.warehouse), version, refit, branch.export["path"], params.gate_thresholds()
    )


def _refresh(
    branch: _Branch, version: int, params: NightlyParams, home: EncoreHome, runner: TaskRunner
) -> dict | None:
    """A kept champion's configuration refit on tonight's snapshot (warm from what serves for it
    now), so the lists learn tonight's interactions although the champion stayed: what serves
    would otherwise be frozen on the night it was crowned (for recent popularity, a window that
    no longer moves). None when it already serves for tonight's data."""
    out_dir = Path(branch.outcome["training"]["run_dir"]).parent / f"serving-v{version}-refresh"
    inputs = kept_champion_inputs_task(str(home.warehouse), version, str(out_dir))
    if inputs is None:
        return None
    refit = runner.submit(
        refit_serving_task,
        {
            **inputs,
            "version": version,
            "dataset": branch.item["dataset"],
            "export_path": branch.export["path"],
            "out_dir": str(out_dir),
        },
    ).result()
    published = publish_serving_task(
        str(home.warehouse), version, refit, branch.export["path"], params.gate_thresholds()
    )
    return {**published, "refreshed": True}


def _run_branches(plan: list[dict], params: NightlyParams, home: EncoreHome) -> list[dict]:
    """Every due model, in plan order. A failure ends its own branch: the next model still
    trains, is gated and serves.

    On Dask every training and baseline fit goes to the cluster first, so they run side by side
    on the workers while the flow gates each model in turn. In-process, each model is trained,
    gated and served before the next one starts: the flow's own steps (the ONNX export and its
    checks, the gate, the scoring) use every core through onnxruntime as training does through
    torch, so overlapping them on one machine only made them compete (bench-nightly measured no
    gain from it), and each stage's time in the report is then that stage's, not a queue's.
    """
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%S}"
    rescores = [_Branch(item) for item in plan if item["status"] == "score"]
    branches = [_Branch(item) for item in plan if item["status"] == "due"]
    side_by_side = params.task_runner.kind == "dask"
    with night_task_runner(params.task_runner) as runner:
        for branch in rescores:
            _score_only(branch, home, runner, params)
        if side_by_side:
            for branch in branches:
                _start_branch(branch, params, home, runner, stamp)
        for branch in branches:
            if not side_by_side:
                _start_branch(branch, params, home, runner, stamp)
            _finish_branch(branch, params, home, runner)
    outcomes = {id(branch.item): branch.outcome for branch in rescores + branches}
    return [outcomes.get(id(item), item) for item in plan]


def _start_branch(
    branch: _Branch, params: NightlyParams, home: EncoreHome, runner: TaskRunner, stamp: str
) -> None:
    try:
        _start_training(branch, params, home, runner, stamp)
    except Exception as error:  # the next model still runs
        branch.fail("export", error)


def _finish_branch(
    branch: _Branch, params: NightlyParams, home: EncoreHome, runner: TaskRunner
) -> None:
    if branch.failed:
        return
    try:
        _gate_and_serve(branch, params, home, runner)
    except Exception as error:  # the next model still runs
        branch.fail("train" if "training" not in branch.outcome else "gate", error)


def _warnings(ingested: dict, outcomes: list[dict]) -> list[str]:
    """What a person should know although nothing failed: a baseline serves, a serving refit
    was refused, an earlier night's data is still held back by validation, a refused file is
    still in the landing folder unchanged."""
    found = [f"{dataset}: {why}" for dataset, why in ingested["held_back"].items()]
    found += [f"{dataset}: {line}" for dataset, lines in ingested["refused_before"].items()
              for line in lines]  # fmt: skip
    for o in outcomes:
        where = f"{o['model']} on {o['dataset']}"
        found += [f"{where}: {w}" for w in (o.get("gate") or {}).get("warnings", [])]
        refused = (o.get("serving") or {}).get("refused")
        if refused:
            found.append(
                f"{where}: the serving refit was refused ({refused}); {still_serving(o['serving'])}"
            )
    return found


def _problems(ingested: dict, outcomes: list[dict]) -> list[str]:
    problems = [f"validation failed: {name}" for name in ingested["failed"]]
    problems += [f"{dataset}: ingest failed ({why})" for dataset, why in ingested["errors"].items()]
    problems += [
        f"{o['model']} on {o['dataset']} failed at {o.get('stage', 'train')}: {o['reason']}"
        for o in outcomes
        if o["status"] == "failed"
    ]
    return problems


@flow(name="nightly-retrain", flow_run_name=_nightly_name)
def nightly_retrain(params: NightlyParams = DEFAULT_PARAMS) -> dict | State:
    """Ingest tonight's files, retrain each model, promote only what beats the champion, and
    batch-score with the champions. See the run report artifact for what happened and why."""
    home = EncoreHome.from_env().ensure()
    logger = get_run_logger()
    owner = f"nightly flow run {flow_run.id or 'local'}"
    try:
        with exclusive_lock(
            home.root / WRITER_LOCK, owner, params.lock_wait_seconds, reentrant=True
        ):
            return _night(home, params)
    except LockHeld as held:
        message = f"skipped: another nightly run is in progress on {home.root} ({held})"
        logger.warning(message)
        return Completed(name="Skipped", message=message, data={"skipped": message})


def _clean(home: EncoreHome, params: NightlyParams) -> dict | None:
    """The retention policy applied after the models are served; a failure to clean is a
    warning, never a failed night."""
    if not params.retention.enabled:
        return None
    try:
        return clean_data_home_task(str(home.warehouse), params.retention)
    except Exception as error:  # the night's models are served; cleaning waits for tomorrow
        get_run_logger().warning(f"cleaning the data home failed: {error}")
        return {"error": str(error)}


def _night(home: EncoreHome, params: NightlyParams) -> dict | State:
    started, timings = time.perf_counter(), {}
    now = datetime.now(UTC)
    with stage_clock(timings, "ingest + validate"), parent_heartbeat_only():
        ingested = result_of(
            ingest(
                sources_file=params.sources_file,
                datasets=params.datasets,
                run_validation=True,
                thresholds=params.validation,
                fail_on_invalid=False,
                return_state=True,
            )
        )
    datasets = [r["dataset"] for r in ingested["reports"]] + list(ingested["idle"])
    plan = plan_training(
        str(home.warehouse),
        datasets,
        params.models,
        params.retrain_without_new_data,
        str(home.root / "exports"),
    )
    outcomes = _run_branches(plan, params, home)
    for outcome in outcomes:
        for stage, seconds in outcome.get("timings", {}).items():
            timings[stage] = timings.get(stage, 0.0) + seconds
    cleaned = _clean(home, params)
    night = {
        "started_at": f"{now:%Y-%m-%d %H:%M:%S} UTC",
        "stamp": f"{now:%Y%m%dT%H%M%S}",
        "home": str(home.root),
        "ingest": {"reports": ingested["reports"], "idle": ingested["idle"]},
        "outcomes": outcomes,
        "problems": _problems(ingested, outcomes),
        "warnings": _warnings(ingested, outcomes),
        "timings": timings,
        "cleaned": cleaned,
        "seconds": time.perf_counter() - started,
    }
    for warning in night["warnings"]:
        get_run_logger().warning(warning)
    crash_point("report")
    report = publish_night_report(night, str(home.reports))
    night["report_path"] = report["path"]
    if night["problems"]:
        # Returned as the run's Failed state, not raised: the message is what the UI, the alert
        # and `encore nightly` show, without an engine traceback of an expected outcome.
        # Calling the flow still raises the exception (Prefect raises a failed state's data).
        message = "; ".join(night["problems"]) + f". Run report: {report['path']}"
        return Failed(message=message, data=NightlyRunFailed(message))
    return night
