"""The gate over simulated nights: no flip on noise, a clearly better challenger promoted at once.

    python -m bench.bench_gate                     (make bench-gate)
    python -m bench.bench_gate --datasets ml-100k --nights 3

Each public dataset of ../shared/data (the benchmark needs that folder) is fed as a user would
(one delimited file through sources.toml, bench/user_data.py) and run through the nightly flow
with its defaults, two scenarios, each on a fresh data home:

- noise: N nights on the same snapshot (`retrain_without_new_data`), the training seed changing
  every night, nothing else. Any champion change after night 1 is caused by noise. Beside the
  gate's own decisions, the same nights replayed through the previous gate (GAT-BPR against
  GAT-BPR: promote when test Recall@10 is at least the champion's and every val/test Recall@10
  and NDCG@10 within 0.005 of it), from each night's challenger metrics (the snapshot and split
  do not change, so they are comparable across nights).
- better challenger: night 1 trains a crippled GAT-BPR (one epoch), night 2 the full default
  budget on the same snapshot; the baselines are reduced to MostPopular, so the champion after
  night 1 is a crippled model or MostPopular, and the full model should win on its first night.

Writes bench/results/gate.json and gate.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench import user_data
from bench.harness import RESULTS, save_results, table_row

PRIMARY, SECONDARY = "recall@10", "ndcg@10"
OLD_TOLERANCE = 0.005


def _tables(gate: dict) -> tuple[dict | None, dict | None, dict]:
    tables = gate.get("tables") or {}
    challenger = next((t for n, t in tables.items() if n.startswith("challenger")), None)
    champion = next((t for n, t in tables.items() if n.startswith("champion")), None)
    baselines = {n: t for n, t in tables.items() if not n.startswith(("challenger", "champion"))}
    return challenger, champion, baselines


def old_gate_promotes(challenger: dict, champion: dict) -> bool:
    """The previous gate: test Recall@10 at least the champion's, every val/test Recall@10 and
    NDCG@10 within 0.005 of it (`challenger`, `champion`: part -> metric -> value)."""
    within = all(
        challenger[part][metric] >= champion[part][metric] - OLD_TOLERANCE
        for part in ("val", "test")
        for metric in (PRIMARY, SECONDARY)
    )
    return within and challenger["test"][PRIMARY] >= champion["test"][PRIMARY]


def old_gate_replay(rows: list[dict]) -> list[bool]:
    """Whether the previous gate would have changed its GAT-BPR champion each night after the
    first (night 1's model is its first champion)."""
    champion, flips = rows[0]["challenger_metrics"], []
    for row in rows[1:]:
        promoted = old_gate_promotes(row["challenger_metrics"], champion)
        flips.append(promoted)
        if promoted:
            champion = row["challenger_metrics"]
    return flips


def night_row(night: int, outcome: dict) -> dict:
    gate = outcome.get("gate") or {}
    challenger, champion, baselines = _tables(gate)
    better = next(
        (
            c
            for c in gate.get("compared", [])
            if c["check"] == "significantly better" and c["contender"].startswith("challenger")
        ),
        None,
    )
    best = max(baselines, key=lambda n: baselines[n]["val"][PRIMARY]) if baselines else None
    return {
        "night": night,
        "status": outcome["status"],
        "serve": gate.get("serve"),
        "family": gate.get("champion_after_family"),
        "rule": gate.get("rule"),
        "changed": gate.get("champion_after") != gate.get("champion_before"),
        "champion_before": gate.get("champion_before"),
        "champion_after": gate.get("champion_after"),
        "challenger": {p: challenger[p][PRIMARY] for p in ("val", "test")} if challenger else None,
        "champion": {p: champion[p][PRIMARY] for p in ("val", "test")} if champion else None,
        "best_baseline": best,
        "baseline": {p: baselines[best][p][PRIMARY] for p in ("val", "test")} if best else None,
        "better_check": better,
        "challenger_metrics": {
            part: {m: challenger[part][m] for m in (PRIMARY, SECONDARY)} for part in ("val", "test")
        }
        if challenger
        else None,
        "epochs": (outcome.get("training") or {}).get("epochs_run"),
    }


def noise_scenario(name: str, nights: int, work: Path) -> dict:
    home = user_data.write_home(work / f"{name}-noise", name, *user_data.load(name))
    plan = [{"seed": 42}] + [
        {"seed": 42 + night, "retrain_without_new_data": True} for night in range(1, nights)
    ]
    started = time.perf_counter()
    results = user_data.run_nights(home, plan, work / f"{name}-noise.json")
    rows = [night_row(i + 1, r["outcomes"][0]) for i, r in enumerate(results)]
    old = old_gate_replay(rows)
    for row, promoted in zip(rows, [None, *old], strict=True):
        row["old_gate_promotes"] = promoted
    return {
        "dataset": name,
        "nights": rows,
        "flips": sum(r["changed"] for r in rows[1:]),
        "old_gate_flips": sum(old),
        "seconds": time.perf_counter() - started,
    }


def better_scenario(name: str, work: Path) -> dict:
    home = user_data.write_home(work / f"{name}-better", name, *user_data.load(name))
    only_popular = {"baselines": ["most-popular"]}
    plan = [
        {"gat_bpr": {"epochs": 1}, "gate": only_popular},
        {"retrain_without_new_data": True, "gate": only_popular},
    ]
    results = user_data.run_nights(home, plan, work / f"{name}-better.json")
    rows = [night_row(i + 1, r["outcomes"][0]) for i, r in enumerate(results)]
    return {"dataset": name, "nights": rows, "promoted_on_first_night": rows[1]["changed"]}


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _check(row: dict) -> str:
    c = row["better_check"]
    if not c:
        return "–"
    return f"{c['difference']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}] p={c['p_value']:.3f}"


def markdown(noise: list[dict], better: list[dict]) -> str:
    lines = [
        "# The gate over simulated nights",
        "",
        "Public data fed as a user would (one delimited file, `encore nightly` defaults); the",
        "nightly flow in full on this 2-core CPU machine. Recall@10 on Encore's own val/test",
        "split (hash, 70/15/15). `significantly better` is the paired bootstrap of the",
        "challenger minus the champion on val Recall@10 (difference [95 % CI], p).",
        "",
        "## No real change in the data (same snapshot, a new training seed each night)",
        "",
        "| dataset | night | serves (family) | rule | challenger val | champion val |"
        " best baseline val | significantly better | champion changed | previous gate |",
        "|---|---:|---|---|---:|---:|---:|---|---|---|",
    ]
    for scenario in noise:
        for r in scenario["nights"]:
            old = {None: "first", True: "flips", False: "keeps"}[r["old_gate_promotes"]]
            lines.append(
                f"| {scenario['dataset']} | {r['night']} | {r['serve']} ({r['family']}) |"
                f" {r['rule']} | {_fmt((r['challenger'] or {}).get('val'))} |"
                f" {_fmt((r['champion'] or {}).get('val'))} |"
                f" {r['best_baseline']} {_fmt((r['baseline'] or {}).get('val'))} | {_check(r)} |"
                f" {'yes' if r['changed'] else 'no'} | {old} |"
            )
    lines += [
        "",
        "`previous gate`: the same nights' GAT-BPR challengers replayed through the previous gate.",
        "",
        "| dataset | nights | champion flips after night 1 | previous gate's flips |",
    ]
    lines += ["|---|---:|---:|---:|"]
    for s in noise:
        lines.append(
            f"| {s['dataset']} | {len(s['nights'])} | {s['flips']} | {s['old_gate_flips']} |"
        )
    lines += [
        "",
        "## A clearly better challenger (night 1: one epoch; night 2: the default budget;"
        " baselines: MostPopular only)",
        "",
        "| dataset | night | epochs | serves (family) | rule | challenger val | champion val |"
        " significantly better | promoted |",
        "|---|---:|---:|---|---|---:|---:|---|---|",
    ]
    for scenario in better:
        for r in scenario["nights"]:
            lines.append(
                table_row(
                    scenario["dataset"],
                    r["night"],
                    r["epochs"],
                    f"{r['serve']} ({r['family']})",
                    r["rule"],
                    _fmt((r["challenger"] or {}).get("val")),
                    _fmt((r["champion"] or {}).get("val")),
                    _check(r),
                    "yes" if r["changed"] else "no",
                )
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="*", default=["ml-100k", "lastfm"])
    parser.add_argument("--nights", type=int, default=5)
    args = parser.parse_args()
    names = [n for n in args.datasets if user_data.available(n)]
    if not names:
        raise SystemExit(f"none of {args.datasets} is in {user_data.SHARED_DATA}")
    with tempfile.TemporaryDirectory(prefix="encore-bench-gate-") as tmp:
        work = Path(tmp)
        noise = [noise_scenario(name, args.nights, work) for name in names]
        better = [better_scenario(name, work) for name in names]
    RESULTS.mkdir(exist_ok=True)
    text = markdown(noise, better)
    save_results("gate", {"noise": noise, "better": better}, text)
    (RESULTS / "gate.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
