"""Prefect tasks of the tuning job (flows/tune.py) and the tuned-parameter files the nightly reads.

Under the data home's `tuning/` folder, per dataset and model:
- `<dataset>-<model>.journal`: its Optuna studies, one per snapshot (journal storage; a killed
  job resumes from it);
- `<dataset>-<model>.best.json`: the parameters the next nightly trains with (the study's best
  trial, or what a person pinned), with the study and trial they came from;
- `exports/<dataset>.parquet`: the snapshot the trials train on;
- `plots/<dataset>-<model>/`: Optuna's optimization-history and parameter-importance images.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger

from tasks.files import write_text_atomically
from tasks.report.report import image_markdown
from tasks.retries import IO_RETRIES, artifact_key
from tasks.train.export import export_interactions
from tasks.warehouse.schema import warehouse


def tuning_dir(home_root: Path) -> Path:
    return Path(home_root) / "tuning"


def study_name(dataset: str, model: str, snapshot_id: int) -> str:
    """One study per snapshot: trials on other data are not comparable, and a study that
    already holds its trials would otherwise make every later job a no-op."""
    return f"{dataset}-{model}-snapshot{snapshot_id}"


def journal_path(home_root: Path, dataset: str, model: str) -> Path:
    """Every study of one dataset and model, in one journal file."""
    return tuning_dir(home_root) / f"{dataset}-{model}.journal"


def best_path(home_root: Path, dataset: str, model: str) -> Path:
    return tuning_dir(home_root) / f"{dataset}-{model}.best.json"


def load_tuned(home_root: Path, dataset: str, model: str) -> dict | None:
    """The parameters the nightly should train `model` on `dataset` with, or None (defaults)."""
    path = best_path(home_root, dataset, model)
    return json.loads(path.read_text()) if path.exists() else None


def tuned_summary(home_root: Path, dataset: str | None = None) -> list[dict]:
    """Every stored tuned-parameter file (of one dataset, or all), for `encore tune --show`."""
    folder = tuning_dir(home_root)
    if not folder.exists():
        return []
    found = [json.loads(p.read_text()) for p in sorted(folder.glob("*.best.json"))]
    return [f for f in found if dataset is None or f["dataset"] == dataset]


def set_pinned(home_root: Path, dataset: str, model: str, pinned: bool) -> dict:
    """Pin (a later study keeps these parameters) or unpin them. Raises FileNotFoundError when
    there is nothing tuned to pin."""
    record = load_tuned(home_root, dataset, model)
    if record is None:
        raise FileNotFoundError(
            f"no tuned parameters for {model} on {dataset}; run `encore tune --dataset {dataset}`"
        )
    record["pinned"] = pinned
    _write(best_path(home_root, dataset, model), record)
    return record


def clear_tuned(home_root: Path, dataset: str, model: str) -> bool:
    """Forget the tuned parameters (the nightly goes back to its defaults); the study stays, so
    a later tune resumes it. Returns whether there was anything to clear."""
    path = best_path(home_root, dataset, model)
    existed = path.exists()
    path.unlink(missing_ok=True)
    return existed


def _write(path: Path, record: dict) -> None:
    write_text_atomically(path, json.dumps(record, indent=2) + "\n")


def tunable_datasets(
    warehouse_path: str, datasets: list[str] | None, models: list[str] | None
) -> list[dict]:
    """(dataset, model) pairs to tune: the asked datasets (default: all) that have a passed
    snapshot, with the asked models (default: the nightly's for the dataset's kind). An asked
    dataset the warehouse does not know is an error naming the known ones."""
    from tasks.train.due import DEFAULT_MODELS

    with warehouse(Path(warehouse_path)) as con:
        kinds = dict(
            con.execute(
                """SELECT d.name, d.kind FROM datasets d
                   WHERE EXISTS (SELECT 1 FROM snapshots s
                                 WHERE s.dataset = d.name AND s.status = 'passed')
                   ORDER BY d.name"""
            ).fetchall()
        )
    unknown = sorted(set(datasets or []) - set(kinds))
    if unknown:
        known = ", ".join(kinds) or "none yet (run `encore nightly` first)"
        raise ValueError(
            f"no passed snapshot to tune on for {', '.join(unknown)}; tunable: {known}"
        )
    return [
        {"dataset": dataset, "model": model}
        for dataset in (datasets or list(kinds))
        for model in (models or DEFAULT_MODELS[kinds[dataset]])
    ]


@task(name="export snapshot for tuning", task_run_name="export {dataset} for tuning", **IO_RETRIES)
def export_for_tuning_task(warehouse_path: str, home_root: str, dataset: str) -> dict:
    """The latest passed snapshot -> Parquet under tuning/exports (not the nightly's file, which
    a night may be rewriting)."""
    out = tuning_dir(Path(home_root)) / "exports" / f"{dataset}.parquet"
    with warehouse(Path(warehouse_path)) as con:
        return export_interactions(con, dataset, out)


@task(name="open study", task_run_name="open the {model} study of {dataset}")
def open_study_task(
    home_root: str, dataset: str, model: str, snapshot_id: int, seed: int, space: dict[str, dict]
) -> dict:
    """Create or resume the snapshot's study; trials a killed job left running are marked
    failed. A new study's first trial is the stored best of an earlier one, when it lies in
    the search space, so each week starts from what the last one found. Returns the study's
    name and how many finished trials it already holds."""

    from models_src.tuning import Dimension, count_trials, fail_interrupted, open_study

    root = Path(home_root)
    journal, name = journal_path(root, dataset, model), study_name(dataset, model, snapshot_id)
    study = open_study(journal, name, model, seed)
    interrupted = fail_interrupted(journal, name)
    seeded = None
    previous = load_tuned(root, dataset, model)
    if not study.trials and previous:
        params = {k: v for k, v in previous["params"].items() if k in space}
        if set(params) == set(space) and all(
            Dimension(**space[k]).contains(v) for k, v in params.items()
        ):
            study.enqueue_trial(params)
            seeded = f"study {previous['study']} trial {previous['trial']}"
    if interrupted:
        get_run_logger().info(f"{name}: {interrupted} interrupted trial(s) marked failed")
    return {
        "study": name,
        "finished": count_trials(study),
        "interrupted": interrupted,
        "seeded_from": seeded,
    }


@task(name="run trials", task_run_name="{trials} trial(s) of {model} on {dataset}")
def run_trials_task(
    home_root: str,
    study: str,
    dataset: str,
    model: str,
    export_path: str,
    base_config: dict,
    space: dict[str, dict],
    trials: int,
    timeout_seconds: float | None,
    seed: int,
) -> int:
    """Run `trials` trials of the study in this process (one of several on the Dask runner:
    the journal file lets them share the study). Returns how many ran."""
    import optuna

    from models_src.tuning import ENDED, Dimension, count_trials, make_objective, open_study

    opened = open_study(journal_path(Path(home_root), dataset, model), study, model, seed)
    dimensions = {key: Dimension(**spec) for key, spec in space.items()}
    objective = make_objective(base_config, export_path, dimensions, get_run_logger().info)
    ended = (*ENDED, optuna.trial.TrialState.FAIL)  # a failed trial ran too
    before = count_trials(opened, ended)
    opened.optimize(
        objective, n_trials=trials, timeout=timeout_seconds, catch=(RuntimeError, ValueError)
    )
    return count_trials(opened, ended) - before


@task(name="record best parameters", task_run_name="record the best {model} trial of {dataset}")
def record_best_task(
    home_root: str, study: str, dataset: str, model: str, metric: str, seed: int
) -> dict:
    """Store the study's best trial for the next nightly (unless a person pinned parameters),
    and publish the top trials as a table artifact and Optuna's plots as an image artifact."""
    from models_src.tuning import best_params, open_study, save_plots, top_trials

    root, name = Path(home_root), study
    study = open_study(journal_path(root, dataset, model), name, model, seed)
    best = best_params(study, dataset, model, metric)
    current = load_tuned(root, dataset, model)
    outcome = {"study": name, "trials": len(study.trials), "best": None, "stored": False}
    if best is not None:
        outcome["best"] = best.to_dict()
        if current and current.get("pinned"):
            outcome["kept_pinned"] = current
        else:
            record = {**best.to_dict(), "pinned": False, "tuned_at": f"{datetime.now(UTC):%c} UTC"}
            _write(best_path(root, dataset, model), record)
            outcome["stored"] = True
    key = artifact_key(f"tuning-{dataset}-{model}")  # one key per dataset: history across weeks
    rows = top_trials(study)
    if rows:
        create_table_artifact(
            table=rows, key=f"{key}-top-trials", description=f"Best trials of {name} ({metric})"
        )
    plots = save_plots(study, tuning_dir(root) / "plots" / f"{dataset}-{model}")
    create_markdown_artifact(key=key, markdown=_study_markdown(outcome, metric, plots))
    return outcome


def _study_markdown(outcome: dict, metric: str, plots: list[Path]) -> str:
    lines = [f"# Tuning study {outcome['study']}", "", f"{outcome['trials']} trial(s) so far."]
    best = outcome["best"]
    if best is None:
        lines.append("No trial has completed yet: the nightly keeps its defaults.")
    else:
        lines.append(f"Best: trial {best['trial']}, val {metric} {best['value']:.4g}.")
        lines.append("")
        lines += [f"- `{k}` = {v}" for k, v in best["params"].items()]
        if outcome.get("kept_pinned"):
            pinned = outcome["kept_pinned"]
            lines.append(
                f"\nPinned parameters (trial {pinned['trial']}) stay in use:"
                " `encore tune --unpin` lets the best trial take over."
            )
        else:
            lines.append("\nThe next nightly trains with these parameters.")
    lines += ["", *(image_markdown(path, path.stem.replace("_", " ")) for path in plots)]
    return "\n".join(lines)
