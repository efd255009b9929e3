"""The lists Encore serves, scored as a user meets them, next to what the night's own baselines
would have served.

    python -m bench.bench_served                   (make bench-served)
    python -m bench.bench_served --datasets lastfm-sparse

For each dataset (ml-100k and Last.fm as implicit feedback, Last.fm cut to 7 artists per user
(the sparse shape), MovieLens latest-small as explicit ratings):
1. a per-user random 80/10/10 split (seed 2026; each user's rows shuffled, int(0.1 n) to valid
   and to test, users with fewer than 3 rows all in train): the protocol of
   ../shared/tools/served_quality.py, reimplemented here so the benchmark runs without it;
2. train + valid become one delimited landing file (bench/user_data.py), `encore nightly` runs
   with its defaults in a fresh data home;
3. the exported lists are scored on test: Recall@10 and NDCG@10 over every user with a test item
   (a user without a list counts 0); for explicit ratings the relevant test items are the liked
   ones (rating in the scale's upper 40 %, Encore's default), and the predicted stars of
   `encore predict` on the test pairs are scored by RMSE next to the training mean's;
4. beside them: MostPopular on the same split, and the night's own strong baseline (its ALS,
   with the setting its grid chose on Encore's val) refit on train + valid as a serving refit
   would be, scored the same way.
Writes bench/results/served.json and served.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from bench import user_data
from bench.harness import RESULTS, save_results

SEED = 2026
K = 10


def per_user_split(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    frame = frame.sort_values(["user", "item"], kind="mergesort").reset_index(drop=True)
    frame["_key"] = np.random.default_rng(SEED).random(len(frame))
    frame = frame.sort_values(["user", "_key"], kind="mergesort").reset_index(drop=True)
    frame = frame.drop(columns="_key")
    part = np.zeros(len(frame), dtype=np.int8)
    users = frame["user"].to_numpy()
    starts = np.r_[0, np.flatnonzero(users[1:] != users[:-1]) + 1]
    for start, stop in zip(starts, np.r_[starts[1:], len(frame)], strict=True):
        n = stop - start
        if n < 3:
            continue
        held = int(0.1 * n)
        if 0 < 0.1 * n < 1:  # RecBole's rounding: a fraction below one row still gets one
            held = 1
        train = n - 2 * held
        part[start + train : start + train + held] = 1
        part[start + train + held : stop] = 2
    return frame[part == 0], frame[part == 1], frame[part == 2]


def score(top: pd.DataFrame, test: pd.DataFrame) -> dict[str, float]:
    """top: user, item, pos (1-based). Relevant: the user's test items."""
    relevant = test[["user", "item"]].drop_duplicates()
    n_relevant = relevant.groupby("user").size()
    hits = top[top["user"].isin(n_relevant.index)].merge(
        relevant.assign(hit=1), on=["user", "item"], how="left"
    )
    hits["hit"] = hits["hit"].fillna(0)
    hits["dcg"] = hits["hit"] / np.log2(hits["pos"] + 1.0)
    per_user = hits.groupby("user")[["hit", "dcg"]].sum().reindex(n_relevant.index).fillna(0.0)
    ideal = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, K + 2)))])
    recall = per_user["hit"] / n_relevant
    ndcg = per_user["dcg"] / ideal[np.minimum(n_relevant.to_numpy(), K)]
    return {
        "recall@10": float(recall.mean()),
        "ndcg@10": float(ndcg.mean()),
        "recall_se": float(recall.std(ddof=1) / np.sqrt(len(recall))),
        "users": len(recall),
    }


def most_popular(seen: pd.DataFrame, users) -> pd.DataFrame:
    popular = seen["item"].value_counts().index.to_numpy()[: K + 2000]
    seen_by = seen.groupby("user")["item"].agg(set)
    rows = []
    for user in users:
        already = seen_by.get(user, set())
        picked = [item for item in popular if item not in already][:K]
        rows += [(user, item, rank + 1) for rank, item in enumerate(picked)]
    return pd.DataFrame(rows, columns=["user", "item", "pos"])


def served_lists(home: Path, name: str) -> pd.DataFrame | None:
    path = home / "exports" / f"recommendations_{name}_ranking.parquet"
    if not path.exists():
        return None
    lists = pd.read_parquet(path).rename(columns={"user_id": "user", "item_id": "item"})
    lists = lists[lists["rank"] <= K]
    return lists.assign(pos=lists["rank"])[["user", "item", "pos", "source", "model_kind"]]


def nightly_als_refit(home: Path, name: str) -> tuple[pd.DataFrame, dict]:
    """The night's ALS (the setting its grid chose on val) refit on everything Encore was given,
    and its top-10 of unseen items for every user, with external ids."""
    import torch

    from models_src.baselines import refit_on_all
    from models_src.data import Interactions
    from models_src.runs import load_baseline

    (baseline_file,) = sorted(home.glob(f"runs/*/{name}-gat-bpr-baselines-*/als.baseline.pt"))
    baseline = load_baseline(baseline_file)
    data = Interactions.from_parquet(home / "exports" / f"{name}.parquet")
    refit = refit_on_all(baseline, data)
    users = torch.arange(data.num_users)
    scores = refit.score_users(users)
    scores[torch.from_numpy(data.user), torch.from_numpy(data.item)] = float("-inf")
    top = torch.topk(scores, K, dim=1).indices.numpy()
    user_ids, item_ids = np.asarray(data.meta["user_ids"]), np.asarray(data.meta["item_ids"])
    lists = pd.DataFrame(
        {
            "user": np.repeat(user_ids, K),
            "item": item_ids[top.ravel()],
            "pos": np.tile(np.arange(1, K + 1), len(user_ids)),
        }
    )
    settings = {k: v for k, v in baseline.params.items() if k in ("regularization", "alpha")}
    return lists, settings


def liked(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """The rows a list is judged on: every row of implicit data, liked ones of ratings."""
    if "rating" not in frame.columns:
        return frame
    from models_src.config import relevance_threshold

    low, high, _ = user_data.RATING_SCALES[name]
    return frame[frame["rating"] >= relevance_threshold(low, high, None)]


def predicted_stars(home: Path, name: str, given: pd.DataFrame, test: pd.DataFrame) -> dict:
    """`encore predict` on the test pairs, scored by RMSE, next to the training mean's."""
    pairs, out = home / "test_pairs.csv", home / "predicted.csv"
    test[["user", "item"]].rename(columns={"user": "user_id", "item": "item_id"}).to_csv(
        pairs, index=False
    )
    encore = Path(sys.executable).with_name("encore")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ENCORE_"))}
    done = subprocess.run(
        [str(encore), "predict", "--dataset", name, "--pairs", str(pairs), "--out", str(out)],
        env={**env, "ENCORE_HOME": str(home)},
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    predicted = pd.read_csv(out)["predicted_rating"].to_numpy()
    target = test["rating"].to_numpy()
    mean = given["rating"].mean()
    return {
        "rmse": float(np.sqrt(np.mean((predicted - target) ** 2))),
        "training_mean_rmse": float(np.sqrt(np.mean((mean - target) ** 2))),
        "served_by": done.stdout.strip(),
    }


def run(name: str, work: Path) -> dict:
    frame, columns = user_data.load(name)
    train, valid, test = (p.astype({"user": str, "item": str}) for p in per_user_split(frame))
    given = pd.concat([train, valid])
    home = user_data.write_home(work / name, name, given, columns)
    (night,) = user_data.run_nights(home, [{}], work / f"{name}.json")
    outcome = next(o for o in night["outcomes"] if o["model"] == "gat-bpr")
    gate = outcome.get("gate") or {}
    served = served_lists(home, name)
    als, settings = nightly_als_refit(home, name)
    judged = liked(test, name)
    result = {
        "dataset": name,
        "rows": len(frame),
        "users": int(frame["user"].nunique()),
        "items": int(frame["item"].nunique()),
        "per_user": len(frame) / frame["user"].nunique(),
        "test_rows": len(test),
        "status": outcome["status"],
        "serves": gate.get("serve"),
        "family": gate.get("champion_after_family"),
        "rule": gate.get("rule"),
        "warnings": night["warnings"],
        "seconds": night["seconds"],
        "most_popular": score(most_popular(given, judged["user"].unique()), judged),
        "als_refit": {**score(als, judged), "settings": settings},
        "served": score(served, judged) if served is not None else None,
        "sources": served["source"].value_counts().to_dict() if served is not None else {},
        "gate_tables": {
            contender: {part: {m: t[part][m] for m in ("recall@10", "ndcg@10")} for part in t}
            for contender, t in (gate.get("tables") or {}).items()
        },
    }
    if "rating" in frame.columns:
        result["stars"] = predicted_stars(home, name, given, test)
    if result["served"]:
        result["served_vs_als"] = result["served"]["recall@10"] / result["als_refit"]["recall@10"]
    return result


def markdown(results: list[dict]) -> str:
    lines = [
        "# Served lists, scored on interactions Encore never saw",
        "",
        "Per-user random 80/10/10 split (seed 2026); train + valid fed through sources.toml",
        "(`delimited`), `encore nightly` with its defaults; the exported lists scored on test",
        "(Recall@10 ± one standard error over users, NDCG@10). MostPopular and the night's own",
        "ALS (its grid's choice, refit on train + valid) on the same split. 2-core CPU machine.",
        "",
        "| dataset | users | rows/user | serves (family) | served R@10 | served N@10 |"
        " ALS refit R@10 | MostPopular R@10 | served / ALS | night s |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        served = r["served"] or {}
        lines.append(
            f"| {r['dataset']} | {r['users']:,} | {r['per_user']:.1f} | {r['serves']}"
            f" ({r['family']}) | {served.get('recall@10', float('nan')):.4f} ±"
            f" {served.get('recall_se', float('nan')):.4f} |"
            f" {served.get('ndcg@10', float('nan')):.4f} |"
            f" {r['als_refit']['recall@10']:.4f} | {r['most_popular']['recall@10']:.4f} |"
            f" {r.get('served_vs_als', float('nan')):.2f}x | {r['seconds']:.0f} |"
        )
    lines += [""]
    for r in results:
        lines.append(f"- {r['dataset']}: {r['rule']}. " + " ".join(r["warnings"]))
    stars = [r for r in results if "stars" in r]
    if stars:
        lines += [
            "",
            "Predicted stars (`encore predict` on the test pairs): RMSE.",
            "",
            "| dataset | served by | test RMSE | training mean's RMSE |",
            "|---|---|---:|---:|",
        ]
        for r in stars:
            s = r["stars"]
            lines.append(
                f"| {r['dataset']} | {s['served_by']} | {s['rmse']:.4f} |"
                f" {s['training_mean_rmse']:.4f} |"
            )
    lines += [
        "",
        "Encore's own gate on its internal split (val Recall@10 of each contender, first night):",
        "",
    ]
    for r in results:
        val = {c: t["val"]["recall@10"] for c, t in r["gate_tables"].items()}
        lines.append(f"- {r['dataset']}: " + ", ".join(f"{c} {v:.4f}" for c, v in val.items()))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets",
        nargs="*",
        default=["ml-100k", "lastfm", "lastfm-sparse", "ml-latest-small-ratings"],
    )
    args = parser.parse_args()
    names = [n for n in args.datasets if user_data.available(n)]
    if not names:
        raise SystemExit(f"none of {args.datasets} is in {user_data.SHARED_DATA}")
    with tempfile.TemporaryDirectory(prefix="encore-bench-served-") as tmp:
        results = [run(name, Path(tmp)) for name in names]
    RESULTS.mkdir(exist_ok=True)
    text = markdown(results)
    save_results("served", results, text)
    print(text)


if __name__ == "__main__":
    main()
