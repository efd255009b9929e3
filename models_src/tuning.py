"""Hyper-parameter search with Optuna: a study per (dataset, model) whose trials train on the
snapshot's train split and are judged on its val split only (test is never looked at).

The search space is data (`SearchSpace`: name -> `Dimension`), declared next to each parameter in
flows/params.py, so the run form, the defaults and the tuner's bounds live in one place. A study
persists in Optuna's journal file: a killed job resumes where it stopped, and several processes
(Dask workers) can run trials of one study side by side.

Why Optuna and not our own search: TPE handles the mixed (log-scale, integer, categorical)
space, its pruners stop a trial whose per-epoch val curve is below the median of earlier trials,
and its journal storage gives resumable, multi-process studies.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna

from models_src.config import TrainConfig


@dataclass(frozen=True)
class Dimension:
    """One searched parameter: a numeric range (log-scaled when `log`) or a list of choices."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] | None = None

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(name, list(self.choices))
        if self.integer:
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def contains(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        return self.low <= value <= self.high


SearchSpace = dict[str, Dimension]


def direction(model: str) -> str:
    """GAT-BPR maximises val Recall@K; the rating model minimises val RMSE."""
    return "minimize" if model == "rating" else "maximize"


def objective_metric(config: TrainConfig) -> str:
    return "rmse" if config.model == "rating" else config.monitor


def journal_storage(journal: Path) -> optuna.storages.JournalStorage:
    journal.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))


def open_study(journal: Path, name: str, model: str, seed: int = 0) -> optuna.Study:
    """The study `name` in `journal` (created, or loaded to resume): TPE sampler, median pruner
    (a trial stops when its val metric at an epoch is worse than the median of the earlier
    trials at that epoch, after 3 complete trials and from epoch 3 on)."""
    # The objective logs each trial to the run's log itself; Optuna's own INFO lines repeat it.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        study_name=name,
        storage=journal_storage(journal),
        direction=direction(model),
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=3),
        load_if_exists=True,
    )


class _Pruning:
    """The trainer's per-epoch callback: reports the val metric to the trial, stops the run
    (optuna.TrialPruned) when the pruner says so."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial, self.metric = trial, metric

    def __call__(self, row: dict) -> None:
        self.trial.report(row[f"val_{self.metric}"], row["epoch"])
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"val {self.metric} {row[f'val_{self.metric}']:.4f}")


def make_objective(
    base_config: dict,
    data: str,
    space: SearchSpace,
    log: Callable[[str], None] = lambda line: None,
) -> Callable[[optuna.Trial], float]:
    """Train `base_config` with the trial's choices on `data`'s train split; the value is the
    best val metric of the run (the early-stopped model's)."""
    from models_src.runs import train_run

    def objective(trial: optuna.Trial) -> float:
        chosen = {name: dim.suggest(trial, name) for name, dim in space.items()}
        config = {**base_config, **chosen}
        metric = objective_metric(TrainConfig.from_dict(config))
        with tempfile.TemporaryDirectory(prefix="encore-trial-") as out:
            _, final = train_run(
                config, data, Path(out), log=lambda line: None, on_epoch=_Pruning(trial, metric)
            )
        value = float(final["val"][metric])
        log(f"trial {trial.number}: val {metric} {value:.4f} with {json.dumps(chosen)}")
        return value

    return objective


ENDED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def count_trials(study: optuna.Study, states: tuple = ENDED) -> int:
    """Trials of the study in `states` (by default those that ran to an end: complete or
    pruned; an enqueued trial waits in the study until one runs it)."""
    return len(study.get_trials(deepcopy=False, states=states))


def complete_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    trials: int,
    timeout: float | None = None,
) -> int:
    """Run until the study holds `trials` finished trials (complete or pruned) or `timeout`
    seconds pass; a resumed study only runs what is missing. Returns the trials run now."""
    missing = max(0, trials - count_trials(study))
    if missing:
        study.optimize(
            objective, n_trials=missing, timeout=timeout, catch=(RuntimeError, ValueError)
        )
    return missing


def fail_interrupted(journal: Path, name: str) -> int:
    """Mark trials left RUNNING by a killed job as FAILED, so a resumed study neither counts
    nor waits for them. Only safe while no other job runs this study (the tune flow holds the
    data home's tuning lock). Returns how many there were."""
    storage = journal_storage(journal)
    study_id = storage.get_study_id_from_name(name)
    stale = storage.get_all_trials(
        study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)
    )
    for trial in stale:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
    return len(stale)


@dataclass(frozen=True)
class TunedParams:
    """The best trial of a study: what the next nightly trains with."""

    dataset: str
    model: str
    study: str
    trial: int
    metric: str
    value: float
    params: dict[str, Any]
    trials: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def best_params(study: optuna.Study, dataset: str, model: str, metric: str) -> TunedParams | None:
    """The study's best complete trial, or None while no trial has completed."""
    complete = complete_trials(study)
    if not complete:
        return None
    best = study.best_trial
    return TunedParams(
        dataset=dataset,
        model=model,
        study=study.study_name,
        trial=best.number,
        metric=metric,
        value=float(best.value),
        params=dict(best.params),
        trials=len(study.trials),
    )


def top_trials(study: optuna.Study, count: int = 10) -> list[dict[str, Any]]:
    """The best complete trials, best first, as table rows (value rounded to 4 digits)."""
    complete = complete_trials(study)
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    ranked = sorted(complete, key=lambda t: t.value, reverse=reverse)[:count]
    return [{"trial": t.number, "value": round(t.value, 4), **_rounded(t.params)} for t in ranked]


def _rounded(params: dict[str, Any]) -> dict[str, Any]:
    return {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in params.items()}


def save_plots(study: optuna.Study, out_dir: Path) -> list[Path]:
    """Optuna's optimization-history and (with two complete trials or more) parameter-importance
    plots as PNG files (matplotlib backend, no browser needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    complete = complete_trials(study)
    plots = [("optimization_history", optuna_plots.plot_optimization_history)]
    if len(complete) >= 2 and len({json.dumps(t.params, sort_keys=True) for t in complete}) > 1:
        plots.append(("param_importances", optuna_plots.plot_param_importances))
    with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, plot in plots:
            axes = plot(study)
            figure = axes.figure if hasattr(axes, "figure") else axes[0].figure
            path = out_dir / f"{name}.png"
            figure.savefig(path, dpi=90, bbox_inches="tight")
            plt.close(figure)
            written.append(path)
    return written
