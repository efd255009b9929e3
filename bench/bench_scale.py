"""The nightly run at growing sizes on this machine, with the Dask task runner.

    python -m bench.bench_scale                           (make bench-scale: 1M, 3M, 10M listens)
    python -m bench.bench_scale --sizes 100000 300000     (to try it out)

For each size (listens; ratings a fifth of them):
1. Generates the listens (about 200k users, 100k tracks) and ratings with the sample generator,
   one file per day, into a scratch data home (reused when it is already there).
2. Runs the whole `nightly-retrain` flow (ingest, validation, export, both models trained side
   by side on a 2-worker LocalCluster, ONNX, gate, batch scoring by user ranges) with an
   ephemeral Prefect server, and samples the RSS of every process of the tree (flow, Prefect
   server, Dask workers) every 0.5 s: wall time per stage, and per stage the largest process and
   the whole tree at their peaks while the stage ran (the two model branches run at once, so a
   stage's peak includes the other branch's memory at that moment).
3. At the largest size, re-scores the GAT-BPR champion with the `batch-score` flow on 1 and then
   2 Dask workers (each worker one thread, 2 user ranges per worker) and in-process.

Then fits time ∝ rows^b per stage (least squares on log-log over the sizes; rows = listens +
ratings) and the same for peak memory. Target: b <= 1.1 for every stage.

The gate runs as a user meets it (a few epochs may lose to a baseline; whichever version serves
is the one scored). Writes bench/results/scale.json and scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from bench.harness import RESULTS, save_results

DAYS = 10
SIZES = (1_000_000, 3_000_000, 10_000_000)
GROWTH_TARGET = 1.1
SCALE_PARAMS = {
    # The nightly's GAT-BPR (LightGCN propagation over the full graph, 128 channels, 3 layers)
    # for one epoch of 8 full-graph steps, with 4 negatives per positive: each step costs in
    # proportion to the graph, so this keeps the 10M night within the bench's hour while every
    # stage still grows with the data as the nightly's does (a real night runs up to 256 steps
    # per epoch and stops early).
    "gat_bpr": {"epochs": 1, "patience": 1, "max_steps_per_epoch": 8, "negatives": 4},
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
        self.samples: list[tuple[float, float, float]] = []  # (time, tree MB, largest MB)
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while self.running:
            total, largest = 0.0, 0.0
            for proc in [self.root, *self.root.children(recursive=True)]:
                try:
                    rss = proc.memory_info().rss / 2**20
                    name = " ".join(proc.cmdline()[:4])[-90:]
                except psutil.Error:
                    continue
                total, largest = total + rss, max(largest, rss)
                if rss > self.peaks.get(proc.pid, ("", 0.0))[1]:
                    self.peaks[proc.pid] = (name, rss)
            self.tree_peak = max(self.tree_peak, total)
            self.samples.append((time.time(), total, largest))
            time.sleep(self.every)

    def __enter__(self) -> RssSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()

    def stage_peaks(self, windows: Iterable[tuple[str, float, float]]) -> dict[str, dict]:
        """Per stage: the largest process and the whole tree at their peaks in its windows."""
        peaks: dict[str, dict] = {}
        for stage, start, end in windows:
            inside = [(tree, one) for t, tree, one in self.samples if start <= t <= end]
            if not inside:
                continue
            peak = peaks.setdefault(stage, {"largest_mb": 0.0, "tree_mb": 0.0})
            peak["largest_mb"] = max(peak["largest_mb"], max(one for _, one in inside))
            peak["tree_mb"] = max(peak["tree_mb"], max(tree for tree, _ in inside))
        return peaks

    def report(self) -> list[dict]:
        rows = [{"pid": pid, "process": n, "peak_rss_mb": r} for pid, (n, r) in self.peaks.items()]
        return sorted(rows, key=lambda row: -row["peak_rss_mb"])


def world_configs(listens: int, ratings: int) -> dict:
    """The generator's worlds of this benchmark: about 200k users and 100k tracks (2,000
    artists) for the listens, 100k users and 20k movies for the ratings, over DAYS days."""
    from models_src.sample_data import SampleConfig

    return {
        "listens": SampleConfig(
            seed=42, n_users=200_000, n_items=100_000, n_groups=2_000,
            events_per_day=listens // DAYS, join_horizon_days=DAYS,
        ),
        "ratings": SampleConfig(
            seed=43, n_users=100_000, n_items=20_000, n_groups=18,
            events_per_day=ratings // DAYS, join_horizon_days=DAYS,
        ),
    }  # fmt: skip


def generate(home: Path, listens: int, ratings: int) -> dict:
    from models_src.sample_data import write_sample_days

    started = time.perf_counter()
    for kind, config in world_configs(listens, ratings).items():
        write_sample_days(home / "landing" / f"sample-{kind}", kind, config, range(DAYS))
    return {"seconds": time.perf_counter() - started}


def night(home: Path, workers: int) -> dict:
    from flows.nightly import nightly_retrain
    from flows.params import NightlyParams
    from tasks.report.report import STAGE_WINDOWS

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
        "stage_peaks": sampler.stage_peaks(STAGE_WINDOWS),
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


def child(home: Path, out: Path, workers: int, rescoring: bool) -> None:
    from tasks.home import EncoreHome, configure_environment

    configure_environment(EncoreHome(home))
    results = {"night": night(home, workers)}
    results["scoring"] = [rescore(w) for w in (1, 2, 0)] if rescoring else []
    out.write_text(json.dumps(results, indent=2, default=str))


def exponent(sizes: list[float], values: list[float]) -> float | None:
    """b of values ∝ sizes^b, least squares on log-log (None below two usable points)."""
    import numpy as np

    points = [(s, v) for s, v in zip(sizes, values, strict=True) if s > 0 and v and v > 0]
    if len(points) < 2:
        return None
    x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    return float(np.polyfit(x, y, 1)[0])


def growth(runs: list[dict]) -> dict[str, dict]:
    """Per stage (and the whole night): seconds and peak MB per size, with their exponents."""
    rows = [r["listens"] + r["ratings"] for r in runs]
    stages = list(dict.fromkeys(s for r in runs for s in r["night"]["stages"]))
    table = {}
    for stage in [*stages, "whole night"]:
        if stage == "whole night":
            seconds = [r["night"]["wall_seconds"] for r in runs]
            largest = [max(p["peak_rss_mb"] for p in r["night"]["peak_rss"]) for r in runs]
            tree = [r["night"]["tree_peak_rss_mb"] for r in runs]
        else:
            seconds = [r["night"]["stages"].get(stage) for r in runs]
            peaks = [r["night"]["stage_peaks"].get(stage, {}) for r in runs]
            largest = [p.get("largest_mb") for p in peaks]
            tree = [p.get("tree_mb") for p in peaks]
        table[stage] = {
            "seconds": seconds,
            "largest_mb": largest,
            "tree_mb": tree,
            "seconds_exponent": exponent(rows, seconds),
            "largest_mb_exponent": exponent(rows, largest),
        }
    return table


def markdown(result: dict) -> str:
    n = result["night"]
    lines = [
        f"## The {result['listens']:,}-listen + {result['ratings']:,}-rating night in detail",
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
    gate, scoring = n["stages"].get("gate"), n["stages"].get("batch scoring")
    if gate is not None and scoring:
        lines.append(
            f"Gate / the same night's batch scoring: **{gate / scoring:.2f}x** ({gate:.1f} s vs"
            f" {scoring:.1f} s; target <= 1x)."
        )
    peak = max(p["peak_rss_mb"] for p in n["peak_rss"])
    lines += [
        f"Largest process peak RSS: **{peak:,.0f} MB**; all processes together at their"
        f" largest: **{n['tree_peak_rss_mb']:,.0f} MB** (targets: < 4,096 MB for the largest"
        " process, < 8,192 MB for all together)."
    ]
    return "\n".join(lines) + "\n"


def growth_markdown(result: dict) -> str:
    runs = result["runs"]
    sizes = " | ".join(f"{r['listens'] / 1e6:g}M" for r in runs)
    ruler = "|".join("---:" for _ in runs)
    lines = [
        "# The night as it grows (Dask runner, 2 workers)",
        "",
        f"Machine: 2 cores, 24 GB, CPU. Listens per size below, ratings a fifth of them;"
        f" b: the fitted exponent of time (or memory) ∝ rows^b (target b <= {GROWTH_TARGET}).",
        "",
        f"| stage | seconds: {sizes} | b | largest process MB: {sizes} | b | tree MB: {sizes} |",
        f"|---|{ruler}|---:|{ruler}|---:|{ruler}|",
    ]
    for stage, row in result["growth"].items():
        cells = [
            " | ".join(_number(v) for v in row["seconds"]),
            _exponent(row["seconds_exponent"]),
            " | ".join(_number(v) for v in row["largest_mb"]),
            _exponent(row["largest_mb_exponent"]),
            " | ".join(_number(v) for v in row["tree_mb"]),
        ]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    over = [
        stage
        for stage, row in result["growth"].items()
        if (row["seconds_exponent"] or 0) > GROWTH_TARGET
    ]
    lines += [
        "",
        "Stages growing faster than the target: " + (", ".join(over) if over else "none") + ".",
    ]
    return "\n".join(lines) + "\n"


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


def _exponent(value: float | None) -> str:
    if value is None:
        return ""
    return f"**{value:.2f}**" if value > GROWTH_TARGET else f"{value:.2f}"


def run_size(args: argparse.Namespace, listens: int, rescoring: bool) -> dict:
    """One night (in its own process) at `listens` listens and a fifth as many ratings."""
    ratings = listens // 5
    home = args.scratch / f"home-{listens}-{ratings}"
    home.mkdir(parents=True, exist_ok=True)
    from flows.cli import SAMPLE_SOURCES

    (home / "sources.toml").write_text(SAMPLE_SOURCES)
    generated = generate(home, listens, ratings)
    for stale in ("warehouse.duckdb", "warehouse.duckdb.wal"):
        (home / stale).unlink(missing_ok=True)  # every run starts from an empty warehouse
    out = args.scratch / f"result-{listens}.json"
    env = {**os.environ, "ENCORE_HOME": str(home)}
    command = [sys.executable, "-m", "bench.bench_scale", "--child", str(home), str(out),
               "--workers", str(args.workers)] + (["--rescore"] if rescoring else [])  # fmt: skip
    subprocess.run(command, check=True, env=env)
    return {
        "listens": listens,
        "ratings": ratings,
        "workers": args.workers,
        "generate": generated,
        **json.loads(out.read_text()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="Listens.")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/encore-bench-scale"))
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rescore", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.workers, args.rescore)
        return
    sizes = sorted(args.sizes)
    runs = []
    for listens in sizes:
        print(f"night at {listens:,} listens ...", flush=True)
        runs.append(run_size(args, listens, rescoring=listens == sizes[-1]))
    result = {"runs": runs, "growth": growth(runs)}
    text = growth_markdown(result) + "\n" + markdown(runs[-1])
    RESULTS.mkdir(exist_ok=True)
    name = "scale" if sizes == list(SIZES) else "scale_" + "_".join(map(str, sizes))
    save_results(name, result, text)
    print(text)


if __name__ == "__main__":
    main()
