"""Prefect tasks around training: export a snapshot, train a model with models_src."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from tasks.ingest import artifact_key, retry_on_io_error
from tasks.warehouse.export import export_interactions
from tasks.warehouse.schema import warehouse


@task(
    name="export snapshot",
    task_run_name="export {dataset}",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_on_io_error,
)
def export_snapshot_task(warehouse_path: str, dataset: str, out_dir: str) -> dict:
    """Trainable rows of the latest passed snapshot -> Parquet (models_src reads files only)."""
    with warehouse(Path(warehouse_path)) as con:
        return export_interactions(con, dataset, Path(out_dir) / f"{dataset}.parquet")


@task(name="train model", task_run_name="train {model} on {dataset}")
def train_model_task(export: dict, dataset: str, model: str, config: dict, runs_dir: str) -> dict:
    """AdvancedTrainer on the export; returns the run's final metrics and where it lives."""
    from models_src.config import TrainConfig
    from models_src.learners import prepare_learner
    from models_src.trainers import AdvancedTrainer

    logger = get_run_logger()
    train_config = TrainConfig.from_dict({**config, "model": model})
    learner, artifacts = prepare_learner(train_config, export["path"])
    out_dir = Path(runs_dir) / f"{dataset}-{model}-snapshot{export['snapshot_id']}"
    trainer = AdvancedTrainer(learner, train_config, out_dir, artifacts=artifacts, log=logger.info)
    final = trainer.fit()
    rows = "\n".join(
        f"| {split} | "
        + " | ".join(
            f"{final[split].get(m, float('nan')):.4f}" for m in ("recall@10", "ndcg@10", "rmse")
        )
        + " |"
        for split in ("val", "test")
    )
    create_markdown_artifact(
        key=artifact_key(f"train-{dataset}-{model}"),
        markdown=f"## {model} on {dataset} (snapshot {export['snapshot_id']})\n\n"
        f"best epoch {final['best_epoch']} of {final['epochs_run']}, "
        f"{final['seconds']:.1f} s\n\n| split | recall@10 | ndcg@10 | rmse |\n|---|---|---|---|\n"
        f"{rows}\n\noutputs: `{out_dir}`",
    )
    return {"run_dir": str(out_dir), **final}
