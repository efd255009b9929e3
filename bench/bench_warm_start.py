"""Warm vs cold start over simulated nights: quality and training time.

    python -m bench.bench_warm_start            (make bench-warm-start)

On the built-in sample generator: night 0 loads days 0..29 of listens (GAT-BPR) and ratings
(rating model) and trains cold; nights 1..N each load the next day ("next-day arrivals": new
users and items join) and train twice on the same export and splits:
- cold: from random initialisation, the nightly defaults (up to 50 epochs, early stopping);
- warm: from the previous night's warm model (the champion, were it promoted every night),
  extended to tonight's ids (models_src/warm_start.py), with the warm epoch budget.
Reported per night: val/test Recall@10 and NDCG@10 (and RMSE for ratings), epochs, and training
seconds (the trainer's own clock: epochs + validation; warm includes loading the champion).

Writes bench/results/warm_start.json and warm_start.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench.harness import RESULTS, table_row

MODELS = {"listens": "gat-bpr", "ratings": "rating"}
METRICS = ("recall@10", "ndcg@10", "rmse")


def load_day(con, home, specs, params, day: int) -> None:
    """Write day `day` of both samples into the landing folders and ingest + validate it."""
    from bench.bench_nightly import ingest_and_validate
    from models_src.sample_data import default_configs, write_sample_days

    for kind, config in default_configs().items():
        write_sample_days(home.landing / f"sample-{kind}", kind, config, range(day + 1))
    ingest_and_validate(con, specs, params, home.reports)


def train(export_path: str, config, run_dir: Path, warm_from: Path | None) -> dict:
    """One training run; warm_from is the previous night's best_model.pt."""
    from models_src.learners import prepare_learner
    from models_src.trainers import AdvancedTrainer
    from models_src.warm_start import warm_start

    started = time.perf_counter()
    learner, artifacts = prepare_learner(config, export_path)
    loaded = 0.0
    if warm_from is not None:
        before = time.perf_counter()
        report = warm_start(learner, artifacts, warm_from)
        loaded = time.perf_counter() - before
        artifacts["warm_start"] = report.to_dict()
    trainer = AdvancedTrainer(
        learner,
        config,
        run_dir,
        score_start=warm_from is not None,
        artifacts=artifacts,
        log=lambda line: None,
    )
    final = trainer.fit()
    return {
        "seconds": final["seconds"] + loaded,
        "wall_seconds": time.perf_counter() - started,
        "epochs_run": final["epochs_run"],
        "best_epoch": final["best_epoch"],
        "start_val": final.get("start_val"),
        "val": final["val"],
        "test": final["test"],
        "best_model": str(run_dir / "best_model.pt"),
    }


def run(nights: int, warm_epochs: int, warm_lr_factor: float, warm_patience: int) -> list[dict]:
    from flows.cli import SAMPLE_SOURCES
    from flows.params import NightlyParams
    from models_src.config import TrainConfig
    from tasks.home import EncoreHome, configure_environment
    from tasks.ingest.sources_file import load_datasets
    from tasks.train.export import export_interactions
    from tasks.warehouse.schema import warehouse

    rows = []
    with tempfile.TemporaryDirectory(prefix="encore-bench-warm-") as tmp:
        home = configure_environment(EncoreHome(Path(tmp)))
        home.ensure()
        home.sources_file.write_text(SAMPLE_SOURCES)
        params = NightlyParams()
        specs = load_datasets(home.sources_file)
        champions: dict[str, Path] = {}
        with warehouse(home.warehouse, temp_dir=home.tmp) as con:
            for night in range(nights + 1):
                load_day(con, home, specs, params, 29 + night)
                for kind, model in MODELS.items():
                    dataset = f"sample-{kind}"
                    export = export_interactions(
                        con, dataset, home.root / "exports" / f"{dataset}.parquet"
                    )
                    base = params.train_config(model)
                    cold = TrainConfig.from_dict(base)
                    row = {
                        "night": night,
                        "model": model,
                        "rows": export["rows"],
                        "users": export["users"],
                        "items": export["items"],
                    }
                    row["cold"] = train(
                        export["path"], cold, Path(tmp) / f"cold-{model}-{night}", None
                    )
                    if night == 0:
                        champions[model] = Path(row["cold"]["best_model"])
                    else:
                        warm = TrainConfig.from_dict(
                            {
                                **base,
                                "epochs": warm_epochs,
                                "lr": base["lr"] * warm_lr_factor,
                                "patience": warm_patience,
                            }
                        )
                        run_dir = Path(tmp) / f"warm-{model}-{night}"
                        row["warm"] = train(export["path"], warm, run_dir, champions[model])
                        champions[model] = Path(row["warm"]["best_model"])
                    rows.append(row)
                    print(_line(row), flush=True)
    return rows


def _line(row: dict) -> str:
    parts = [f"night {row['night']} {row['model']}: {row['users']} users"]
    for mode in ("cold", "warm"):
        if mode in row:
            r = row[mode]
            parts.append(
                f"{mode} {r['seconds']:.1f}s {r['epochs_run']} ep"
                f" test R@10 {r['test']['recall@10']:.4f}"
                + (f" rmse {r['test']['rmse']:.4f}" if "rmse" in r["test"] else "")
            )
    return " | ".join(parts)


def summary(rows: list[dict]) -> dict:
    out = {}
    for model in MODELS.values():
        nights = [r for r in rows if r["model"] == model and "warm" in r]
        out[model] = {
            mode: {
                "seconds": statistics.mean(r[mode]["seconds"] for r in nights),
                "epochs": statistics.mean(r[mode]["epochs_run"] for r in nights),
                **{
                    f"{split}_{m}": statistics.mean(r[mode][split][m] for r in nights)
                    for split in ("val", "test")
                    for m in METRICS
                    if m in nights[0][mode][split]
                },
            }
            for mode in ("cold", "warm")
        }
    return out


def markdown(rows: list[dict], totals: dict, settings: dict) -> str:
    lines = [
        f"# Warm vs cold start, {max(r['night'] for r in rows)} simulated nights (built-in sample,"
        " next-day arrivals)",
        "",
        f"Warm settings: {settings}. Seconds = the trainer's clock (epochs + validation; warm "
        "includes loading the champion). Measured on the 2-core CPU machine.",
        "",
        "| night | model | users | items | mode | epochs | seconds | val R@10 | test R@10 |"
        " test NDCG@10 | test RMSE | start val |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for mode in ("cold", "warm"):
            if mode not in row:
                continue
            r = row[mode]
            start = r["start_val"]
            monitor = "rmse" if row["model"] == "rating" else "recall@10"
            lines.append(
                f"| {row['night']} | {row['model']} | {row['users']} | {row['items']} | {mode} |"
                f" {r['epochs_run']} | {r['seconds']:.1f} | {r['val']['recall@10']:.4f} |"
                f" {r['test']['recall@10']:.4f} | {r['test']['ndcg@10']:.4f} |"
                f" {r['test'].get('rmse', float('nan')):.4f} |"
                f" {'' if start is None else f'{start[monitor]:.4f}'} |"
            )
    lines += [
        "",
        "Means over nights 1..N:",
        "",
        "| model | mode | seconds | epochs | test R@10 | test NDCG@10 | test RMSE |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, modes in totals.items():
        for mode, t in modes.items():
            figures = (t["test_recall@10"], t["test_ndcg@10"], t.get("test_rmse", float("nan")))
            lines.append(
                table_row(
                    model,
                    mode,
                    f"{t['seconds']:.1f}",
                    f"{t['epochs']:.1f}",
                    *(f"{value:.4f}" for value in figures),
                )
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, default=5)
    from flows.params import DEFAULT_PARAMS as defaults  # the nightly flow's warm settings

    parser.add_argument("--warm-epochs", type=int, default=defaults.warm_start_epochs)
    parser.add_argument("--warm-lr-factor", type=float, default=defaults.warm_start_lr_factor)
    parser.add_argument("--warm-patience", type=int, default=defaults.warm_start_patience)
    parser.add_argument("--tag", default="", help="Suffix of the results files.")
    args = parser.parse_args()
    settings = {
        "warm_epochs": args.warm_epochs,
        "warm_lr_factor": args.warm_lr_factor,
        "warm_patience": args.warm_patience,
    }
    rows = run(args.nights, **settings)
    totals = summary(rows)
    RESULTS.mkdir(exist_ok=True)
    name = f"warm_start{args.tag}"
    (RESULTS / f"{name}.json").write_text(
        json.dumps({"settings": settings, "nights": rows, "means": totals}, indent=2)
    )
    (RESULTS / f"{name}.md").write_text(markdown(rows, totals, settings))
    print(markdown(rows, totals, settings))


if __name__ == "__main__":
    main()
