"""The blend's neighbour lists at 100k to 1M items (issue 35): what building, shipping and
scoring them costs as the catalogue grows, on a synthetic catalogue of the issue's shape (its
7.4k users x 99k items x 280k interactions scaled with the items; Zipf popularity, exponent
0.8).

Per size, in a child process of its own (so its peak RSS is its own):
- RP3beta's lists built (the candidate at every size; EASE^R's only where its inverse fits);
- the ONNX scorer exported with dim-32 embeddings, without and with the lists: file sizes;
- onnxruntime scoring users/s (batches of 64 users, their histories as the exclusion mask),
  embeddings alone and blended.
Then the build's growth exponent over the sizes (log time ratio / log items ratio).

    python -m bench.bench_blend --scale [--items 100000 300000 1000000]

writes bench/results/blend_scale.{json,md}.
"""

from __future__ import annotations

import math
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.harness import run_child, save_results, table_row

SIZES = (100_000, 300_000, 1_000_000)
USERS_PER_ITEM = 7_400 / 99_000
INTERACTIONS_PER_ITEM = 280_000 / 99_000
DIM = 32
BATCH = 64
SCORED_BATCHES = 8


def synthetic(items: int, seed: int = 0):
    from models_src.data import Interactions

    rng = np.random.default_rng(seed)
    users, interactions = int(items * USERS_PER_ITEM), int(items * INTERACTIONS_PER_ITEM)
    popularity = 1.0 / np.arange(1, items + 1) ** 0.8
    item = rng.choice(items, interactions, p=popularity / popularity.sum())
    return Interactions(rng.integers(0, users, interactions), item, users, items)


def _users_per_second(path: Path, data, rng) -> float:
    """onnxruntime's scoring rate over SCORED_BATCHES batches of BATCH random users."""
    from models_src.item_item import history_matrix
    from tasks.score.scoring import open_session

    session = open_session(path)
    history = history_matrix(data, data.num_users, data.num_items)
    batches = [rng.choice(data.num_users, BATCH, replace=False) for _ in range(SCORED_BATCHES)]
    masks = [history[users].toarray() > 0 for users in batches]
    session.run(None, {"users": batches[0], "exclude": masks[0]})  # warm-up
    started = time.perf_counter()
    for users, mask in zip(batches, masks, strict=True):
        session.run(None, {"users": users, "exclude": mask})
    return BATCH * SCORED_BATCHES / (time.perf_counter() - started)


def measure(items: int, k: int = 200) -> dict:
    """One catalogue size: build, sizes, scoring rates (run in a child process)."""
    from models_src.neighbours import rp3beta_neighbours
    from models_src.onnx_export import TopKScorer, export_scorer, external_data_path

    data = synthetic(items)
    started = time.perf_counter()
    lists = rp3beta_neighbours(data, alpha=1.0, beta=0.5, k=k)
    build_seconds = time.perf_counter() - started
    build_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    torch.manual_seed(0)
    user_emb, item_emb = torch.randn(data.num_users, DIM), torch.randn(items, DIM)
    result = {"items": items, "users": data.num_users, "interactions": len(data), "k": lists.k}
    result |= {"build_seconds": build_seconds, "build_peak_rss_mb": build_peak_mb}
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as folder:
        for name, extra in (("alone", {}), ("blended", {"neighbours": lists, "blend_weight": 0.5})):
            path = Path(folder) / f"{name}.onnx"
            export_scorer(TopKScorer(user_emb, item_emb, 10, **extra), path, {})
            files = (path, external_data_path(path))
            result[f"{name}_mb"] = sum(f.stat().st_size for f in files) / 1e6
            result[f"{name}_users_per_s"] = _users_per_second(path, data, rng)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def growth_exponent(rows: list[dict]) -> float | None:
    """log(build time ratio) / log(items ratio) between the smallest and largest size."""
    if len(rows) < 2:
        return None
    first, last = rows[0], rows[-1]
    return math.log(last["build_seconds"] / first["build_seconds"]) / math.log(
        last["items"] / first["items"]
    )


def markdown(rows: list[dict], exponent: float | None) -> str:
    lines = [
        "# The blend's neighbour lists from 100k to 1M items",
        "",
        "`python -m bench.bench_blend --scale` (bench/lists_scale.py), this machine (2 cores), one"
        " child process per size, one run. Synthetic catalogue of issue 35's shape (users and"
        " interactions in proportion to 7.4k x 99k x 280k, Zipf 0.8); RP3beta's lists (k 200,"
        " capped at 100M cells); the ONNX scorer with dim-32 embeddings; onnxruntime scoring"
        f" {SCORED_BATCHES} batches of {BATCH} users with their histories.",
        "",
        "| items | users | interactions | k | build (s) | build peak RSS (MB) | scorer alone (MB)"
        " | with lists (MB) | users/s alone | users/s blended | blended / alone |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            table_row(
                f"{r['items']:,}",
                f"{r['users']:,}",
                f"{r['interactions']:,}",
                r["k"],
                f"{r['build_seconds']:.1f}",
                f"{r['build_peak_rss_mb']:,.0f}",
                f"{r['alone_mb']:,.0f}",
                f"{r['blended_mb']:,.0f}",
                f"{r['alone_users_per_s']:,.0f}",
                f"{r['blended_users_per_s']:,.0f}",
                f"{r['blended_users_per_s'] / r['alone_users_per_s']:.2f}x",
            )  # fmt: skip
        )
    if exponent is not None:
        lines += ["", f"Growth exponent of the build, {rows[0]['items']:,} -> {rows[-1]['items']:,}"
                  f" items: {exponent:.2f}."]  # fmt: skip
    return "\n".join(lines)


def run_scale(sizes: tuple[int, ...] = SIZES) -> str:
    rows = [run_child("bench.bench_blend", ["--scale-child", str(items)]) for items in sizes]
    exponent = growth_exponent(rows)
    text = markdown(rows, exponent)
    save_results("blend_scale", {"sizes": rows, "growth_exponent": exponent}, text)
    return text
