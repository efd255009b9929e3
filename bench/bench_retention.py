"""The data home's size over 30 nights: does it stay bounded under the retention policy?

    python -m bench.bench_retention [--nights 30] [--epochs 3]      (make bench-retention)

A user's path, through the real `encore` command: 30 days of the built-in sample's listens and
ratings (its generator at a quarter of its users, items and events, see SCALE), then every night
one more day of each and `encore nightly` (its temporary Prefect server keeps its database in the
data home, as `make run` does). Every
night trains, gates and serves all three slots; the default retention policy cleans at its end.
After each night the size of every top-level folder of the data home is recorded.

The policy bounds what Encore keeps (models, runs, reports...); the user's data grows by one day
a night, so the landing files, the warehouse and the training exports grow with it. Both are
reported, and the goal (issue 15) is on the whole data home: size after the last night at most
3x the size after night 1.

Writes bench/results/retention.json and retention.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench.harness import RESULTS, save_results

ENCORE = Path(sys.executable).with_name("encore")
# Folders that hold the user's data (they grow with it); the rest is what Encore keeps.
DATA_FOLDERS = ("landing", "warehouse.duckdb", "exports")
GOAL_RATIO = 3.0
# The built-in sample's users, items and daily events, scaled down so that 30 nights fit in about
# half an hour on 2 cores: a night's time is then mostly Prefect's and the gate's, not training.
SCALE = 0.25


def encore(home: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["ENCORE_HOME"] = str(home)
    done = subprocess.run(
        [str(ENCORE), *args], env=env, capture_output=True, text=True, timeout=1800
    )
    if done.returncode != 0:
        raise RuntimeError(f"encore {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def folder_sizes(home: Path) -> dict[str, int]:
    sizes = {}
    for entry in sorted(home.iterdir()):
        files = [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file()]
        sizes[entry.name] = sum(p.stat().st_size for p in files)
    return sizes


def deliver_days(home: Path, days: range) -> None:
    """The sample's generator at a smaller scale (SCALE): the same files, fewer users and items."""
    from models_src.sample_data import default_configs, write_sample_days

    for kind, config in default_configs().items():
        smaller = replace(
            config,
            n_users=int(config.n_users * SCALE),
            n_items=int(config.n_items * SCALE),
            events_per_day=int(config.events_per_day * SCALE),
        )
        write_sample_days(home / "landing" / f"sample-{kind}", kind, smaller, days)


def run(nights: int, epochs: int, scratch: Path) -> list[dict]:
    from flows.cli import SAMPLE_SOURCES

    home = scratch / "home"
    home.mkdir()
    (home / "sources.toml").write_text(SAMPLE_SOURCES)
    deliver_days(home, range(30))
    records = []
    for night in range(1, nights + 1):
        if night > 1:
            deliver_days(home, range(28 + night, 29 + night))
        started = time.perf_counter()
        encore(home, "nightly", "--epochs", str(epochs))
        sizes = folder_sizes(home)
        data = sum(v for k, v in sizes.items() if k in DATA_FOLDERS)
        record = {
            "night": night,
            "seconds": time.perf_counter() - started,
            "total_bytes": sum(sizes.values()),
            "data_bytes": data,
            "kept_bytes": sum(sizes.values()) - data,
            "folders": sizes,
        }
        records.append(record)
        print(
            f"night {night:2d}: {record['total_bytes'] / 1e6:8.1f} MB in all,"
            f" {record['kept_bytes'] / 1e6:8.1f} MB but the user's data"
            f" ({record['seconds']:.0f} s)",
            flush=True,
        )
    return records


def _part(record: dict, names: tuple[str, ...], inside: bool) -> int:
    return sum(v for k, v in record["folders"].items() if (k in names) == inside)


def markdown(records: list[dict], epochs: int) -> str:
    first, last = records[0], records[-1]
    ratio = last["total_bytes"] / first["total_bytes"]
    verdict = "met" if ratio <= GOAL_RATIO else "NOT met"
    outside = (*DATA_FOLDERS, "prefect")
    own = [_part(r, outside, False) for r in (first, last)]
    prefect = [_part(r, ("prefect",), True) for r in (first, last)]
    data = [_part(r, DATA_FOLDERS, True) for r in (first, last)]
    folders = sorted({name for r in records for name in r["folders"]})
    lines = [
        "# Data home size over nights (`make bench-retention`)",
        "",
        f"The built-in sample's generator at {SCALE:g}x its users, items and events: 30 days,"
        f" then one more day and one `encore nightly --epochs {epochs}` per night, default"
        f" retention policy, {len(records)} nights on this machine (2 cores)."
        " Generated by bench/bench_retention.py.",
        "",
        f"- whole data home: {first['total_bytes'] / 1e6:,.1f} MB after night 1,"
        f" {last['total_bytes'] / 1e6:,.1f} MB after night {last['night']}:"
        f" **{ratio:.2f}x** (goal <= {GOAL_RATIO:.0f}x: {verdict})",
        f"- what Encore keeps (models, runs, reports, caches): {own[0] / 1e6:,.1f} MB ->"
        f" {own[1] / 1e6:,.1f} MB ({own[1] / own[0]:.2f}x)",
        f"- Prefect's database (`prefect/`, the temporary server of `encore nightly`):"
        f" {prefect[0] / 1e6:,.1f} MB -> {prefect[1] / 1e6:,.1f} MB"
        f" ({prefect[1] / prefect[0]:.2f}x)."
        " Its events go after 7 days (Prefect's vacuum runs in a temporary server too), but its"
        " flow runs, logs and artifacts stay: Prefect vacuums those only in a long-running server"
        " (`make server` turns that on, ENCORE_PREFECT_RETENTION_DAYS), and these nights are"
        " minutes apart",
        f"- the user's data ({', '.join(DATA_FOLDERS)}), one more day a night:"
        f" {data[0] / 1e6:,.1f} MB -> {data[1] / 1e6:,.1f} MB ({data[1] / data[0]:.2f}x)",
        "",
        "| night | " + " | ".join(folders) + " | total MB | s |",
        "|---:|" + "---:|" * (len(folders) + 2),
    ]
    for r in records:
        cells = [f"{r['folders'].get(name, 0) / 1e6:.1f}" for name in folders]
        lines.append(
            f"| {r['night']} | "
            + " | ".join(cells)
            + f" | {r['total_bytes'] / 1e6:.1f} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--markdown-only", action="store_true", help="rewrite retention.md from retention.json"
    )
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    if args.markdown_only:
        stored = json.loads((RESULTS / "retention.json").read_text())
        records, args.epochs = stored["nights"], stored["epochs"]
    else:
        with tempfile.TemporaryDirectory(prefix="encore-retention-") as scratch:
            records = run(args.nights, args.epochs, Path(scratch))
    save_results(
        "retention", {"epochs": args.epochs, "nights": records}, markdown(records, args.epochs)
    )
    print((RESULTS / "retention.md").read_text())


if __name__ == "__main__":
    main()
