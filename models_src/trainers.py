"""Trainers, with the seeds' contracts kept.

- BaseTrainer: the shared machinery; override `train_epoch` / `evaluate` for a custom trainer.
- SimpleTrainer: all data, fixed LR; prints `Epoch 5/20 - Loss: 0.3142, Recall@10: 0.2874`.
- AdvancedTrainer: train/val/test, early stopping on the validation metric, ReduceLROnPlateau,
  one resume checkpoint (the newest epoch's), best_model.pt / final_model.pt / metrics.json /
  history.png, and `resume` that ends exactly where an uninterrupted run would.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from models_src.checkpoint import load_checkpoint, save_checkpoint
from models_src.config import TrainConfig
from models_src.learner_base import Learner
from models_src.plots import plot_history

Log = Callable[[str], None]


def improved(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Early stopping's one question, with an explicit direction (RecBole-style)."""
    if best is None:
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta


class BaseTrainer:
    """Holds the learner, its optimizer and the run's artifacts dict (id maps, snapshot...)."""

    def __init__(
        self,
        learner: Learner,
        config: TrainConfig,
        artifacts: dict | None = None,
        log: Log = print,
        on_epoch: Callable[[dict], None] | None = None,
    ) -> None:
        self.learner, self.config = learner, config
        # In a torchrun run every process trains; only the main one logs and writes files.
        self.is_main = learner.parallel.is_main
        self.log = log if self.is_main else (lambda line: None)
        self.artifacts = artifacts or {}
        self.on_epoch = on_epoch or (lambda row: None)
        weight_decay = config.weight_decay
        self.optimizer = torch.optim.Adam(
            learner.model.parameters(), lr=config.lr, weight_decay=weight_decay
        )
        self.history: list[dict] = []

    def train_epoch(self, epoch: int) -> float:
        return self.learner.train_epoch(self.optimizer, epoch)

    def evaluate(self, split: str = "val") -> dict[str, float]:
        return self.learner.evaluate(split)

    @property
    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]


class SimpleTrainer(BaseTrainer):
    """The seed's simple loop: every interaction trains, the LR never changes.

    With nothing held out, its Recall@10 is measured on the training pairs themselves (train
    items are not excluded): a fit measure, not an estimate of quality on unseen data.
    """

    def fit(self) -> list[dict]:
        epochs = self.config.epochs
        for epoch in range(1, epochs + 1):
            loss = self.train_epoch(epoch)
            metrics = self.evaluate("train")
            row = {"epoch": epoch, "train_loss": loss, **metrics}
            self.history.append(row)
            self.on_epoch(row)
            self.log(
                f"Epoch {epoch}/{epochs} - Loss: {loss:.4f}, Recall@10: {metrics['recall@10']:.4f}"
            )
        return self.history


class AdvancedTrainer(BaseTrainer):
    """Early stopping, LR schedule and checkpoints into `output_dir`."""

    def __init__(
        self,
        learner: Learner,
        config: TrainConfig,
        output_dir: Path,
        score_start: bool = False,
        **kwargs,
    ) -> None:
        """`score_start`: evaluate the weights the run starts from (a warm start's champion) as
        epoch 0, so they are the best to beat and the run never ends worse than it started."""
        super().__init__(learner, config, **kwargs)
        self.score_start = score_start
        self.start_metrics: dict[str, float] | None = None
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer,
            mode=learner.mode,
            factor=config.lr_factor,
            patience=config.lr_patience,
            min_lr=config.min_lr,
        )
        self.start_epoch = 1
        self.best_value: float | None = None
        self.best_epoch = 0
        self.bad_epochs = 0
        self.seconds_to_best = 0.0
        self.elapsed = 0.0  # training and the per-epoch val evaluation
        self.step_seconds = 0.0  # the training steps alone (what peers' s/epoch measures)

    # --- checkpoints -----------------------------------------------------------------------

    def state(self, epoch: int) -> dict:
        """Everything a resumed run needs, nanoGPT-style, in one dict of tensors and plain data
        (so it loads with weights_only=True)."""
        return {
            "model": self.learner.model.state_dict(),
            "model_args": self.learner.model_args(),
            "model_kind": self.config.model,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "seconds_to_best": self.seconds_to_best,
            "elapsed": self.elapsed,
            "step_seconds": self.step_seconds,
            "start_metrics": self.start_metrics,
            "history": self.history,
            "config": self.config.to_dict(),
            "artifacts": self.artifacts,
            "rng_state": self.learner.rng_state(),
            "world_size": self.learner.parallel.world_size,
        }

    def resume(self) -> bool:
        """Continue from the newest checkpoint_epoch_*.pt in output_dir; False when none."""
        checkpoints = sorted(
            self.output_dir.glob("checkpoint_epoch_*.pt"),
            key=lambda p: int(p.stem.rsplit("_", 1)[1]),
        )
        if not checkpoints:
            return False
        state = load_checkpoint(checkpoints[-1], map_location=self.learner.device)
        self.learner.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.best_value, self.best_epoch = state["best_value"], state["best_epoch"]
        self.bad_epochs, self.history = state["bad_epochs"], list(state["history"])
        self.seconds_to_best, self.elapsed = state["seconds_to_best"], state["elapsed"]
        self.step_seconds = state.get("step_seconds", 0.0)
        self.start_metrics = state.get("start_metrics")
        self.start_epoch = state["epoch"] + 1
        self.learner.set_rng_state(state["rng_state"])
        self.log(f"Resumed from {checkpoints[-1].name} (epoch {state['epoch']})")
        return True

    # --- the loop ----------------------------------------------------------------------------

    def _score_start(self) -> None:
        val = self.evaluate("val")
        self.start_metrics = val
        self.best_value, self.best_epoch = val[self.learner.monitor], 0
        self._save("best_model.pt", 0)
        self.log(f"Starting point: val {_label(self.learner.monitor)} {self.best_value:.4f}")

    def fit(self) -> dict:
        config, learner = self.config, self.learner
        monitor = learner.monitor
        if self.score_start and self.start_epoch == 1:
            self._score_start()
        for epoch in range(self.start_epoch, config.epochs + 1):
            if self.bad_epochs >= config.patience:
                break
            started = time.perf_counter()
            loss = self.train_epoch(epoch)
            self.step_seconds += time.perf_counter() - started
            val = self.evaluate("val")
            self.elapsed += time.perf_counter() - started
            row = {
                "epoch": epoch,
                "train_loss": loss,
                "lr": self.current_lr,
                "seconds": self.elapsed,
            }
            row.update({f"val_{name}": value for name, value in val.items()})
            self.history.append(row)
            self.log(self._epoch_line(epoch, loss, val))
            if config.use_scheduler:
                self.scheduler.step(val[monitor])
                self.log(f"Current learning rate: {self.current_lr:.6f}")
            if improved(val[monitor], self.best_value, learner.mode):
                self.best_value, self.best_epoch, self.bad_epochs = val[monitor], epoch, 0
                self.seconds_to_best = self.elapsed
                self._save("best_model.pt", epoch)
                self.log(f"New best model! Val {_label(monitor)}: {val[monitor]:.4f}")
            else:
                self.bad_epochs += 1
            if epoch % config.checkpoint_every == 0:
                self._save_resume_point(epoch)
            self.on_epoch(row)
            self._write_metrics(final=None)
        if self.bad_epochs >= config.patience:
            self.log(
                f"Early stopping: no better val {_label(monitor)} for {config.patience} epochs"
            )
        return self._finish()

    def _epoch_line(self, epoch: int, loss: float, val: dict) -> str:
        k = self.config.k
        line = (
            f"Epoch {epoch}/{self.config.epochs} - train_loss: {loss:.4f}, "
            f"val_recall@{k}: {val[f'recall@{k}']:.4f}, val_ndcg@{k}: {val[f'ndcg@{k}']:.4f}"
        )
        if "rmse" in val:
            line += f", val_rmse: {val['rmse']:.4f}"
        return line

    def _finish(self) -> dict:
        """Keep the last weights as final_model.pt, reload the best, score val and test."""
        last_epoch = self.history[-1]["epoch"] if self.history else 0
        self._save("final_model.pt", last_epoch)
        self.learner.parallel.barrier()  # the main process has written best_model.pt
        if (self.output_dir / "best_model.pt").exists():
            best = load_checkpoint(self.output_dir / "best_model.pt")
            self.learner.model.load_state_dict(best["model"])
        final = {
            "best_epoch": self.best_epoch,
            "epochs_run": last_epoch,
            "seconds_to_best": self.seconds_to_best,
            "seconds": self.elapsed,
            "step_seconds": self.step_seconds,
            "val": self._recorded_val() or self.evaluate("val"),
            "test": self.evaluate("test"),
        }
        if self.start_metrics is not None:
            final["start_val"] = self.start_metrics
        self._write_metrics(final)
        if self.is_main:
            plot_history(self.history, self.output_dir / "history.png", self.learner.monitor)
        return final

    def _recorded_val(self) -> dict[str, float] | None:
        """The val metrics the best weights scored when they were kept (their epoch's row, or
        the starting point's): the reloaded weights score the same, and on a 10M-listen graph
        one more val evaluation is a minute. None when no scored weights were kept."""
        if self.best_epoch == 0:
            return self.start_metrics
        for row in self.history:
            if row["epoch"] == self.best_epoch:
                return {key[len("val_") :]: v for key, v in row.items() if key.startswith("val_")}
        return None

    def _save(self, name: str, epoch: int) -> None:
        if self.is_main:
            save_checkpoint(self.output_dir / name, self.state(epoch))

    def _save_resume_point(self, epoch: int) -> None:
        """checkpoint_epoch_<epoch>.pt, then the older ones removed: `resume` only reads the
        newest, and one per epoch made a night's run directory grow with its epochs."""
        self._save(f"checkpoint_epoch_{epoch}.pt", epoch)
        if not self.is_main:
            return
        for older in self.output_dir.glob("checkpoint_epoch_*.pt"):
            if int(older.stem.rsplit("_", 1)[1]) < epoch:
                older.unlink(missing_ok=True)

    def _write_metrics(self, final: dict | None) -> None:
        if not self.is_main:
            return
        document = {
            "model": self.config.model,
            "config": self.config.to_dict(),
            "monitor": self.learner.monitor,
            "history": self.history,
            "best_epoch": self.best_epoch,
            "best_value": self.best_value,
            **({"final": final} if final else {}),
            "artifacts": {k: v for k, v in self.artifacts.items() if not isinstance(v, list)},
        }
        path = self.output_dir / "metrics.json"
        path.write_text(json.dumps(document, indent=2, default=float))


def _label(metric: str) -> str:
    return {"rmse": "RMSE"}.get(metric, metric.replace("recall", "Recall").replace("ndcg", "NDCG"))
