"""The `train` flow: export a dataset's latest passed snapshot, train one model on it."""

from __future__ import annotations

from typing import Literal

from prefect import flow

from tasks.home import EncoreHome
from tasks.train.tasks import export_snapshot_task, train_model_task


@flow(name="train", flow_run_name="train {model} on {dataset}")
def train(
    dataset: str,
    model: Literal["gat-bpr", "rating"] = "gat-bpr",
    epochs: int = 50,
    lr: float | None = None,
    batch_size: int | None = None,
    patience: int = 5,
    use_scheduler: bool = True,
    device: str = "auto",
    precision: Literal["fp32", "bf16"] = "fp32",
) -> dict:
    """Train `model` on `dataset` with the AdvancedTrainer (early stopping, LR schedule).

    Args:
        dataset: a dataset of sources.toml with at least one passed snapshot.
        model: gat-bpr (implicit feedback) or rating (explicit ratings).
        epochs: upper bound; early stopping usually ends sooner.
        lr: learning rate (default: the model's tuned default).
        batch_size: positives (gat-bpr) or ratings (rating) per step (default: tuned).
        patience: epochs without a better validation metric before stopping.
        use_scheduler: ReduceLROnPlateau on the validation metric.
        device: auto (CUDA when present), cpu or cuda.
        precision: fp32, or bf16 (training steps under autocast; for CUDA).
    """
    from models_src.config import tuned_defaults

    home = EncoreHome.from_env().ensure()
    config = {
        **tuned_defaults(model),
        "epochs": epochs,
        "patience": patience,
        "use_scheduler": use_scheduler,
        "device": device,
        "precision": precision,
    }
    if lr is not None:
        config["lr"] = lr
    if batch_size is not None:
        config["batch_size"] = batch_size
    export = export_snapshot_task(str(home.warehouse), dataset, str(home.root / "exports"))
    return train_model_task(export, dataset, model, config, str(home.root / "runs"))
