"""GAT-BPR's levers, one at a time, on the training benchmark's split: what each buys on val.

    python -m bench.bench_ablation                                  (make bench-ablation)
    python -m bench.bench_ablation --datasets lastfm --variants "dim 64" "2 layers"

Every variant is the nightly default as it stood before the ablation (PREVIOUS_DEFAULT) with a
few knobs changed, trained by the AdvancedTrainer (early stopping and the LR schedule on val) on
the same fixed 80/10/10 hash split as `make bench-train`, next to implicit's ALS (bench-train's
peer, its own small grid on val) as the bar to clear. Choices are made on **val**; test is
printed beside it only so the table can be read against bench-train's. Each (dataset, variant)
runs in its own process, so times are not shared. Results merge into
bench/results/ablation.json (a re-run of one variant replaces its row) and ablation.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench import bench_train
from bench.harness import RESULTS, run_child, save_results
from models_src.config import tuned_defaults

DATASETS = ["ml-100k-implicit", "lastfm"]
REFERENCE = "implicit ALS"  # the strongest peer of bench-train on both datasets

# Every variant is the nightly default as it stood before this ablation, with the named knobs
# changed, so a row keeps meaning what it measured when the defaults move (the current default
# is marked in the table).
PREVIOUS_DEFAULT: dict[str, Any] = {
    "lr": 0.05,
    "batch_size": 32768,
    "negatives": 8,
    "embedding_dim": 32,
    "heads": 4,
    "num_layers": 1,
    "l2": 1e-3,
    "attention": True,
}
# Today's values of the same knobs (bench/results/tune.md): a row measured with them is dropped
# from the table when the defaults move (see `merge`).
TODAYS_DEFAULT: dict[str, Any] = {
    name: tuned_defaults("gat-bpr")[name] for name in PREVIOUS_DEFAULT
}
VARIANTS: dict[str, dict[str, Any]] = {
    "previous default": {},
    "no attention (LightGCN propagation)": {"attention": False},
    "no attention, dim 64, 2 layers": {"attention": False, "embedding_dim": 64, "num_layers": 2},
    "no attention, dim 64, 2 layers, l2 1e-4": {
        "attention": False,
        "embedding_dim": 64,
        "num_layers": 2,
        "l2": 1e-4,
    },
    "no attention, dim 64, 2 layers, l2 3e-4": {
        "attention": False,
        "embedding_dim": 64,
        "num_layers": 2,
        "l2": 3e-4,
    },
    "no attention, dim 64, 2 layers, l2 1e-3": {
        "attention": False,
        "embedding_dim": 64,
        "num_layers": 2,
        "l2": 1e-3,
    },
    "no attention, dim 64, 2 layers, l2 1e-5": {
        "attention": False,
        "embedding_dim": 64,
        "num_layers": 2,
        "l2": 1e-5,
    },
    "no attention, dim 64, 2 layers, l2 1e-4, 16 negatives": {
        "attention": False,
        "embedding_dim": 64,
        "num_layers": 2,
        "l2": 1e-4,
        "negatives": 16,
    },
    "dim 64, 2 layers, l2 1e-4": {"embedding_dim": 64, "num_layers": 2, "l2": 1e-4},
    "no attention, dim 64, 3 layers, lr 0.01": {
        "attention": False,
        "embedding_dim": 64,
        "num_layers": 3,
        "lr": 0.01,
    },
    "softmax τ 0.1": {"loss": "softmax", "temperature": 0.1},
    "softmax τ 0.1, 64 negatives": {"loss": "softmax", "temperature": 0.1, "negatives": 64},
    "XSimGCL 0.1/0.1": {"cl_weight": 0.1, "cl_eps": 0.1},
    # Today's defaults on the whole graph, and on subgraphs sampled around each batch (what
    # `minibatch: auto` falls back to when the whole graph does not fit): what sampling costs.
    "nightly default, full graph": {**TODAYS_DEFAULT, "minibatch": "full"},
    "nightly default, sampled subgraphs": {**TODAYS_DEFAULT, "minibatch": "sampled"},
}


def knobs(variant: str) -> dict[str, Any]:
    return {**PREVIOUS_DEFAULT, **VARIANTS[variant]}


def is_nightly_default(variant: str) -> bool:
    current = tuned_defaults("gat-bpr")
    return all(current.get(name, value) == value for name, value in knobs(variant).items())


def run_variant(dataset: str, variant: str, seed: int) -> dict[str, Any]:
    """In the child process: the split, one training run, its metrics."""
    from bench.bench_train import TEST_RATIO, VAL_RATIO, encore_model, peak_rss_mb
    from bench.datasets import load_dataset
    from models_src.data import split_interactions

    data = load_dataset(dataset)
    split = split_interactions(data, "hash", VAL_RATIO, TEST_RATIO)
    result = encore_model(split, "gat-bpr", seed, overrides=knobs(variant))
    result.pop("test_per_user", None)  # bench-train's paired tests need it; the table does not
    return {**result, "dataset": dataset, "variant": variant, "peak_rss_mb": peak_rss_mb()}


def in_child(dataset: str, variant: str, seed: int) -> dict[str, Any]:
    args = ["--child", dataset, variant, "--seed", str(seed)]
    return run_child("bench.bench_ablation", args, {"dataset": dataset, "variant": variant})


ABLATION_INTRO = """\
# GAT-BPR ablation

Each row: the nightly default as it stood before this ablation (GATConv attention, 4
heads, dim 32, 1 layer, L2 1e-3, lr 0.05, 32768-pair batches, 8 negatives) with the
named knobs changed; AdvancedTrainer with early stopping on val Recall@10 (patience 5,
LR schedule); fixed 80/10/10 hash split as in bench-train; 2-core CPU, one process per
row. Chosen on **val**; test shown only to read against bench-train. Δ val: relative to
the dataset's `previous default` row. **bold**: the nightly default when the table was
made (today's: bench/results/tune.md). Single runs:
repeated runs of one row moved val Recall@10 by about 1 % (PyG's scatter sums are not
order-deterministic on CPU threads), so differences under ~2 % are noise."""


def markdown(rows: list[dict], references: list[dict]) -> str:
    lines = [
        *ABLATION_INTRO.splitlines(),
        "",
        "| dataset | variant | val R@10 | Δ val | val N@10 | test R@10 | test N@10 | s/epoch"
        " | time to best (s) | best epoch |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = {r["dataset"]: r["val"]["recall@10"] for r in rows if r["variant"] == "previous default"}
    order = {name: i for i, name in enumerate(VARIANTS)}
    for row in sorted(rows, key=lambda r: (r["dataset"], order.get(r["variant"], 99))):
        val, test = row["val"], row["test"]
        ref = base.get(row["dataset"])
        delta = f"{val['recall@10'] / ref - 1:+.1%}" if ref else "-"
        name = row["variant"]
        name = f"**{name}**" if name in VARIANTS and is_nightly_default(name) else name
        lines.append(
            f"| {row['dataset']} | {name} | {val['recall@10']:.4f} | {delta}"
            f" | {val['ndcg@10']:.4f} | {test['recall@10']:.4f} | {test['ndcg@10']:.4f}"
            f" | {row['seconds_per_epoch']:.2f} | {row['time_to_best_val_seconds']:.1f}"
            f" | {row['best_epoch']} |"
        )
    lines += ["", "| dataset | reference | val R@10 | val N@10 | test R@10 | test N@10 |"]
    lines.append("|---|---|---:|---:|---:|---:|")
    for ref in sorted(references, key=lambda r: r["dataset"]):
        val, test = ref["val"], ref["test"]
        lines.append(
            f"| {ref['dataset']} | {ref['model']} | {val['recall@10']:.4f} | {val['ndcg@10']:.4f}"
            f" | {test['recall@10']:.4f} | {test['ndcg@10']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def load(path: Path) -> dict[str, list[dict]]:
    if not path.exists():
        return {"rows": [], "references": []}
    return json.loads(path.read_text())


def merge(old: list[dict], fresh: list[dict]) -> list[dict]:
    """Earlier rows, with those of the variants re-run replaced (a variant whose knobs changed
    since is dropped: its old row would no longer say what it measured)."""
    keys = {(r["dataset"], r["variant"]) for r in fresh}
    kept = [
        r
        for r in old
        if (r["dataset"], r["variant"]) not in keys
        and r.get("overrides") == VARIANTS.get(r["variant"])
    ]
    return kept + fresh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="*", default=DATASETS)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", nargs=2, metavar=("DATASET", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_variant(*args.child, args.seed), default=float))
        return
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    from dataclasses import fields

    from models_src.config import TrainConfig

    known = {f.name for f in fields(TrainConfig)}
    for name in args.variants:  # TrainConfig.from_dict drops unknown keys: catch a typo here
        if set(VARIANTS[name]) - known:
            parser.error(f"variant {name!r} sets unknown knobs {set(VARIANTS[name]) - known}")
    fresh, references = [], []
    for dataset in args.datasets:
        reference = bench_train.in_child(dataset, REFERENCE, args.seed)
        reference.pop("test_per_user", None)
        references.append(reference)
        for variant in args.variants:
            row = in_child(dataset, variant, args.seed)
            if "error" in row:
                print(f"{dataset} / {variant}: FAILED\n{row['error']}", file=sys.stderr)
                continue
            row["overrides"] = VARIANTS[variant]
            fresh.append(row)
            print(
                f"{dataset:18s} {variant:24s} val R@10 {row['val']['recall@10']:.4f}"
                f" N@10 {row['val']['ndcg@10']:.4f}  {row['seconds_per_epoch']:.2f} s/epoch"
                f"  best epoch {row['best_epoch']}",
                flush=True,
            )
    RESULTS.mkdir(exist_ok=True)
    stored = load(RESULTS / "ablation.json")
    rows = merge(stored["rows"], fresh)
    ran = {r["dataset"] for r in references}
    references += [r for r in stored["references"] if r["dataset"] not in ran]
    results = {"rows": rows, "references": references}
    save_results("ablation", results, markdown(rows, references))


if __name__ == "__main__":
    main()
