"""A 10M-interaction night on this machine, with the Dask task runner.

    python -m bench.bench_scale                      (make bench-scale)
    python -m bench.bench_scale --listens 1000000 --ratings 200000     (a tenth, to try it out)

1. Generates the listens (about 200k users, 100k tracks) and ratings with the sample generator,
   one file per day, into a scratch data home (reused when it is already there).
2. Runs the whole `nightly-retrain` flow (ingest, GX validation, export, both models trained
   side by side on a 2-worker LocalCluster, ONNX, gate, batch scoring by user ranges) with an
   ephemeral Prefect server, and samples the RSS of every process of the tree (flow, Prefect
   server, Dask workers) every 0.5 s: peak RSS per process, and wall time per stage.
3. Re-scores the GAT-BPR champion with the `batch-score` flow on 1 and then 2 Dask workers (each
   worker one thread, 2 user ranges per worker) and in-process: users/s and the speed-up.

The gate's baseline floors are turned off (this measures the machinery at scale, not model
quality: a model trained for a few epochs must still be promoted so there is something to
score). Writes bench/results/scale.json and scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DAYS = 10
SCALE_PARAMS = {
    # Full-graph GAT-BPR steps over ~14M edges: one head and big batches keep a step in memory
    # and an epoch to a few steps; a few epochs are enough to measure the night.
    "gat_bpr": {"epochs": 3, "patience": 2, "batch_size": 1_000_000, "heads": 1},
    "rating": {"epochs": 5, "patience": 2, "batch_size": 65_536},
    "warm_start": False,
}


class RssSampler:
    """Peak RSS per process of this process's tree, sampled in a thread."""

    def __init__(self, every: float = 0.5) -> None:
        import psutil

        self.root, self.every = psutil.Process(), every
        self.peaks: dict[int, tuple[str, float]] = {}
        self.tree_peak = 0.0  # the largest sum over all processes at one sample
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while self.running:
            total = 0.0
            for proc in [self.root, *self.root.children(recursive=True)]:
                try:
                    rss = proc.memory_info().rss / 2**20
                    name = " ".join(proc.cmdline()[:4])[-90:]
                except psutil.Error:
                    continue
                total += rss
                if rss > self.peaks.get(proc.pid, ("", 0.0))[1]:
                    self.peaks[proc.pid] = (name, rss)
            self.tree_peak = max(self.tree_peak, total)
            time.sleep(self.every)

    def __enter__(self) -> RssSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()

    def report(self) -> list[dict]:
        rows = [{"pid": pid, "process": n, "peak_rss_mb": r} for pid, (n, r) in self.peaks.items()]
        return sorted(rows, key=lambda row: -row["peak_rss_mb"])


def generate(home: Path, listens: int, ratings: int) -> dict:
    from models_src.sample_data import SampleConfig, write_sample_days

    configs = {
        "listens": SampleConfig(
            seed=42, n_users=200_000, n_items=100_000, n_groups=2_000,
            events_per_day=listens // DAYS, join_horizon_days=DAYS,
        ),
        "ratings": SampleConfig(
            seed=43, n_users=100_000, n_items=20_000, n_groups=18,
            events_per_day=ratings // DAYS, join_horizon_days=DAYS,
        ),
    }  # fmt: skip
    started = time.perf_counter()
    for kind, config in configs.items():
        write_sample_days(home / "landing" / f"sample-{kind}", kind, config, range(DAYS))
    return {"seconds": time.perf_counter() - started}


def night(home: Path, workers: int) -> dict:
    from flows.nightly import nightly_retrain
    from flows.params import NightlyParams

    params = NightlyParams.model_validate(
        {**SCALE_PARAMS, "task_runner": {"kind": "dask", "workers": workers}}
    )
    started = time.perf_counter()
    with RssSampler() as sampler:
        state = nightly_retrain(params, return_state=True)
    result = state.result(raise_on_failure=False)
    if not isinstance(result, dict):
        raise RuntimeError(f"the night failed: {state.message}")
    return {
        "wall_seconds": time.perf_counter() - started,
        "state": state.name,
        "stages": result["timings"],
        "outcomes": [
            {
                "model": o["model"],
                "status": o["status"],
                "reason": o.get("reason"),
                "rows": (o.get("training") or {}).get("rows"),
                "epochs": (o.get("training") or {}).get("epochs_run"),
                "train_seconds": (o.get("training") or {}).get("seconds"),
                "test": (o.get("training") or {}).get("test"),
                "scoring": o.get("scoring"),
            }
            for o in result["outcomes"]
        ],
        "peak_rss": sampler.report(),
        "tree_peak_rss_mb": sampler.tree_peak,
    }


def rescore(workers: int) -> dict:
    from flows.batch_score import batch_score

    runner = {"kind": "dask", "workers": workers} if workers else {"kind": "in-process"}
    with RssSampler() as sampler:
        (result,) = batch_score(dataset="sample-listens", task_runner=runner)
    return {
        "runner": "in-process" if not workers else f"dask x{workers}",
        "users": result["users"],
        "seconds": result["seconds"],
        "range_seconds": result["scoring_seconds"],
        "ranges_wall_seconds": result["ranges_wall_seconds"],
        "users_per_second": result["users"] / result["seconds"],
        "parts": result["parts"],
        "peak_rss": sampler.report()[:3],
    }


def child(home: Path, out: Path, workers: int) -> None:
    from tasks.home import EncoreHome, configure_environment

    configure_environment(EncoreHome(home))
    results = {"night": night(home, workers)}
    results["scoring"] = [rescore(w) for w in (1, 2, 0)]
    out.write_text(json.dumps(results, indent=2, default=str))


def markdown(result: dict) -> str:
    n = result["night"]
    lines = [
        f"# A {result['listens']:,}-listen + {result['ratings']:,}-rating night (Dask runner)",
        "",
        "Machine: 2 cores, 24 GB, CPU. Nightly flow with a"
        f" {result['workers']}-worker LocalCluster; generated data ({DAYS} daily files per"
        f" dataset). Night: {n['state']}, {n['wall_seconds']:.0f} s wall (generation apart:"
        f" {result['generate']['seconds']:.0f} s).",
        "",
        "| stage | seconds |",
        "|---|---:|",
        *[f"| {stage} | {seconds:.1f} |" for stage, seconds in n["stages"].items()],
        "",
        "| model | status | epochs | train s | test Recall@10 | scored users |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for o in n["outcomes"]:
        test = o["test"] or {}
        scored = (o["scoring"] or {}).get("users", 0)
        lines.append(
            f"| {o['model']} | {o['status']} | {o['epochs']} | {o['train_seconds'] or 0:.0f} |"
            f" {test.get('recall@10', float('nan')):.4f} | {scored:,} |"
        )
    lines += ["", "Peak RSS per process (MB):", "", "| process | peak RSS MB |", "|---|---:|"]
    lines += [f"| `{p['process']}` | {p['peak_rss_mb']:,.0f} |" for p in n["peak_rss"][:8]]
    lines += [
        "",
        "Batch scoring of every user with the GAT-BPR champion (`batch-score` flow):",
        "",
        "| runner | parts | users | seconds (plan + ranges + load) | users/s | ranges phase s"
        " | ranges users/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in result["scoring"]:
        lines.append(
            f"| {s['runner']} | {s['parts']} | {s['users']:,} | {s['seconds']:.1f} |"
            f" {s['users_per_second']:,.0f} | {s['ranges_wall_seconds']:.1f} |"
            f" {s['users'] / s['ranges_wall_seconds']:,.0f} |"
        )
    by = {s["runner"]: s for s in result["scoring"]}
    speedup = by["dask x2"]["users_per_second"] / by["dask x1"]["users_per_second"]
    ranges = by["dask x1"]["ranges_wall_seconds"] / by["dask x2"]["ranges_wall_seconds"]
    lines += [
        "",
        f"Speed-up from 1 to 2 Dask workers: **{speedup:.2f}x** end to end, {ranges:.2f}x in the"
        " ranges phase (workers score; the flow's process plans and loads) (target >= 1.6x).",
    ]
    peak = max(p["peak_rss_mb"] for p in n["peak_rss"])
    lines += [
        f"Largest process peak RSS: **{peak:,.0f} MB**; all processes together at their"
        f" largest: **{n['tree_peak_rss_mb']:,.0f} MB** (target < 16,384 MB)."
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listens", type=int, default=10_000_000)
    parser.add_argument("--ratings", type=int, default=2_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/encore-bench-scale"))
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.workers)
        return
    home = args.scratch / f"home-{args.listens}-{args.ratings}"
    home.mkdir(parents=True, exist_ok=True)
    from flows.cli import SAMPLE_SOURCES

    (home / "sources.toml").write_text(SAMPLE_SOURCES)
    generated = generate(home, args.listens, args.ratings)
    for stale in ("warehouse.duckdb", "warehouse.duckdb.wal"):
        (home / stale).unlink(missing_ok=True)  # every run starts from an empty warehouse
    out = args.scratch / "result.json"
    env = {**os.environ, "ENCORE_HOME": str(home)}
    subprocess.run(
        [sys.executable, "-m", "bench.bench_scale", "--child", str(home), str(out),
         "--workers", str(args.workers)],
        check=True, env=env,
    )  # fmt: skip
    result = {
        "listens": args.listens,
        "ratings": args.ratings,
        "workers": args.workers,
        "generate": generated,
        **json.loads(out.read_text()),
    }
    RESULTS.mkdir(exist_ok=True)
    suffix = "" if args.listens == 10_000_000 else f"_{args.listens}"
    (RESULTS / f"scale{suffix}.json").write_text(json.dumps(result, indent=2))
    (RESULTS / f"scale{suffix}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
