"""Levers for issue 13, measured before building them: GAT-BPR's scores blended with item-item
scores, a closed-form linear graph filter (GF-CF's normalised item-item propagation, Shen et al.,
CIKM 2021, LightGCN's infinite-dimension limit) and EASE^R's learned item-item weights.

    python -m bench.bench_blend [--datasets ...]

Per dataset (bench-train's 80/10/10 hash split): GAT-BPR with the nightly defaults; the filter
s_u = r_u R~'R~ with R~ = D_u^-1/2 R D_i^-1/2; EASE^R at bench-train's lambda; each score matrix
standardised per user; the blend chosen on val. Test is shown for reading against bench-train
only. Writes bench/results/blend.json and blend.md.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.harness import save_results

DATASETS = ("ml-100k-implicit", "lastfm", "ml-latest-small-implicit")
WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)  # weight of the filter; the filter alone is a row too
# EASE^R's lambda as bench-train chose it on val (bench/results/train.json).
EASE_LAMBDA = {"ml-100k-implicit": 200.0, "lastfm": 50.0, "ml-latest-small-implicit": 200.0}


def _standardised(scores: torch.Tensor) -> torch.Tensor:
    return (scores - scores.mean(1, keepdim=True)) / scores.std(1, keepdim=True).clamp(min=1e-9)


def gat_bpr_scores(split: dict) -> torch.Tensor:
    from models_src.config import TrainConfig, tuned_defaults
    from models_src.learners import make_learner
    from models_src.trainers import AdvancedTrainer

    torch.manual_seed(0)
    config = TrainConfig.from_dict(
        {**tuned_defaults("gat-bpr"), "epochs": 100, "val_ratio": 0.1, "test_ratio": 0.1, "seed": 0}
    )
    learner = make_learner(split, config, torch.device("cpu"))
    with tempfile.TemporaryDirectory() as out:
        AdvancedTrainer(learner, config, Path(out), log=lambda line: None).fit()
    users, items = learner.item_scores()
    return users @ items.T


def filter_scores(train) -> torch.Tensor:
    """r_u R~'R~ for every user, dense (fine for these catalogues)."""
    pairs = np.unique(np.stack([train.user, train.item], axis=1), axis=0)
    r = torch.zeros(train.num_users, train.num_items)
    r[torch.from_numpy(pairs[:, 0]), torch.from_numpy(pairs[:, 1])] = 1.0
    du = r.sum(1).clamp(min=1).pow(-0.5)
    di = r.sum(0).clamp(min=1).pow(-0.5)
    normalised = du[:, None] * r * di[None, :]
    return r @ (normalised.T @ normalised)


def ease_scores(train, lam: float) -> torch.Tensor:
    """EASE^R's r_u B (bench/peers.py's closed form) at one lambda, over the whole catalogue."""
    pairs = np.unique(np.stack([train.user, train.item], axis=1), axis=0)
    r = torch.zeros(train.num_users, train.num_items)
    r[torch.from_numpy(pairs[:, 0]), torch.from_numpy(pairs[:, 1])] = 1.0
    gram = r.T @ r
    gram.diagonal().add_(lam)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(gram))
    weights = inverse / -inverse.diagonal()
    weights.diagonal().zero_()
    return r @ weights


def _blend_rows(name: str, gnn, other, split, protocol) -> dict:
    from bench.peers import ranking_eval

    rows = {}
    for weight in WEIGHTS[1:]:
        blended = gnn + weight * other
        rows[f"GAT-BPR + {weight:g} x {name}"] = ranking_eval(
            lambda users, s=blended: s[users], split, protocol=protocol
        )
    rows[f"{name} alone"] = ranking_eval(lambda users: other[users], split, protocol=protocol)
    return rows


# Sparse neighbour lists (models_src/neighbours.py, issue 35): each setting is tried alone on
# val, and the best of each kind is blended with GAT-BPR like EASE^R.
SPARSE_SETTINGS = {
    "RP3beta": [
        {"alpha": alpha, "beta": beta, "k": k}
        for alpha in (0.5, 1.0)
        for beta in (0.3, 0.5)
        for k in (50, 200)
    ],
    "ItemKNN": [{"k": k, "shrink": shrink} for k in (50, 200) for shrink in (10.0, 100.0)],
    # EASE^R pruned to the top k per item, at the dataset's dense lambda (set in `run`).
    "EASE^R top-k": [{"k": k} for k in (50, 200, 500)],
}


def sparse_rows(split, protocol, gnn, lam: float) -> tuple[dict, dict]:
    """Each sparse kind: its settings alone on val, then the best blended with GAT-BPR; also
    what each best one cost to build. Returns (rows, {kind: setting and seconds})."""
    import time

    from bench.peers import ranking_eval
    from models_src.item_item import history_matrix
    from models_src.neighbours import cosine_neighbours, ease_neighbours, rp3beta_neighbours

    train = split["train"]
    history = history_matrix(train, train.num_users, train.num_items)
    build = {
        "RP3beta": rp3beta_neighbours,
        "ItemKNN": cosine_neighbours,
        "EASE^R top-k": lambda train, **setting: ease_neighbours(train, lam=lam, **setting),
    }
    rows, chosen = {}, {}
    for kind, settings in SPARSE_SETTINGS.items():
        best = None
        for setting in settings:
            started = time.perf_counter()
            lists = build[kind](train, **setting)
            seconds = time.perf_counter() - started
            scores = lists.scores(history)
            val = ranking_eval(lambda users, s=scores: s[users], split, protocol=protocol)
            if best is None or val["val"]["recall@10"] > best[0]["val"]["recall@10"]:
                best = (val, setting, scores, seconds)
        metrics, setting, scores, seconds = best
        label = f"{kind} ({', '.join(f'{k}={v:g}' for k, v in setting.items())})"
        chosen[kind] = {"setting": setting, "build_seconds": seconds, "label": label}
        rows |= _blend_rows(label, gnn, _standardised(scores), split, protocol)
    return rows, chosen


def large_catalogue_build(
    items: int = 99_000, users: int = 7_400, interactions: int = 280_000, k: int = 200
) -> dict:
    """RP3beta's neighbour lists on a synthetic catalogue of issue 35's shape (about 7.4k users,
    99k items, 280k interactions, Zipf popularity): build seconds and the process's peak RSS,
    which a dense items x items matrix (items² x 4 bytes) would put at tens of GB."""
    import resource
    import time

    from models_src.data import Interactions
    from models_src.neighbours import ease_neighbours, rp3beta_neighbours

    rng = np.random.default_rng(0)
    popularity = 1.0 / np.arange(1, items + 1) ** 0.8
    data = Interactions(
        rng.integers(0, users, interactions),
        rng.choice(items, interactions, p=popularity / popularity.sum()),
        users,
        items,
    )
    started = time.perf_counter()
    lists = rp3beta_neighbours(data, alpha=1.0, beta=0.5, k=k)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    ease_neighbours(data, lam=200.0, k=k)
    ease_seconds = time.perf_counter() - started
    ease_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "ease_build_seconds": ease_seconds,
        "ease_peak_rss_mb": ease_peak_mb,
        "items": items,
        "users": users,
        "interactions": interactions,
        "k": k,
        "build_seconds": seconds,
        "lists_mb": (lists.indices.numel() * 8 + lists.weights.numel() * 4) / 1e6,
        "dense_matrix_gb": items * items * 4 / 1e9,
        "peak_rss_mb": peak_mb,
    }


def run(dataset: str) -> dict:
    from bench.datasets import load_dataset
    from bench.peers import ranking_eval
    from models_src.data import split_interactions
    from models_src.evaluation import Protocol

    split = split_interactions(load_dataset(dataset), "hash", 0.1, 0.1)
    protocol = Protocol(split)
    gnn = _standardised(gat_bpr_scores(split))
    linear = _standardised(filter_scores(split["train"]))
    rows = {"GAT-BPR alone": ranking_eval(lambda users: gnn[users], split, protocol=protocol)}
    rows |= _blend_rows("filter", gnn, linear, split, protocol)
    lam = EASE_LAMBDA.get(dataset, 200.0)
    rows |= _blend_rows("EASE^R", gnn, _standardised(ease_scores(split["train"], lam)), split,
                        protocol)  # fmt: skip
    sparse, built = sparse_rows(split, protocol, gnn, lam)
    rows |= sparse
    chosen = max(
        (name for name in rows if not name.endswith(" alone")),
        key=lambda name: rows[name]["val"]["recall@10"],
    )
    table = {
        name: {part: {m: m_value for m, m_value in metrics[part].items()
                      if m in ("recall@10", "ndcg@10")} for part in ("val", "test")}
        for name, metrics in rows.items()
    }  # fmt: skip
    return {"dataset": dataset, "rows": table, "chosen": chosen, "sparse": built}


def markdown(results: list[dict]) -> str:
    lines = [
        "# GAT-BPR blended with item-item scores: GF-CF's linear filter, EASE^R, and sparse"
        " neighbour lists (RP3beta, ItemKNN)",
        "",
        "Per-user standardised scores, GAT-BPR (nightly defaults) + w × item-item scores; the"
        " blend with the best **val** Recall@10 in bold. Test for reading against bench-train"
        " only.",
        "",
        "| dataset | scores | val R@10 | val N@10 | test R@10 | test N@10 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for result in results:
        for name, parts in result["rows"].items():
            label = f"**{name}**" if name == result["chosen"] else name
            lines.append(
                f"| {result['dataset']} | {label} | {parts['val']['recall@10']:.4f} |"
                f" {parts['val']['ndcg@10']:.4f} | {parts['test']['recall@10']:.4f} |"
                f" {parts['test']['ndcg@10']:.4f} |"
            )
    lines += ["", "Sparse neighbour lists chosen alone on val, and what building them took:", ""]
    for result in results:
        for built in result.get("sparse", {}).values():
            lines.append(
                f"- {result['dataset']}: {built['label']}, built in {built['build_seconds']:.1f} s"
            )
    return "\n".join(lines)


def main() -> None:
    from bench.datasets import available

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS))
    parser.add_argument(
        "--scale",
        action="store_true",
        help="Only the lists at 100k-1M items (bench/lists_scale.py).",
    )
    parser.add_argument("--items", nargs="*", type=int, help="--scale: the catalogue sizes.")
    parser.add_argument("--scale-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scale_child:
        import json

        from bench.lists_scale import measure

        print(json.dumps(measure(args.scale_child), default=float))
        return
    if args.scale:
        from bench.lists_scale import SIZES, run_scale

        print(run_scale(tuple(args.items or SIZES)))
        return
    large = large_catalogue_build()  # first: the peak RSS is then this build's
    results = [run(d) for d in args.datasets if available(d)]
    text = markdown(results) + (
        f"\n\nRP3beta's lists on a synthetic catalogue of {large['items']:,} items,"
        f" {large['users']:,} users, {large['interactions']:,} interactions (k={large['k']}):"
        f" built in {large['build_seconds']:.0f} s, {large['lists_mb']:.0f} MB of lists (a dense"
        f" matrix: {large['dense_matrix_gb']:.0f} GB), peak RSS {large['peak_rss_mb']:,.0f} MB;"
        f" EASE^R's top-k lists through its users x users form in"
        f" {large['ease_build_seconds']:.0f} s, peak RSS {large['ease_peak_rss_mb']:,.0f} MB."
    )
    save_results("blend", {"datasets": results, "large_catalogue": large}, text)
    print(text)


if __name__ == "__main__":
    main()
