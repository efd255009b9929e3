"""`make bench-replay`: Encore replayed night by night on public time-ordered data, each night's
lists judged on the next period (issue 34), beside peers refit on the same schedule and the
first night's model never retrained.

- ml-100k: weekly, from 70 % of its events (11 nights);
- ml-latest-small: monthly, from 90 % of its events (16 nights).

With --cold, each dataset is replayed a second time with warm starts off (`--set
warm_start=false`), in another home on the same schedule: the nights' wall time and the next
period's lists, paired on the same users, warm against cold.

Each replay is the real `encore replay` command in a fresh data home, with the nightly's
defaults. Writes bench/results/replay_<dataset>.{json,md} and two PNG plots each, and
bench/results/replay.md: the headline figures against the issue's targets.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.datasets import SHARED_DATA
from bench.harness import RESULTS, save_results

ENCORE = Path(sys.executable).parent / "encore"
ENCORE_NAME = "Encore (served)"
FROZEN = "frozen (night 0's model)"

# dataset -> (sources.toml table, start, period)
REPLAYS = {
    "ml-100k": (
        'format = "movielens-100k"\nlanding = "{data}/ml-100k"\npattern = "u.data"\n',
        0.7,
        "week",
    ),
    "ml-latest-small": (
        'format = "movielens-csv"\nlanding = "{data}/ml-latest-small"\npattern = "ratings.csv"\n',
        0.9,
        "month",
    ),
}


def run_replay(
    dataset: str, work: Path, nights: int | None, settings: tuple[str, ...] = (), tag: str = ""
) -> tuple[dict, Path]:
    """`encore replay` of `dataset` in a fresh home; its summary and its replay folder. A run
    with a `tag` (another setting) writes its results under the work folder, not bench/results."""
    table, start, period = REPLAYS[dataset]
    sources = work / f"{dataset}-sources.toml"
    sources.write_text(f"[datasets.{dataset}]\n" + table.format(data=SHARED_DATA))
    home = work / f"{dataset}{tag}-home"
    results = work / f"results{tag}" if tag else RESULTS
    command = [str(ENCORE), "--home", str(home), "replay", dataset, "--sources", str(sources)]
    command += ["--start", str(start), "--period", period, "--results", str(results)]
    command += [arg for setting in settings for arg in ("--set", setting)]
    if nights:
        command += ["--nights", str(nights)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"encore replay {dataset} failed:\n{done.stderr[-4000:]}")
    print(done.stdout, end="")
    path = results / f"replay_{dataset}.json"
    result = json.loads(path.read_text())
    result["summary"]["bench_seconds"] = time.perf_counter() - started
    path.write_text(json.dumps(result, indent=1, default=float))
    return result["summary"], home / "replay" / dataset


def warm_against_cold(warm_folder: Path, cold_folder: Path) -> dict:
    """The same nights warm and cold: wall time per night (medians and their ratio, over the
    nights after the first, which both train cold) and Encore's next-period lists, paired."""
    import numpy as np

    from models_src.replay import paired_difference
    from tasks.replay.state import ReplayState, load_vectors

    warm, cold = ReplayState.load(warm_folder), ReplayState.load(cold_folder)
    later = [n["night"] for n in warm.nights if n["night"] > 0]
    seconds = {
        name: [
            next(n for n in state.nights if n["night"] == i)["nightly"]["seconds"] for i in later
        ]
        for name, state in (("warm", warm), ("cold", cold))
    }
    out = {
        "nights": len(later),
        "warm_median_s": float(np.median(seconds["warm"])),
        "cold_median_s": float(np.median(seconds["cold"])),
    }
    out["ratio"] = out["warm_median_s"] / out["cold_median_s"]
    for metric in ("recall@10", "ndcg@10"):
        a = np.concatenate([load_vectors(warm_folder, i)[0][ENCORE_NAME][metric] for i in later])
        b = np.concatenate([load_vectors(cold_folder, i)[0][ENCORE_NAME][metric] for i in later])
        mean, se = paired_difference(a, b)
        out[metric] = {"warm": float(a.mean()), "cold": float(b.mean()), "difference": mean,
                       "se": se}  # fmt: skip
    return out


def targets(summary: dict) -> list[tuple[str, str, bool | None]]:
    """(what, measured, met) for each of the issue's targets."""
    differences, best = summary["differences"], summary["best_peer"]
    rows = []
    for metric in ("recall@10", "ndcg@10"):
        d = differences[best][metric]
        rows.append(
            (
                f"{metric} >= 1.05x the best peer ({best})",
                f"{d['ratio']:.2f}x ({d['difference']:+.4f} ± {d['se']:.4f})",
                d["ratio"] >= 1.05,
            )
        )
        f = differences[FROZEN][metric]
        rows.append(
            (
                f"{metric} >= 1.10x frozen",
                f"{f['ratio']:.2f}x ({f['difference']:+.4f} ± {f['se']:.4f})",
                f["ratio"] >= 1.10,
            )
        )
    rows.append(("every active user has a list", str(summary["every_user_has_a_list"]),
                 summary["every_user_has_a_list"]))  # fmt: skip
    share = summary["promotions"]["better_share"]
    rows.append(
        (
            "promotions better on the next period >= 70 %",
            f"{'n/a' if share is None else f'{share:.0%}'} of"
            f" {summary['promotions']['changes']} changes in {summary['promotions']['nights']}"
            " nights",
            None if share is None else share >= 0.7,
        )
    )
    versus = summary.get("warm_against_cold")
    if versus:
        r = versus["recall@10"]
        rows.append(
            (
                "warm night <= 0.5x a cold night (medians, same nights replayed cold)",
                f"{versus['ratio']:.2f}x ({versus['warm_median_s']:.0f} s vs"
                f" {versus['cold_median_s']:.0f} s over {versus['nights']} nights); next-period"
                f" Recall@10 warm - cold {r['difference']:+.4f} ± {r['se']:.4f}",
                versus["ratio"] <= 0.5,
            )
        )
    else:
        wall = summary["wall"]
        ratio = wall["warm_over_cold"]
        rows.append(
            (
                "warm night <= 0.5x a cold night (medians; night 0 is the only cold one)",
                f"{'n/a' if ratio is None else f'{ratio:.2f}x'} (warm {wall['warm_nights']},"
                f" cold {wall['cold_nights']})",
                None,
            )
        )
    home = summary["home_mb"]
    growth = home["after_last"] / home["after_first"]
    rows.append(
        (
            "data home after the last night <= 3x after the first",
            f"{growth:.2f}x ({home['after_first']:.0f} -> {home['after_last']:.0f} MB)",
            growth <= 3.0,
        )
    )
    return rows


def markdown(summaries: dict[str, dict]) -> str:
    lines = [
        "# Replay: the lists Encore serves, judged on the next period",
        "",
        "`make bench-replay` (bench/bench_replay.py): `encore replay` with the nightly's "
        "defaults in a fresh data home, on this machine (2 cores). Per dataset: "
        "[ml-100k](replay_ml-100k.md), [ml-latest-small](replay_ml-latest-small.md).",
        "",
    ]
    for dataset, summary in summaries.items():
        encore = summary["contenders"][ENCORE_NAME]
        lines += [
            f"## {dataset}: {summary['nights']} nights, one {summary['period']} each",
            "",
            f"Encore next-period Recall@10 {encore['recall@10']['mean']:.4f}, NDCG@10"
            f" {encore['ndcg@10']['mean']:.4f} over {summary['pairs']:,} (user, night) pairs"
            f" ({1 - summary['seen_share']:.0%} users never seen before the night);"
            f" {summary['bench_seconds'] / 60:.1f} min.",
            "",
            "| target | measured | met |",
            "|---|---|---|",
        ]
        for what, measured, met in targets(summary):
            lines.append(
                f"| {what} | {measured} | {'–' if met is None else 'yes' if met else 'NO'} |"
            )
        lines.append("")
    return "\n".join(lines)


def ceiling(datasets: list[str]) -> None:
    from bench.replay_ceiling import markdown as ceiling_markdown
    from bench.replay_ceiling import replay_ceiling

    results = [replay_ceiling(d, *REPLAYS[d][1:]) for d in datasets]
    save_results("replay_ceiling", results, ceiling_markdown(results))
    print(ceiling_markdown(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", action="append", choices=sorted(REPLAYS))
    parser.add_argument("--nights", type=int, default=None, help="Fewer nights (a quick look).")
    parser.add_argument(
        "--cold", action="store_true", help="Replay each dataset again without warm starts."
    )
    parser.add_argument(
        "--work", type=Path, help="Folder of the replays' homes (kept on failure: resumable)."
    )
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="Only the ceiling study: the best any recency + EASE^R list reaches on the replay's"
        " periods, settings chosen on them (bench/replay_ceiling.py).",
    )
    args = parser.parse_args()
    if not SHARED_DATA.exists():
        sys.exit(f"{SHARED_DATA} is missing: the replay bench needs the shared datasets")
    if args.ceiling:
        ceiling(args.dataset or list(REPLAYS))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="encore-replay-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        for dataset in args.dataset or REPLAYS:
            summary, folder = run_replay(dataset, work, args.nights)
            if args.cold:
                _, cold = run_replay(dataset, work, args.nights, ("warm_start=false",), "-cold")
                summary["warm_against_cold"] = warm_against_cold(folder, cold)
                path = RESULTS / f"replay_{dataset}.json"
                result = json.loads(path.read_text())
                result["summary"] = summary
                path.write_text(json.dumps(result, indent=1, default=float))
    except BaseException:
        print(f"kept {work}: rerun with --work {work} to resume", file=sys.stderr)
        raise
    shutil.rmtree(work, ignore_errors=True)
    summaries = {  # a run of one dataset keeps the other's last results in the table
        d: json.loads((RESULTS / f"replay_{d}.json").read_text())["summary"]
        for d in REPLAYS
        if (RESULTS / f"replay_{d}.json").exists()
    }
    (RESULTS / "replay.md").write_text(markdown(summaries))
    print((RESULTS / "replay.md").read_text())


if __name__ == "__main__":
    main()
