"""Batch top-10 scoring of all users x all items: onnxruntime vs torch eager vs numpy.

    python -m bench.bench_score

Catalogs: a generated 100k users x 50k items (dim 64), and the user/item counts of ml-100k and
Last.fm (dim 32). Scores do not depend on the embedding values, so the embeddings are random.
Each (catalog, engine) runs in its own process (peak RSS = VmHWM, bounded by the chunk size).
The machine's GEMM rate is measured on the same (chunk x dim) @ (dim x items) shape, and the
best engine is reported as a fraction of that arithmetic limit.
Writes bench/results/score.json and score.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
CATALOGS = {
    "generated 100k x 50k": (100_000, 50_000, 64),
    "ml-100k sizes": (943, 1_682, 32),
    "lastfm sizes": (1_892, 17_632, 32),
}
ENGINES = ("onnxruntime", "torch eager", "numpy argpartition")
CHUNK, K = 2048, 10


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def embeddings(users: int, items: int, dim: int):
    import torch

    generator = torch.Generator().manual_seed(0)
    return torch.randn(users, dim, generator=generator), torch.randn(
        items, dim, generator=generator
    )


def gemm_flops(items: int, dim: int) -> float:
    """FLOP/s of torch.mm on the scoring shape, best of 5."""
    import torch

    a, b = torch.randn(CHUNK, dim), torch.randn(dim, items)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(5))
    return 2 * CHUNK * dim * items / best


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def run_engine(catalog: str, engine: str) -> dict:
    import torch

    from models_src.onnx_export import TopKScorer, export_scorer
    from tasks.warehouse.scoring import open_session

    users, items, dim = CATALOGS[catalog]
    user_emb, item_emb = embeddings(users, items, dim)
    scorer = TopKScorer(user_emb, item_emb, K)
    exclude = np.zeros((CHUNK, items), dtype=bool)  # allocated once, as batch scoring reuses it
    if engine == "onnxruntime":
        with tempfile.TemporaryDirectory() as tmp:
            session = open_session(export_scorer(scorer, Path(tmp) / "s.onnx", {}))

            def score(batch: np.ndarray):
                return session.run(None, {"users": batch, "exclude": exclude[: len(batch)]})

            seconds = _score_all(users, score)
    elif engine == "torch eager":
        torch.set_num_threads(os.cpu_count() or 1)
        mask = torch.from_numpy(exclude)

        def score(batch: np.ndarray):
            with torch.no_grad():
                return scorer(torch.from_numpy(batch), mask[: len(batch)])

        seconds = _score_all(users, score)
    else:
        u, i = user_emb.numpy(), item_emb.numpy()

        def score(batch: np.ndarray):
            scores = u[batch] @ i.T
            scores[exclude[: len(batch)]] = -np.inf
            top = np.argpartition(-scores, K, axis=1)[:, :K]
            order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1)
            return np.take_along_axis(top, order, 1)

        seconds = _score_all(users, score)
    flops = 2 * users * items * dim / seconds
    return {
        "catalog": catalog,
        "engine": engine,
        "users": users,
        "items": items,
        "dim": dim,
        "seconds": seconds,
        "users_per_second": users / seconds,
        "flops": flops,
        "peak_rss_mb": peak_rss_mb(),
    }


def _score_all(users: int, score) -> float:
    score(np.arange(min(CHUNK, users)))  # warm-up: first-call allocations and graph setup
    started = time.perf_counter()
    for start in range(0, users, CHUNK):
        score(np.arange(start, min(start + CHUNK, users)))
    return time.perf_counter() - started


def in_child(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_score", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(results: list[dict], limits: dict[str, float]) -> str:
    lines = [
        "# Batch scoring benchmark (top-10, all users x all items)",
        "",
        f"{os.cpu_count()} cores, CPU; chunks of {CHUNK} users; each engine in its own"
        " process; GEMM limit = torch.mm on the same chunk shape.",
        "",
        "| catalog | engine | users/s | seconds | GFLOP/s | share of GEMM limit | peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        share = r["flops"] / limits[r["catalog"]]
        lines.append(
            f"| {r['catalog']} | {r['engine']} | {r['users_per_second']:,.0f} |"
            f" {r['seconds']:.2f} | {r['flops'] / 1e9:.1f} | {share:.0%} |"
            f" {r['peak_rss_mb']:.0f} |"
        )
    lines += [
        "",
        "GEMM limit (GFLOP/s): "
        + ", ".join(f"{name} {value / 1e9:.1f}" for name, value in limits.items()),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--catalog", help=argparse.SUPPRESS)
    parser.add_argument("--gemm", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gemm:
        _, items, dim = CATALOGS[args.catalog]
        print(json.dumps({"flops": gemm_flops(items, dim)}))
        return
    if args.engine:
        print(json.dumps(run_engine(args.catalog, args.engine)))
        return
    results, limits = [], {}
    for catalog in CATALOGS:
        limits[catalog] = in_child("--gemm", "--catalog", catalog)["flops"]
        for engine in ENGINES:
            print(f"{catalog}: {engine} ...", flush=True)
            results.append(in_child("--engine", engine, "--catalog", catalog))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "score.json").write_text(
        json.dumps({"results": results, "gemm_flops": limits}, indent=2)
    )
    text = markdown(results, limits)
    (RESULTS / "score.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
