"""GAT-BPR's defaults chosen across dataset shapes, on val only, with the tuning job's own code.

    python -m bench.bench_tune                      # every dataset available, 16 trials each
    python -m bench.bench_tune --trials 8 --datasets ml-100k-implicit lastfm

1. Per dataset (bench-train's 80/10/10 hash split): an Optuna study (models_src/tuning.py, the
   search space of models_src/params.py) whose first trial is the current nightly default.
2. Every dataset's best trial, and the current default, are then trained on every dataset:
   a candidate's score on a dataset is its val Recall@10 over the best val Recall@10 any
   candidate reached there, and the candidate with the highest worst-case score is the one
   that holds across shapes (a default that only wins where it was tuned loses here).
Test is never read. Writes bench/results/tune.json and tune.md; `--follow-up` then tries
named changes on the winner (tune_followup.json / .md).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import RESULTS

DATASETS = ("ml-100k-implicit", "lastfm", "ml-latest-small-implicit", "lastfm-sparse")
RUN = {"epochs": 100, "patience": 5, "val_ratio": 0.1, "test_ratio": 0.1, "seed": 0}


def base_config() -> dict[str, Any]:
    from models_src.config import tuned_defaults

    return {**tuned_defaults("gat-bpr"), **RUN}


def searched_defaults() -> dict[str, Any]:
    """The current default of every searched parameter: the study's first trial."""
    from models_src.params import GatBprParams, search_space

    defaults = GatBprParams()
    return {name: getattr(defaults, name) for name in search_space(GatBprParams)}


def _space():
    from models_src.params import GatBprParams, search_space
    from models_src.tuning import Dimension

    return {name: Dimension(**spec) for name, spec in search_space(GatBprParams).items()}


def export(dataset: str, folder: Path) -> str:
    from bench.datasets import load_dataset

    path = folder / f"{dataset}.parquet"
    load_dataset(dataset).to_parquet(path)
    return str(path)


def study_on(dataset: str, data: str, trials: int, folder: Path) -> dict[str, Any]:
    """One dataset's study; its first trial is the current default."""

    from models_src.tuning import complete_trials, make_objective, open_study, run_trials

    study = open_study(folder / f"{dataset}.journal", dataset, "gat-bpr", seed=0)
    study.enqueue_trial(searched_defaults())
    started = time.perf_counter()
    run_trials(study, make_objective(base_config(), data, _space(), log=print), trials)
    rows = [
        {"trial": t.number, "state": t.state.name, "value": t.value, **t.params}
        for t in study.trials
    ]
    complete = complete_trials(study)
    return {
        "dataset": dataset,
        "seconds": time.perf_counter() - started,
        "trials": rows,
        "default_val": study.trials[0].value,
        "best": {
            "trial": study.best_trial.number,
            "value": study.best_value,
            "params": study.best_params,
        }
        if complete
        else None,  # fmt: skip
    }


def val_recall(config: dict[str, Any], data: str) -> tuple[float, float]:
    """(val Recall@10, seconds) of one training run."""
    from models_src.runs import train_run

    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        _, final = train_run(config, data, Path(out), log=lambda line: None)
    return final["val"]["recall@10"], time.perf_counter() - started


def cross_check(studies: list[dict], exports: dict[str, str]) -> dict[str, Any]:
    """Every candidate on every dataset, scored relative to the best candidate there."""
    candidates = {"current default": searched_defaults()}
    for study in studies:
        if study["best"] and study["best"]["params"] not in candidates.values():
            candidates[f"best on {study['dataset']}"] = study["best"]["params"]
    values: dict[str, dict[str, float]] = {}
    for name, params in candidates.items():
        values[name] = {}
        for dataset, data in exports.items():
            value, seconds = val_recall({**base_config(), **params}, data)
            values[name][dataset] = value
            print(f"{name} on {dataset}: val Recall@10 {value:.4f} ({seconds:.0f} s)", flush=True)
    best_per_dataset = {d: max(v[d] for v in values.values()) for d in exports}
    scores = {
        name: min(values[name][d] / best_per_dataset[d] for d in exports) for name in candidates
    }
    chosen = max(scores, key=scores.get)
    return {
        "candidates": candidates,
        "val_recall": values,
        "worst_case_share": scores,
        "chosen": chosen,
    }


# Changes tried on the cross-check's winner before it became the default (the study's L2 of
# 2e-6 sat at the bottom of its range; the others are levers the study did not search).
FOLLOW_UPS: dict[str, dict[str, Any]] = {
    "as chosen": {},
    "L2 3e-5": {"l2": 3e-5},
    "L2 1e-4": {"l2": 1e-4},
    "L2 3e-5, 32768-pair batches": {"l2": 3e-5, "batch_size": 32768},
    "L2 3e-5, 2 layers": {"l2": 3e-5, "num_layers": 2},
    "dim 64": {"embedding_dim": 64},
    "L2 3e-5, 4 negatives": {"l2": 3e-5, "negatives": 4},
    "L2 3e-5, 16 negatives": {"l2": 3e-5, "negatives": 16},
    "L2 3e-5, 32 negatives": {"l2": 3e-5, "negatives": 32},
    "hard negatives": {"hard_negatives": True},
    "sampled softmax": {"loss": "softmax"},
}


def follow_up(datasets: list[str], only: list[str] | None = None) -> dict[str, Any]:
    """FOLLOW_UPS applied to tune.json's chosen candidate, on every dataset (val only); with
    `only`, just those rows, the others kept from the last tune_followup.json."""
    chosen = json.loads((RESULTS / "tune.json").read_text())["cross"]
    params = chosen["candidates"][chosen["chosen"]]
    values: dict[str, dict[str, float]] = {}
    previous = RESULTS / "tune_followup.json"
    if only and previous.exists():
        values = json.loads(previous.read_text())["val_recall"]
    with tempfile.TemporaryDirectory(prefix="encore-bench-tune-") as scratch:
        exports = {d: export(d, Path(scratch)) for d in datasets}
        for name, change in FOLLOW_UPS.items():
            if only and name not in only:
                continue
            config = {**base_config(), **params, **change}
            values[name] = {d: val_recall(config, data)[0] for d, data in exports.items()}
            print(name, json.dumps(values[name]), flush=True)
    values = {name: values[name] for name in FOLLOW_UPS if name in values}  # table order
    best = {d: max(v[d] for v in values.values()) for d in datasets}
    worst = {name: min(v[d] / best[d] for d in datasets) for name, v in values.items()}
    return {"base": params, "changes": FOLLOW_UPS, "val_recall": values, "worst_case_share": worst}


def follow_up_markdown(result: dict[str, Any]) -> str:
    datasets = list(next(iter(result["val_recall"].values())))
    chosen = max(result["worst_case_share"], key=result["worst_case_share"].get)
    lines = [
        "# GAT-BPR defaults: follow-up on bench-tune's winner (val only)",
        "",
        "Base: "
        + ", ".join(
            f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in result["base"].items()
        )  # fmt: skip
        + ". Each row changes the named knobs; share as in tune.md; **bold**: the highest"
        " worst-case share.",
        "",
        "| change | " + " | ".join(datasets) + " | worst-case share |",
        "|---|" + "---:|" * (len(datasets) + 1),
    ]
    for name, values in result["val_recall"].items():
        label = f"**{name}**" if name == chosen else name
        cells = " | ".join(f"{values[d]:.4f}" for d in datasets)
        lines.append(f"| {label} | {cells} | {result['worst_case_share'][name]:.3f} |")
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    cross = result["cross"]
    datasets = list(next(iter(cross["val_recall"].values())))
    lines = [
        "# GAT-BPR defaults across dataset shapes (val only)",
        "",
        f"Per dataset an Optuna study of {result['trials']} trials (TPE, median pruning; the"
        " first trial is the current default) on bench-train's 80/10/10 hash split; then every"
        " dataset's best trial and the current default trained on every dataset. Share = val"
        " Recall@10 over the best any candidate reached on that dataset; **bold**: the highest"
        " worst-case share, the candidate that holds across shapes. Test is never read.",
        "",
        "| candidate | " + " | ".join(datasets) + " | worst-case share | parameters |",
        "|---|" + "---:|" * (len(datasets) + 1) + "---|",
    ]
    for name, params in cross["candidates"].items():
        cells = [f"{cross['val_recall'][name][d]:.4f}" for d in datasets]
        label = f"**{name}**" if name == cross["chosen"] else name
        shown = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in params.items())  # fmt: skip
        lines.append(
            f"| {label} | {' | '.join(cells)} | {cross['worst_case_share'][name]:.3f} | {shown} |"
        )
    lines += ["", "## Studies", ""]
    for study in result["studies"]:
        best = study["best"]
        lines.append(
            f"- {study['dataset']}: default val Recall@10 {study['default_val']:.4f}, best"
            f" {best['value']:.4f} (trial {best['trial']} of {len(study['trials'])},"
            f" {study['seconds']:.0f} s)"
        )
    return "\n".join(lines)


def main() -> None:
    from bench.datasets import available

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS))
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument(
        "--follow-up", action="store_true", help="only the FOLLOW_UPS on tune.json's winner"
    )
    parser.add_argument("--only", nargs="*", help="with --follow-up: just these FOLLOW_UPS rows")
    args = parser.parse_args()
    datasets = [d for d in args.datasets if available(d)] or ["sample-implicit"]
    if args.follow_up:
        result = follow_up(datasets, args.only)
        (RESULTS / "tune_followup.json").write_text(json.dumps(result, indent=2, default=float))
        text = follow_up_markdown(result)
        (RESULTS / "tune_followup.md").write_text(text + "\n")
        print(text)
        return
    with tempfile.TemporaryDirectory(prefix="encore-bench-tune-") as scratch:
        folder = Path(scratch)
        exports = {d: export(d, folder) for d in datasets}
        studies = [study_on(d, exports[d], args.trials, folder) for d in datasets]
        cross = cross_check(studies, exports)
    result = {"trials": args.trials, "studies": studies, "cross": cross}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "tune.json").write_text(json.dumps(result, indent=2, default=float))
    text = markdown(result)
    (RESULTS / "tune.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
