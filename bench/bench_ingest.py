"""Ingest throughput with full accounting vs a bare DuckDB `read_csv` load of the same file.

    python -m bench.bench_ingest --rows 10000000

Generates a listens file with the sample generator (once; reused when present), then runs each
measurement in its own child process so that each peak RSS is its own:
- bare: `CREATE TABLE AS SELECT * FROM read_csv(...)` with the same explicit column types;
- encore: `ingest_file` (sha256, line count, rejects, line numbers, dedupe, id maps, accounting);
- validate: the snapshot's validation (row rules as DuckDB SQL, the table suite in GX), apart:
  not a load, but held to at most half the ingest's time and under 1 GB peak RSS.
Writes bench/results/ingest.json and bench/results/ingest.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

from bench.harness import RESULTS, run_child, save_results

BARE_COLUMNS = (
    "{'user_id': 'VARCHAR', 'track_id': 'VARCHAR', 'artist_id': 'VARCHAR', "
    "'played_at': 'TIMESTAMP', 'ms_played': 'DOUBLE'}"
)


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the
    parent across fork+exec, so a child would report the generator's peak as its own."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generate(path: Path, rows: int) -> dict:
    from models_src.sample_data import SampleConfig, SampleWorld, write_events

    days = 10
    config = SampleConfig(
        seed=42, n_users=200_000, n_items=100_000, n_groups=2_000, events_per_day=rows // days
    )
    started = time.perf_counter()
    written = write_events(SampleWorld(config), "listens", range(days), path)
    return {"rows": written, "seconds": time.perf_counter() - started, "bytes": path.stat().st_size}


def run_bare(path: Path, workdir: Path, memory_limit: str) -> dict:
    from tasks.warehouse.schema import connect

    con = connect(workdir / "bare.duckdb", memory_limit=memory_limit, temp_dir=workdir / "tmp")
    started = time.perf_counter()
    con.execute(
        f"CREATE TABLE listens AS SELECT * FROM read_csv('{path}', header=true, "
        f"columns={BARE_COLUMNS}, auto_detect=false)"
    )
    con.execute("CHECKPOINT")
    seconds = time.perf_counter() - started
    rows = con.execute("SELECT count(*) FROM listens").fetchone()[0]
    con.close()
    return {"rows": rows, "seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def run_encore(path: Path, workdir: Path, memory_limit: str) -> dict:
    from tasks.ingest.load import ingest_file
    from tasks.ingest.snapshots import open_snapshot, register_dataset
    from tasks.ingest.sources import PRESETS, DatasetSpec
    from tasks.warehouse.schema import connect

    con = connect(workdir / "encore.duckdb", memory_limit=memory_limit, temp_dir=workdir / "tmp")
    spec = DatasetSpec("listens", PRESETS["encore-listens"], path)
    register_dataset(con, spec)
    snapshot_id = open_snapshot(con, "listens")
    started = time.perf_counter()
    result = ingest_file(con, spec, path, snapshot_id)
    con.execute("CHECKPOINT")
    seconds = time.perf_counter() - started
    con.close()
    return {
        "rows": result.loaded,
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "snapshot_id": snapshot_id,
        "accounting": {
            k: getattr(result, k) for k in ("rows_read", "loaded", "duplicates", "rejected")
        },
        "accounting_holds": result.accounting_holds(),
    }


def run_validate(workdir: Path, snapshot_id: int, memory_limit: str) -> dict:
    from tasks.validate.validation import validate_snapshot
    from tasks.warehouse.schema import connect

    con = connect(workdir / "encore.duckdb", memory_limit=memory_limit, temp_dir=workdir / "tmp")
    started = time.perf_counter()
    report = validate_snapshot(con, snapshot_id)
    seconds = time.perf_counter() - started
    con.close()
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "status": report["status"]}


def in_child(step: str, *args: str) -> dict:
    """Run one step in a fresh interpreter, so its peak RSS is not mixed with another's."""
    return run_child("bench.bench_ingest", ["--step", step, *args], env={})


def median_run(runs: list[dict]) -> dict:
    return sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]


def markdown(result: dict) -> str:
    bare, encore, val = result["bare"], result["encore"], result["validate"]
    rows = result["file"]["rows"]
    return "\n".join(
        [
            f"# Ingest benchmark ({rows:,} listens, {result['file']['bytes'] / 1e6:.0f} MB CSV)",
            "",
            f"Machine: {result['machine']}. DuckDB memory_limit {result['memory_limit']}."
            f" Each step in its own process; median of {result['repeats']} alternating runs"
            f" (all: {result['all_seconds']}).",
            "",
            "| step | seconds | rows/s | peak RSS (MB) |",
            "|---|---:|---:|---:|",
            f"| bare DuckDB read_csv -> table | {bare['seconds']:.2f} |"
            f" {rows / bare['seconds']:,.0f} | {bare['peak_rss_mb']:.0f} |",
            f"| Encore ingest_file (accounting on) | {encore['seconds']:.2f} |"
            f" {rows / encore['seconds']:,.0f} | {encore['peak_rss_mb']:.0f} |",
            f"| Encore validate (apart, one run) | {val['seconds']:.2f} |"
            f" {rows / val['seconds']:,.0f} | {val['peak_rss_mb']:.0f} |",
            "",
            f"Validation / ingest time: **{val['seconds'] / encore['seconds']:.2f}x**"
            f" (target <= 0.5x); validation peak RSS {val['peak_rss_mb']:.0f} MB"
            " (target < 1024 MB).",
            f"Encore / bare throughput: **{result['ratio_to_bare']:.2f}x** (target >= 0.5x);"
            f" ingest peak RSS {encore['peak_rss_mb']:.0f} MB (target < 2048 MB).",
            f"Accounting: {encore['accounting']} holds={encore['accounting_holds']}.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--memory-limit", default="1GB")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--step", choices=["bare", "encore", "validate"], help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--snapshot", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        step = {
            "bare": lambda: run_bare(args.file, args.workdir, args.memory_limit),
            "encore": lambda: run_encore(args.file, args.workdir, args.memory_limit),
            "validate": lambda: run_validate(args.workdir, args.snapshot, args.memory_limit),
        }[args.step]
        print(json.dumps(step()))
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="encore-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in workdir.glob("*.duckdb*"):
        stale.unlink()
    path = workdir / f"listens_{args.rows}.csv"
    file_info = (
        {"rows": sum(1 for _ in path.open()) - 1, "seconds": None, "bytes": path.stat().st_size}
        if path.exists()
        else generate(path, args.rows)
    )
    common = ["--file", str(path), "--workdir", str(workdir), "--memory-limit", args.memory_limit]
    # Alternate the two loads and keep the median run of each: single runs here vary by ~25 %.
    bares, encores = [], []
    for _ in range(args.repeats):
        for stale in workdir.glob("*.duckdb*"):
            stale.unlink()
        bares.append(in_child("bare", *common))
        encores.append(in_child("encore", *common))
    bare, encore = median_run(bares), median_run(encores)
    validate = in_child("validate", *common, "--snapshot", str(encore["snapshot_id"]))
    result = {
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
        "memory_limit": args.memory_limit,
        "file": file_info,
        "bare": bare,
        "encore": encore,
        "validate": validate,
        "ratio_to_bare": bare["seconds"] / encore["seconds"],
        "repeats": args.repeats,
        "all_seconds": {
            "bare": [r["seconds"] for r in bares],
            "encore": [r["seconds"] for r in encores],
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    save_results("ingest", result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
