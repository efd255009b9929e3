"""Batch top-10 scoring of all users x all items: onnxruntime vs torch eager vs numpy.

    python -m bench.bench_score

Catalogs: a generated 100k users x 50k items (dim 64), and the user/item counts of ml-100k and
Last.fm (dim 32). Scores do not depend on the embedding values, so the embeddings are random.
Each (catalog, engine) runs in its own process (peak RSS = VmHWM, bounded by the chunk size).
The machine's GEMM rate is measured on the same (chunk x dim) @ (dim x items) shape, and the
best engine is reported as a fraction of that arithmetic limit.

Export: for the same catalogs and two larger ones, the time `export_scorer` takes to write the
ONNX scorer (graph and external tables) against `np.save` of the same four tables (user and
item embeddings and biases) to the same disk; median of 7 each, after one warm-up export
(imports). The two writers alternate, each run into new files that are removed after it, so the
page cache's writeback of earlier runs falls on both alike (with 3 exports then 3 numpy writes
over the same files, the 390 MB catalogue's ratio swung from 0.5x to 3.9x between runs).
Target: export <= 2x the numpy write.
Writes bench/results/score.json and score.md.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.harness import RESULTS, run_child, save_results

CATALOGS = {
    "generated 100k x 50k": (100_000, 50_000, 64),
    "ml-100k sizes": (943, 1_682, 32),
    "lastfm sizes": (1_892, 17_632, 32),
}
ENGINES = ("onnxruntime", "torch eager", "numpy argpartition")
EXPORT_CATALOGS = {
    **CATALOGS,
    "bench-scale night sizes": (200_000, 100_000, 64),
    "generated 1M x 500k": (1_000_000, 500_000, 64),
}
EXPORT_TARGET = 2.0
EXPORT_REPEATS = 7
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
    from tasks.score.scoring import open_session

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


def run_export(catalog: str) -> dict:
    """Median seconds of export_scorer vs np.save of the same tables, in one scratch folder."""
    import torch

    from models_src.onnx_export import TopKScorer, export_scorer

    users, items, dim = EXPORT_CATALOGS[catalog]
    user_emb, item_emb = embeddings(users, items, dim)
    scorer = TopKScorer(user_emb, item_emb, K, torch.randn(users), torch.randn(items))
    tables = [scorer.user_emb, scorer.item_emb, scorer.user_bias, scorer.item_bias]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        export_scorer(scorer, folder / "warm-up.onnx", {})

        def write_numpy(run: int) -> list[Path]:
            paths = [folder / f"numpy{run}-table{n}.npy" for n in range(len(tables))]
            for path, table in zip(paths, tables, strict=True):
                np.save(path, table.numpy())
            return paths

        def write_onnx(run: int) -> list[Path]:
            graph = export_scorer(scorer, folder / f"export{run}.onnx", {})
            return [graph, graph.with_name(graph.name + ".data")]

        onnx_runs, numpy_runs = [], []
        for run in range(EXPORT_REPEATS):
            writers = [(write_onnx, onnx_runs), (write_numpy, numpy_runs)]
            for write, seconds in writers if run % 2 == 0 else writers[::-1]:
                started = time.perf_counter()
                written = write(run)
                seconds.append(time.perf_counter() - started)
                for path in written:
                    path.unlink()
        onnx_runs.sort()
        numpy_runs.sort()
    return {
        "catalog": catalog,
        "users": users,
        "items": items,
        "dim": dim,
        "tables_mb": sum(t.numel() * 4 for t in tables) / 1e6,
        "export_seconds": onnx_runs[EXPORT_REPEATS // 2],
        "numpy_seconds": numpy_runs[EXPORT_REPEATS // 2],
        "ratio": onnx_runs[EXPORT_REPEATS // 2] / numpy_runs[EXPORT_REPEATS // 2],
        "export_runs": onnx_runs,
        "numpy_runs": numpy_runs,
    }


def _score_all(users: int, score) -> float:
    score(np.arange(min(CHUNK, users)))  # warm-up: first-call allocations and graph setup
    started = time.perf_counter()
    for start in range(0, users, CHUNK):
        score(np.arange(start, min(start + CHUNK, users)))
    return time.perf_counter() - started


def in_child(*args: str) -> dict:
    # Threads as the scorer chooses them: the engines are timed at their own settings.
    return run_child("bench.bench_score", list(args), env={})


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


def export_markdown(exports: list[dict]) -> str:
    lines = [
        "## ONNX export vs writing the same tables with numpy",
        "",
        "`export_scorer` (graph + external tables, checked) against `np.save` of the user and"
        f" item embeddings and biases; median of {EXPORT_REPEATS} each (fastest-slowest in"
        " brackets), the two alternating, each run into new files, same disk.",
        "",
        "| catalog | tables MB | numpy s | export s | export / numpy |",
        "|---|---:|---:|---:|---:|",
    ]
    for e in exports:
        lines.append(
            f"| {e['catalog']} | {e['tables_mb']:,.1f} | {_spread(e, 'numpy')} |"
            f" {_spread(e, 'export')} | {e['ratio']:.2f}x |"
        )
    largest = max(exports, key=lambda e: e["tables_mb"])
    lines += [
        "",
        f"Largest catalogue: export / numpy **{largest['ratio']:.2f}x**"
        f" (target <= {EXPORT_TARGET:g}x).",
    ]
    return "\n".join(lines)


def _spread(export: dict, writer: str) -> str:
    """`writer`'s median seconds, and its fastest and slowest run when recorded."""
    median, runs = export[f"{writer}_seconds"], export.get(f"{writer}_runs")
    return f"{median:.3f}" + (f" ({min(runs):.3f}-{max(runs):.3f})" if runs else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--catalog", help=argparse.SUPPRESS)
    parser.add_argument("--gemm", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--export", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--only-export", action="store_true", help="Measure the export only (keeps scoring)."
    )
    args = parser.parse_args()
    if args.export:
        print(json.dumps(run_export(args.catalog)))
        return
    if args.gemm:
        _, items, dim = CATALOGS[args.catalog]
        print(json.dumps({"flops": gemm_flops(items, dim)}))
        return
    if args.engine:
        print(json.dumps(run_engine(args.catalog, args.engine)))
        return
    exports = [in_child("--export", "--catalog", catalog) for catalog in EXPORT_CATALOGS]
    if args.only_export:
        previous = json.loads((RESULTS / "score.json").read_text())
        results, limits = previous["results"], previous["gemm_flops"]
    else:
        results, limits = [], {}
        for catalog in CATALOGS:
            limits[catalog] = in_child("--gemm", "--catalog", catalog)["flops"]
            for engine in ENGINES:
                print(f"{catalog}: {engine} ...", flush=True)
                results.append(in_child("--engine", engine, "--catalog", catalog))
    text = markdown(results, limits) + "\n\n" + export_markdown(exports)
    save_results("score", {"results": results, "gemm_flops": limits, "export": exports}, text)
    print(text)


if __name__ == "__main__":
    main()
