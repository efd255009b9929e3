"""Encore's models against peers, side by side in one run, on one fixed hash split per dataset.

    python -m bench.bench_train                      # every dataset available, every model
    python -m bench.bench_train --datasets ml-100k-implicit --models "Encore GAT-BPR"
    python -m bench.bench_train --models "Encore GAT-BPR" "LightGCN (PyG)" --device cuda \
        --precision bf16 --out train_cuda_bf16      # on a GPU: bench/results/train_cuda_bf16.*
    python -m bench.bench_train --datasets ml-100k-ratings --models "Surprise SVD++" --update
                                                     # rerun some rows of train.json in place

Ranking (Recall@10, NDCG@10, seconds per epoch, time to best val, peak RSS) on ml-100k as
implicit feedback and HetRec Last.fm; ratings (test RMSE, MAE) on ml-100k. When ../shared/data
is absent the generated sample stands in. Each (dataset, model) runs in its own process, so its
peak RSS (VmHWM) is its own. Writes bench/results/train.json and train.md (--out: another stem).

`--device` and `--precision` apply to the models that run on torch (Encore's two and PyG
LightGCN); the other peers' libraries run on the CPU whatever is asked.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import RESULTS, run_child, save_results

VAL_RATIO = TEST_RATIO = 0.1  # 80/10/10, as the peers were measured in DESIGN.md
RANKING_DATASETS = {
    "ml-100k-implicit": "sample-implicit",
    "lastfm": "sample-implicit",
    "ml-latest-small-implicit": "sample-implicit",
    # Issue 35's sparse shape: Last.fm with 7 artists per user (bench/datasets.py).
    "lastfm-sparse": "sample-implicit",
}
RATING_DATASETS = {
    "ml-100k-ratings": "sample-ratings",
    "ml-latest-small-ratings": "sample-ratings",
    "sample-ratings": "sample-ratings",
}
ENCORE_RANKING, ENCORE_RATING = "Encore GAT-BPR", "Encore rating model"
LIGHTGCN = "LightGCN (PyG)"
# The models that take --device and --precision (torch models); the rest run on the CPU.
ON_DEVICE = (ENCORE_RANKING, ENCORE_RATING, LIGHTGCN)


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def encore_model(
    split: dict,
    kind: str,
    seed: int = 0,
    max_epochs: int = 100,
    overrides: dict | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Encore's model with its tuned defaults (changed by `overrides`, bench_ablation's
    variants; `precision` among them) and the AdvancedTrainer (early stopping on val), on
    `device`."""
    import tempfile

    import torch

    from models_src.config import TrainConfig, tuned_defaults
    from models_src.learners import make_learner
    from models_src.runs import blend_item_item
    from models_src.trainers import AdvancedTrainer

    torch.manual_seed(seed)
    config = TrainConfig.from_dict(
        {
            **tuned_defaults(kind),
            **(overrides or {}),
            "epochs": max_epochs,
            "patience": 5,
            "use_scheduler": True,
            "val_ratio": VAL_RATIO,
            "test_ratio": TEST_RATIO,
            "seed": seed,
        }
    )
    started = time.perf_counter()
    learner = make_learner(split, config, torch.device(device))
    with tempfile.TemporaryDirectory() as out:
        trainer = AdvancedTrainer(learner, config, Path(out), log=lambda line: None)
        final = trainer.fit()
        # The model as it serves: with the item-item blend chosen on val where it is on.
        final, served_scores = blend_item_item(learner, config, Path(out), final, lambda _: None)
    epochs = final["epochs_run"]
    blend_seconds = (final.get("item_item") or {}).get("seconds", 0.0)
    per_user = {}
    if kind == "gat-bpr":
        from bench.peers import per_user_lists

        test = learner.protocol.evaluate(served_scores, "test", 10)
        per_user = {"test_per_user": per_user_lists(test.per_user)}
    name = ENCORE_RANKING if kind == "gat-bpr" else ENCORE_RATING
    return {
        "model": name,
        "val": final["val"],
        "test": final["test"],
        "train_seconds": time.perf_counter() - started,
        # Training steps only, as the peers' s/epoch (val is evaluated every epoch on top).
        "seconds_per_epoch": final["step_seconds"] / max(epochs, 1),
        # The served model exists once the blend is chosen: its seconds count too.
        "time_to_best_val_seconds": final["seconds_to_best"] + blend_seconds,
        "item_item": final.get("item_item"),
        "epochs": epochs,
        "best_epoch": final["best_epoch"],
        "config": config.to_dict(),
        **per_user,
    }


def run_one(
    dataset: str, model: str, seed: int, device: str = "cpu", precision: str = "fp32"
) -> dict[str, Any]:
    """In the child process: load, split, train, score."""
    from bench.datasets import load_dataset
    from bench.peers import RANKING_PEERS, RATING_PEERS, WEIGHTED_PEERS
    from models_src.data import split_interactions

    data = load_dataset(dataset, weights=model in WEIGHTED_PEERS)
    split = split_interactions(data, "hash", VAL_RATIO, TEST_RATIO)
    arithmetic = {"precision": precision} if precision != "fp32" else None
    if model == ENCORE_RANKING:
        result = encore_model(split, "gat-bpr", seed, overrides=arithmetic, device=device)
    elif model == ENCORE_RATING:
        result = encore_model(split, "rating", seed, overrides=arithmetic, device=device)
    elif model == LIGHTGCN:
        result = RANKING_PEERS[model](split, seed=seed, device=device, precision=precision)
    else:
        result = {**RANKING_PEERS, **RATING_PEERS}[model](split, seed=seed)
    result["peak_rss_mb"] = peak_rss_mb()
    result["dataset"] = dataset
    if model in ON_DEVICE and (device != "cpu" or precision != "fp32"):
        result.update(device=device, precision=precision, **device_memory(device))
    return result


def device_memory(device: str) -> dict[str, Any]:
    """The GPU's name and this process's peak CUDA memory (on CUDA; nothing elsewhere)."""
    import torch

    if torch.device(device).type != "cuda":
        return {}
    return {
        "device_name": torch.cuda.get_device_name(device),
        "peak_cuda_mb": torch.cuda.max_memory_allocated(device) / 2**20,
    }


def in_child(
    dataset: str, model: str, seed: int, device: str = "cpu", precision: str = "fp32"
) -> dict[str, Any]:
    args = ["--child", dataset, model, "--seed", str(seed), "--device", device]
    return run_child(
        "bench.bench_train", [*args, "--precision", precision], {"model": model, "dataset": dataset}
    )


def plan(datasets: list[str] | None, models: list[str] | None) -> list[tuple[str, str]]:
    from bench.datasets import WEIGHTED, available
    from bench.peers import RANKING_PEERS, RATING_PEERS, WEIGHTED_PEERS

    jobs = []
    for table, peers, encore in (
        (RANKING_DATASETS, RANKING_PEERS, ENCORE_RANKING),
        (RATING_DATASETS, RATING_PEERS, ENCORE_RATING),
    ):
        for name, fallback in table.items():
            chosen = name if available(name) else fallback
            if datasets and chosen not in datasets:
                continue
            for model in [*peers, encore]:
                if model in WEIGHTED_PEERS and chosen not in WEIGHTED:
                    continue
                if not models or model in models:
                    jobs.append((chosen, model))
    return list(dict.fromkeys(jobs))


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


GOAL_RATIO = 1.05  # issue 13: GAT-BPR's test Recall@10 and NDCG@10 >= 1.05x the best peer
ANCHORS = [
    "Published anchors (other splits and protocols, so not comparable row by row):"
    " RecBole-GNN reports LightGCN on Last.fm at Recall@10 0.2064 / NDCG@10 0.1972; on ML-1M"
    " XSimGCL beats LightGCN by about 14 % Recall@10.",
]


def mean_and_se(values: list[float]) -> tuple[float, float]:
    """The mean over users and its standard error (sample std / sqrt(n))."""
    array = np.asarray(values, dtype=float)
    if len(array) < 2:
        return float(array.mean()) if len(array) else float("nan"), float("nan")
    return float(array.mean()), float(array.std(ddof=1) / np.sqrt(len(array)))


def _with_se(result: dict, metric: str) -> str:
    per_user = result.get("test_per_user", {}).get(metric)
    if not per_user:
        return _fmt(result["test"][metric])
    return f"{result['test'][metric]:.4f} ± {mean_and_se(per_user)[1]:.4f}"


def paired_difference(encore: dict, peer: dict, metric: str) -> str:
    """Encore minus the peer, user by user (same users in the same order), ± its standard error:
    the margin is above noise when it is several standard errors from zero."""
    ours = encore.get("test_per_user", {}).get(metric)
    theirs = peer.get("test_per_user", {}).get(metric)
    if not ours or not theirs or len(ours) != len(theirs):
        return "-"
    mean, se = mean_and_se(list(np.asarray(ours) - np.asarray(theirs)))
    return f"{mean:+.4f} ± {se:.4f}"


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    return None if ours is None or not theirs else ours / theirs


def _encore_and_peers(ranking: list[dict]) -> Iterator[tuple[str, dict, dict[str, dict]]]:
    """Per dataset (in run order) with both: (dataset, GAT-BPR's row, the peers' rows by name)."""
    for dataset in dict.fromkeys(r["dataset"] for r in ranking):
        rows = {r["model"]: r for r in ranking if r["dataset"] == dataset}
        encore = rows.pop(ENCORE_RANKING, None)
        if encore is not None and rows:
            yield dataset, encore, rows


def comparison(ranking: list[dict]) -> list[str]:
    """Per dataset: GAT-BPR against the strongest peer on each test metric (the peer with the
    highest test value, the hardest comparison), and its speed against PyG LightGCN's."""
    lines = [
        f"## Encore GAT-BPR against the best peer (goal: ≥ {GOAL_RATIO}× on both metrics,"
        " time to best val ≤ LightGCN's, s/epoch ≤ 2× LightGCN's)",
        "",
        "| dataset | metric | best peer | GAT-BPR / best | paired difference ± se | goal met |",
        "|---|---|---|---:|---:|---|",
    ]
    speed = [
        "",
        "| dataset | time to best val: GAT-BPR / LightGCN | s/epoch: GAT-BPR / LightGCN |"
        " peak RSS MB: GAT-BPR / LightGCN |",
        "|---|---:|---:|---:|",
    ]
    for dataset, encore, rows in _encore_and_peers(ranking):
        for metric in ("recall@10", "ndcg@10"):
            best = max(rows.values(), key=lambda r: r["test"][metric])
            ratio = _ratio(encore["test"][metric], best["test"][metric])
            met = "yes" if ratio is not None and ratio >= GOAL_RATIO else "no"
            lines.append(
                f"| {dataset} | {metric} | {best['model']} ({best['test'][metric]:.4f}) |"
                f" {_fmt(ratio, 3)} | {paired_difference(encore, best, metric)} | {met} |"
            )
        lightgcn = rows.get("LightGCN (PyG)")
        if lightgcn:
            cells = [
                _fmt(_ratio(encore.get(key), lightgcn.get(key)), 2)
                for key in ("time_to_best_val_seconds", "seconds_per_epoch", "peak_rss_mb")
            ]
            speed.append(f"| {dataset} | {' | '.join(cells)} |")
    return lines + speed


def readme_table(results: list[dict]) -> str:
    """The docs' quality table (docs/quality.md): per dataset, GAT-BPR's test metrics next to
    the best peer's and MostPopular's, from bench/results/train.json."""
    ranking = [r for r in results if "error" not in r and "rmse" not in r.get("test", {})]
    lines = [
        "| dataset | Encore GAT-BPR Recall@10 / NDCG@10 | best peer (Recall@10) |"
        " best peer Recall@10 / NDCG@10 | GAT-BPR / best | MostPopular Recall@10 |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for dataset, encore, rows in _encore_and_peers(ranking):
        best = max(rows.values(), key=lambda r: r["test"]["recall@10"])
        ours, theirs = encore["test"], best["test"]
        popular = rows.get("MostPopular", {}).get("test", {}).get("recall@10")
        lines.append(
            f"| {dataset} | {ours['recall@10']:.4f} / {ours['ndcg@10']:.4f} | {best['model']} |"
            f" {theirs['recall@10']:.4f} / {theirs['ndcg@10']:.4f} |"
            f" {ours['recall@10'] / theirs['recall@10']:.2f}× /"
            f" {ours['ndcg@10'] / theirs['ndcg@10']:.2f}× | {_fmt(popular)} |"
        )
    return "\n".join(lines)


def rewrite_readme(path: Path, results: list[dict]) -> None:
    """Replace a page's quality table between its markers with the generated one."""
    from models_src.params import replace_marked_section

    path.write_text(replace_marked_section(path.read_text(), "quality", readme_table(results)))


def machine_line(results: list[dict]) -> str:
    """'N cores, CPU', or with the GPU the torch models ran on and their precision."""
    cores = f"{os.cpu_count()} cores"
    on_gpu = [r for r in results if r.get("device_name")]
    if not on_gpu:
        return f"{cores}, CPU"
    gpu, precision = on_gpu[0]["device_name"], on_gpu[0]["precision"]
    return f"{cores}; {', '.join(ON_DEVICE)} on {gpu} ({precision}), the other peers on CPU"


def markdown(results: list[dict]) -> str:
    lines = [
        "# Training benchmark",
        "",
        f"One fixed hash split per dataset (80/10/10 by (user, item)); full ranking over all"
        f" items, train items excluded (and val items for test); top-10. Machine: "
        f"{machine_line(results)}. Each model in its own process.",
        "",
    ]
    ranking = [r for r in results if "recall@10" in r.get("test", {}) and "rmse" not in r["test"]]
    rating = [r for r in results if "rmse" in r.get("test", {})]
    if ranking:
        lines += [
            "## Ranking",
            "",
            "Test metrics ± their standard error over test users.",
            "",
            "| dataset | model | test Recall@10 | test NDCG@10 | val Recall@10 | s/epoch |"
            " time to best val (s) | train s | peak RSS MB |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in ranking:
            lines.append(
                f"| {r['dataset']} | {r['model']} | {_with_se(r, 'recall@10')} |"
                f" {_with_se(r, 'ndcg@10')} | {_fmt(r['val']['recall@10'])} |"
                f" {_fmt(r.get('seconds_per_epoch'), 2)} |"
                f" {_fmt(r.get('time_to_best_val_seconds'), 1)} |"
                f" {_fmt(r.get('train_seconds'), 1)} | {_fmt(r.get('peak_rss_mb'), 0)} |"
            )
        lines += ["", *comparison(ranking), "", *ANCHORS]
    if rating:
        lines += [
            "",
            "## Ratings",
            "",
            "| dataset | model | test RMSE | test MAE | val RMSE | train s |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for r in rating:
            lines.append(
                f"| {r['dataset']} | {r['model']} | {_fmt(r['test']['rmse'])} |"
                f" {_fmt(r['test']['mae'])} | {_fmt(r['val']['rmse'])} |"
                f" {_fmt(r.get('train_seconds'), 1)} |"
            )
    errors = [r for r in results if "error" in r]
    for r in errors:
        lines += ["", f"- {r['dataset']} / {r['model']} failed: `{r['error'].splitlines()[-1]}`"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="*")
    parser.add_argument("--models", nargs="*")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output", "--out", default="train", help="results file stem in bench/results"
    )
    parser.add_argument(
        "--device", default="cpu", help="cpu or cuda, for Encore's models and PyG LightGCN"
    )
    parser.add_argument(
        "--precision", choices=["fp32", "bf16"], default="fp32", help="the same models' arithmetic"
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help="replace (or add) the rows of the (dataset, model) pairs run in the --out results, "
        "keeping the others, and drop rows of models no longer in the bench",
    )
    parser.add_argument("--child", nargs=2, metavar=("DATASET", "MODEL"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--readme",
        type=Path,
        help="only rewrite this page's quality table from train.json (docs/quality.md)",
    )
    args = parser.parse_args()
    if args.readme:
        rewrite_readme(args.readme, json.loads((RESULTS / "train.json").read_text()))
        return
    if args.child:
        result = run_one(*args.child, args.seed, args.device, args.precision)
        print(json.dumps(result, default=float))
        return
    jobs = plan(args.datasets, args.models)
    kept = kept_rows(args.output, jobs) if args.update else []
    results = []
    for dataset, model in jobs:
        print(f"running {model} on {dataset} ...", flush=True)
        results.append(in_child(dataset, model, args.seed, args.device, args.precision))
        # after each model: a run cut short keeps what it finished
        write(in_plan_order(kept + results), args.output)
    write(in_plan_order(kept + results), args.output)  # also when no model ran
    print(markdown(in_plan_order(kept + results)))


def kept_rows(stem: str, rerun: list[tuple[str, str]]) -> list[dict]:
    """The rows of bench/results/<stem>.json that `--update` keeps: those of models still in
    the bench (every dataset and model), other than the ones being rerun."""
    path = RESULTS / f"{stem}.json"
    if not path.exists():
        return []
    current = set(plan(None, None))
    return [
        row
        for row in json.loads(path.read_text())
        if (row["dataset"], row["model"]) in current
        and (row["dataset"], row["model"]) not in set(rerun)
    ]


def in_plan_order(rows: list[dict]) -> list[dict]:
    """Rows in the order a full run writes them (datasets, then peers before Encore)."""
    order = {job: position for position, job in enumerate(plan(None, None))}
    return sorted(rows, key=lambda row: order.get((row["dataset"], row["model"]), len(order)))


def write(results: list[dict], stem: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    save_results(stem, results, markdown(results))


if __name__ == "__main__":
    main()
