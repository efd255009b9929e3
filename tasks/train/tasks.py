"""Prefect tasks around training: export the snapshot, find the champion to warm-start from,
train a model with models_src, and fit tonight's baselines on the same split."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from prefect import task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterTaskRunId,
    ArtifactFilterType,
)
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger

from tasks.faults import crash_point
from tasks.registry.registry import champion, verify_artifacts
from tasks.report.report import image_markdown, markdown_table, rounded_rows
from tasks.retries import IO_RETRIES, artifact_key
from tasks.train.export import export_interactions
from tasks.warehouse.schema import warehouse


@task(
    name="export snapshot",
    task_run_name="export {dataset}",
    **IO_RETRIES,
)
def export_snapshot_task(
    warehouse_path: str, dataset: str, out_dir: str, snapshot_id: int | None = None
) -> dict:
    """Trainable rows up to `snapshot_id` (default: the latest passed) -> Parquet (models_src
    reads files only)."""
    with warehouse(Path(warehouse_path)) as con:
        return export_interactions(con, dataset, Path(out_dir) / f"{dataset}.parquet", snapshot_id)


@task(
    name="find warm start",
    task_run_name="find the {model} champion of {dataset} to start from",
    **IO_RETRIES,
)
def warm_start_source_task(
    warehouse_path: str, dataset: str, model: str, export_path: str, config: dict
) -> dict | None:
    """The checkpoint tonight's model starts from (checksums verified) and the one its serving
    refit starts from: the champion's, or, when a baseline holds the slot, the newest version of
    this model whose files are kept (last night's challenger, rejected or not: a model trained
    on the most recent data is a better start than none). None when there is neither;
    {"refused": why} when the one found must not be started from: evaluated under other split
    settings (it may have trained on tonight's held-out pairs)."""
    from models_src.data import Interactions
    from tasks.gate.gating import champion_incompatibility
    from tasks.registry.registry import latest_of_kind, serving_version, slot_of

    with warehouse(Path(warehouse_path)) as con:
        row = champion(con, slot_of(model), dataset)
        if row is not None and row["kind"] != model:
            row = latest_of_kind(con, dataset, model)
        serving = serving_version(con, row) if row is not None else None
    if row is None:
        return None
    data = Interactions.from_parquet(Path(export_path))
    incompatible = champion_incompatibility(row, data, config, config.get("k", 10))
    if incompatible:
        get_run_logger().warning(f"warm start refused: {incompatible}")
        return {"refused": incompatible}
    verify_artifacts(row)
    checkpoint = Path(row["artifact_dir"]) / "best_model.pt"
    if not checkpoint.exists():
        return None
    verify_artifacts(serving)
    serving_checkpoint = Path(serving["artifact_dir"]) / "best_model.pt"
    return {
        "version": row["version"],
        "checkpoint": str(checkpoint),
        "serving_checkpoint": str(
            serving_checkpoint if serving_checkpoint.exists() else checkpoint
        ),
    }


@task(
    name="fit baselines",
    task_run_name="fit baselines beside {model} on {dataset} snapshot {export[snapshot_id]}",
)
def fit_baselines_task(
    export: dict,
    dataset: str,
    model: str,
    config: dict,
    runs_dir: str,
    families: list[str],
    champion: dict | None = None,
    champion_ranking: str | None = None,
) -> dict[str, str]:
    """Tonight's baselines on the same train split as the challenger (models_src/baselines.py):
    family -> file. Runs on the task runner, beside training; so does the ranking of the
    `champion` the gate will compare (`champion_to_rank_task`), saved at `champion_ranking`."""
    from models_src.config import TrainConfig
    from models_src.runs import fit_baselines_run
    from tasks.gate.gating import Night, rank_champion_ahead

    logger = get_run_logger()
    config = {**config, "model": model}
    out_dir = Path(runs_dir) / f"{dataset}-{model}-baselines-snapshot{export['snapshot_id']}"
    if champion is None or champion_ranking is None:
        files = fit_baselines_run(config, export["path"], out_dir, families)
        logger.info(f"baselines of {model} on {dataset}: {sorted(files)} in {out_dir}")
        return files
    # One load, split and protocol of tonight's data for the baselines and the champion.
    k = TrainConfig.from_dict(config).k
    night = Night.load(Path(export["path"]), config, k)
    files = fit_baselines_run(
        config, night.data, out_dir, families, splits=night.splits, protocol=night.protocol
    )
    logger.info(f"baselines of {model} on {dataset}: {sorted(files)} in {out_dir}")
    try:
        done = rank_champion_ahead(champion, night, config, k, Path(champion_ranking))
    except Exception as error:  # noqa: BLE001 - a head start must never fail the night
        done = f"not ranked ahead ({error!r}): the gate ranks it, or reports what is wrong"
    logger.info(done)
    return files


class TrainingProgress:
    """A progress artifact the UI shows while training runs: epochs done and the val metric.

    Updated at most every `every_seconds` (each update is a call to the server, which on a small
    machine shares the cores with training), and always at the end.

    Prefect's client re-sends a request that timed out, POSTs included, so a server slower than
    PREFECT_API_REQUEST_TIMEOUT (60 s) can store the "starting" artifact twice (seen in CI: two
    progress bars on one task run, one stuck at 0 %). Artifacts have no client-chosen id to make
    the create idempotent, so `finish` deletes this task run's other progress artifacts instead.
    """

    def __init__(
        self, model: str, dataset: str, epochs: int, monitor: str, every_seconds: float = 5.0
    ) -> None:
        self.label, self.epochs, self.monitor = f"{model} on {dataset}", epochs, monitor
        self.every_seconds, self.last_update = every_seconds, time.monotonic()
        self.artifact_id = create_progress_artifact(
            progress=0.0,
            key=artifact_key(f"progress-{dataset}-{model}"),  # a history page across nights
            description=f"{self.label}: starting",
        )
        task_run = TaskRunContext.get()
        self.task_run_id = task_run.task_run.id if task_run else None

    def __call__(self, row: dict) -> None:
        """The trainer's on_epoch hook."""
        crash_point("epoch")
        if time.monotonic() - self.last_update < self.every_seconds:
            return
        self.last_update = time.monotonic()
        update_progress_artifact(
            self.artifact_id,
            progress=min(100.0, 100.0 * row["epoch"] / self.epochs),
            description=f"{self.label}: epoch {row['epoch']} of at most {self.epochs},"
            f" val {self.monitor} {row[f'val_{self.monitor}']:.4f}",
        )

    def finish(self, final: dict) -> None:
        update_progress_artifact(
            self.artifact_id,
            progress=100.0,
            description=f"{self.label}: done after {final['epochs_run']} epochs (best"
            f" {final['best_epoch']}), test {self.monitor} {final['test'][self.monitor]:.4f}",
        )
        self.drop_duplicates()

    def drop_duplicates(self) -> None:
        """Delete the copies a re-sent create left on this task run (see the class docstring)."""
        if self.task_run_id is None:
            return
        with get_client(sync_client=True) as client:
            copies = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    task_run_id=ArtifactFilterTaskRunId(any_=[self.task_run_id]),
                    type=ArtifactFilterType(any_=["progress"]),
                )
            )
            for copy in copies:
                if copy.id != self.artifact_id and (copy.description or "").startswith(
                    f"{self.label}:"
                ):
                    client.delete_artifact(copy.id)


def _summary_markdown(model: str, dataset: str, export: dict, final: dict, out_dir: Path) -> str:
    rows = "\n".join(
        f"| {split} | "
        + " | ".join(
            f"{final[split].get(m, float('nan')):.4f}" for m in ("recall@10", "ndcg@10", "rmse")
        )
        + " |"
        for split in ("val", "test")
    )
    return (
        f"## {model} on {dataset} (snapshot {export['snapshot_id']})\n\n"
        f"best epoch {final['best_epoch']} of {final['epochs_run']}, "
        f"{final['seconds']:.1f} s\n\n| split | recall@10 | ndcg@10 | rmse |\n|---|---|---|---|\n"
        f"{rows}\n\noutputs: `{out_dir}`\n\n"
        + image_markdown(out_dir / "history.png", f"{model} training curves")
    )


@task(name="train model", task_run_name="train {model} on {dataset} snapshot {export[snapshot_id]}")
def train_model_task(
    export: dict,
    dataset: str,
    model: str,
    config: dict,
    runs_dir: str,
    warm_start: dict | None = None,
    processes: int = 1,
) -> dict:
    """Train on the export (models_src/runs.py); returns the run's final metrics and where it
    lives. `warm_start` ({"version", "checkpoint", "config"}) starts from that champion.

    `processes` > 1 trains GAT-BPR data-parallel under torchrun (gloo on CPU, nccl on GPU),
    each process running the same run. The UI follows an in-process run through a progress
    artifact (epochs, val metric); every run ends with a table artifact of the per-epoch curve
    and a markdown summary with the curves' image.
    """
    logger = get_run_logger()
    out_dir = Path(runs_dir) / f"{dataset}-{model}-snapshot{export['snapshot_id']}"
    if out_dir.exists():
        # A killed run's checkpoints would otherwise mix with this run's, and publishing copies
        # the whole directory into the registry.
        logger.info("removing %s: left by a run that did not finish", out_dir)
        shutil.rmtree(out_dir)
    config = {**config, "model": model}
    if processes > 1:
        history, final = _train_with_torchrun(
            config, export["path"], out_dir, warm_start, processes
        )
    else:
        from models_src.config import TrainConfig
        from models_src.runs import train_run

        epochs = (warm_start or {}).get("config", config)["epochs"]
        monitor = "rmse" if model == "rating" else f"recall@{TrainConfig.from_dict(config).k}"
        progress = TrainingProgress(model, dataset, epochs, monitor)
        trainer, final = train_run(
            config, export["path"], out_dir, warm_start, log=logger.info, on_epoch=progress
        )
        progress.finish(final)
        history = trainer.history
        del trainer  # its graph and optimizer state, before the scorer is built
    _rank_for_the_gate(out_dir, export["path"], config)
    key = artifact_key(f"{dataset}-{model}")
    create_table_artifact(
        table=rounded_rows(history),
        key=f"training-curve-{key}",
        description=f"{model} on {dataset}: one row per epoch (loss, LR, val metrics)",
    )
    create_markdown_artifact(
        key=f"train-{key}",
        markdown=_summary_markdown(model, dataset, export, final, out_dir)
        + "\n### Every epoch\n\n"
        + markdown_table(history),
    )
    return {"run_dir": str(out_dir), "model": model, **final}


def _rank_for_the_gate(run_dir: Path, export_path: str, config: dict) -> None:
    """The best checkpoint's scorer built and ranked on val and test here, on the task runner
    beside other training, rather than in the flow's process by publish and the gate."""
    from models_src.config import TrainConfig
    from tasks.gate.gating import rank_run_ahead

    rank_run_ahead(run_dir, Path(export_path), TrainConfig.from_dict(config).k)


def _train_with_torchrun(
    config: dict, data: str, out_dir: Path, warm: dict | None, processes: int
) -> tuple[list[dict], dict]:
    """`torchrun --nproc-per-node N -m models_src.train_improved --run-spec`; its output goes to
    the task's log, and its result file back to the flow."""
    from models_src.runs import RESULT_FILE

    logger = get_run_logger()
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = out_dir / "run_spec.json"
    spec.write_text(
        json.dumps({"config": config, "data": data, "out_dir": str(out_dir), "warm": warm})
    )
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={processes}", "-m", "models_src.train_improved", "--run-spec", str(spec),
    ]  # fmt: skip
    logger.info(" ".join(command))
    done = subprocess.run(command, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        logger.info(line)
    if done.returncode != 0:
        raise RuntimeError(
            f"torchrun training failed (exit {done.returncode}): {done.stderr[-2000:]}"
        )
    result = json.loads((out_dir / RESULT_FILE).read_text())
    return result["history"], result["final"]
