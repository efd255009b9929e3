"""The replay's report: a table per night, the pooled means, paired differences, the gate's
promotions judged on the next period, wall time and the data home's growth; JSON, markdown and
two PNG plots."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from models_src.replay import paired_difference
from tasks.files import write_text_atomically
from tasks.replay.state import ReplayState, load_vectors
from tasks.replay.tasks import ENCORE, FROZEN, PREVIOUS

K_METRICS = ("recall@10", "ndcg@10")


def _day(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def pooled(folder: Path, state: ReplayState) -> dict:
    """Per contender and metric, the per-user values of every night one after another, with
    each user's seen-before flag: the vectors paired differences are taken on."""
    by_name: dict[str, dict[str, list[np.ndarray]]] = {}
    seen: list[np.ndarray] = []
    nights = sorted(state.nights, key=lambda n: n["night"])
    for night in nights:
        vectors, seen_before = load_vectors(folder, night["night"])
        seen.append(seen_before)
        for name, by in vectors.items():
            if name == PREVIOUS:
                continue
            for metric, values in by.items():
                by_name.setdefault(name, {}).setdefault(metric, []).append(values)
    lengths = [len(s) for s in seen]
    out = {}
    for name, by in by_name.items():
        if [len(v) for v in by[K_METRICS[0]]] != lengths:
            continue  # a contender missing on some night (frozen before night 0 served)
        out[name] = {metric: np.concatenate(values) for metric, values in by.items()}
    return {"vectors": out, "seen": np.concatenate(seen) if seen else np.zeros(0, bool)}


def summarise(folder: Path, state: ReplayState) -> dict:
    data = pooled(folder, state)
    vectors, seen = data["vectors"], data["seen"]
    contenders = {}
    for name, by in vectors.items():
        contenders[name] = {}
        for metric in K_METRICS:
            v = by[metric]
            contenders[name][metric] = _mean_se(v)
            contenders[name][f"{metric} seen users"] = _mean_se(v[seen])
            contenders[name][f"{metric} new users"] = _mean_se(v[~seen])
    peers = [n for n in vectors if n not in (ENCORE, FROZEN)]
    best = max(peers, key=lambda n: contenders[n]["recall@10"]["mean"]) if peers else None
    differences = {}
    for other in [n for n in vectors if n != ENCORE]:
        differences[other] = {}
        for metric in K_METRICS:
            mean, se = paired_difference(vectors[ENCORE][metric], vectors[other][metric])
            base = contenders[other][metric]["mean"]
            differences[other][metric] = {
                "difference": mean,
                "se": se,
                "ratio": contenders[ENCORE][metric]["mean"] / base if base else float("nan"),
            }
    return {
        "dataset": state.dataset,
        "period": state.period,
        "start": state.start,
        "nights": len(state.nights),
        "pairs": int(len(seen)),
        "seen_share": float(seen.mean()) if len(seen) else 0.0,
        "contenders": contenders,
        "best_peer": best,
        "differences": differences,
        "promotions": promotions(folder, state),
        "every_user_has_a_list": all(
            n["users_with_a_list"] == n["active_users"] for n in state.nights
        ),
        "wall": wall_times(state),
        "home_mb": {
            "after_first": state.nights[0]["home_bytes"] / 1e6 if state.nights else None,
            "after_last": state.nights[-1]["home_bytes"] / 1e6 if state.nights else None,
        },
        "peers": state.peers,
        "source": state.source,
    }


def _mean_se(v: np.ndarray) -> dict:
    if not len(v):
        return {"mean": float("nan"), "se": float("nan"), "n": 0}
    se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
    return {"mean": float(v.mean()), "se": se, "n": int(len(v))}


def promotions(folder: Path, state: ReplayState) -> dict:
    """Of the nights whose gate crowned a new champion, how many served the next period better
    (Recall@10, same users) than the champion it replaced would have."""
    judged = []
    for night in sorted(state.nights, key=lambda n: n["night"]):
        if not night["promoted"]:
            continue
        vectors, _ = load_vectors(folder, night["night"])
        if PREVIOUS not in vectors:
            judged.append({"night": night["night"], "better": None})
            continue
        mean, se = paired_difference(vectors[ENCORE]["recall@10"], vectors[PREVIOUS]["recall@10"])
        judged.append({"night": night["night"], "better": mean > 0, "difference": mean, "se": se})
    scored = [j for j in judged if j["better"] is not None]
    return {
        "changes": len(judged),
        "nights": len(state.nights) - 1,  # night 0 crowns the first champion: no change
        "judged": judged,
        "better_share": sum(j["better"] for j in scored) / len(scored) if scored else None,
    }


def wall_times(state: ReplayState) -> dict:
    """Night wall time; warm-started nights against cold ones (medians)."""
    nights = [n["nightly"] for n in sorted(state.nights, key=lambda n: n["night"])]
    ran = [n for n in nights if n.get("seconds") is not None and not n.get("problems")]
    warm = [n["seconds"] for n in ran if n.get("warm")]
    cold = [n["seconds"] for n in ran if not n.get("warm")]
    median = lambda v: float(np.median(v)) if v else None  # noqa: E731
    return {
        "warm_median_s": median(warm),
        "cold_median_s": median(cold),
        "warm_over_cold": median(warm) / median(cold) if warm and cold else None,
        "warm_nights": len(warm),
        "cold_nights": len(cold),
        "failed_nights": [i for i, n in enumerate(nights) if n.get("problems")],
    }


def markdown(summary: dict, state: ReplayState) -> str:
    names = list(summary["contenders"])
    lines = [
        f"# Replay of {summary['dataset']}: {summary['nights']} nights, one {summary['period']}"
        f" each, from {summary['start']:.0%} of its events",
        "",
        "Each night the real nightly flow ran on the data up to the cut; what it served (and "
        "every contender) is scored on the next period's new (user, item) pairs, over every "
        "active user (a user with no list scores 0). Peers refit every period with settings "
        "chosen once on the period before the start.",
        "",
        "## Pooled over (user, night)",
        "",
        "| contender | Recall@10 | NDCG@10 | Recall@10 seen users | Recall@10 new users |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in names:
        c = summary["contenders"][name]
        lines.append(
            f"| {name} | {_fmt(c['recall@10'])} | {_fmt(c['ndcg@10'])} |"
            f" {_fmt(c['recall@10 seen users'])} | {_fmt(c['recall@10 new users'])} |"
        )
    lines += [
        "",
        f"{summary['pairs']:,} (user, night) pairs, {summary['seen_share']:.0%} of them users "
        f"seen before the night; best peer by Recall@10: {summary['best_peer']}.",
        "",
        "## Encore minus each contender (paired, same users)",
        "",
        "| contender | Recall@10 diff (se) | ratio | NDCG@10 diff (se) | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, d in summary["differences"].items():
        r, n = d["recall@10"], d["ndcg@10"]
        lines.append(
            f"| {name} | {r['difference']:+.4f} ({r['se']:.4f}) | {r['ratio']:.2f}x |"
            f" {n['difference']:+.4f} ({n['se']:.4f}) | {n['ratio']:.2f}x |"
        )
    p = summary["promotions"]
    share = "n/a" if p["better_share"] is None else f"{p['better_share']:.0%}"
    w = summary["wall"]
    lines += [
        "",
        f"**Champion changes:** {p['changes']} in {p['nights']} nights after the first; "
        f"share whose next period beat what the previous champion would have served: {share}.",
        f"**Every active user had a list:** {summary['every_user_has_a_list']}.",
        f"**Wall time:** warm-started nights median {_s(w['warm_median_s'])} "
        f"({w['warm_nights']}), cold {_s(w['cold_median_s'])} ({w['cold_nights']}).",
        f"**Failed nights** (what served before went on serving): {w['failed_nights'] or 'none'}.",
        f"**Data home:** {summary['home_mb']['after_first']:.1f} MB after the first night, "
        f"{summary['home_mb']['after_last']:.1f} MB after the last.",
        "",
        "## Per night (Recall@10 on the next period)",
        "",
        "| night | period | active | new users | new items | champion | "
        + " | ".join(names)
        + " |",
        "|---|---|---:|---:|---:|---|" + "---:|" * len(names),
    ]
    for n in sorted(state.nights, key=lambda n: n["night"]):
        after = n["champion_after"] or {}
        mark = " (new)" if n["promoted"] else ""
        cells = " | ".join(
            f"{n['means'].get(x, {}).get('recall@10', float('nan')):.4f}" for x in names
        )
        lines.append(
            f"| {n['night']} | {_day(n['cut'])} – {_day(n['end'])} | {n['active_users']} |"
            f" {n['new_user_share']:.0%} | {n['new_item_share']:.0%} |"
            f" {after.get('kind', '-')} v{after.get('version', '-')}{mark} | {cells} |"
        )
    lines += ["", "Peers' settings (chosen on the period before the start):", ""]
    for name, chosen in summary["peers"].items():
        lines.append(f"- {name}: {json.dumps(chosen['params'])}")
    return "\n".join(lines) + "\n"


def _fmt(stat: dict) -> str:
    return f"{stat['mean']:.4f} ± {stat['se']:.4f}" if stat["n"] else "–"


def _s(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f} s"


def plot(summary: dict, state: ReplayState, out: Path) -> list[str]:
    """Next-period Recall@10 per night for every contender (promotions marked), and each
    night's wall time by stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nights = sorted(state.nights, key=lambda n: n["night"])
    x = [n["night"] for n in nights]
    figure, axes = plt.subplots(figsize=(9, 4.5))
    for name in summary["contenders"]:
        axes.plot(x, [n["means"].get(name, {}).get("recall@10", np.nan) for n in nights],
                  marker="o", linewidth=2.5 if name == ENCORE else 1.2, label=name)  # fmt: skip
    for n in nights:
        if n["promoted"]:
            axes.axvline(n["night"], color="grey", linestyle=":", linewidth=1)
    axes.set_xlabel("night (dotted: a new champion)")
    axes.set_ylabel("next-period Recall@10")
    axes.set_title(
        f"{state.dataset}: what each contender would serve, judged on the next {state.period}"
    )
    axes.legend(fontsize=8)
    figure.tight_layout()
    quality = out / f"replay_{state.dataset}_recall.png"
    figure.savefig(quality, dpi=110)
    plt.close(figure)
    figure, axes = plt.subplots(figsize=(9, 4))
    stages = sorted({s for n in nights for s in n["nightly"].get("timings", {})})
    bottom = np.zeros(len(nights))
    for stage in stages:
        values = np.array([n["nightly"].get("timings", {}).get(stage, 0.0) for n in nights])
        axes.bar(x, values, bottom=bottom, label=stage)
        bottom += values
    axes.set_xlabel("night")
    axes.set_ylabel("seconds")
    axes.set_title(f"{state.dataset}: the night's wall time by stage")
    axes.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    wall = out / f"replay_{state.dataset}_wall.png"
    figure.savefig(wall, dpi=110)
    plt.close(figure)
    return [str(quality), str(wall)]


def write_report(folder: Path, out: Path | None = None) -> dict:
    """results.json, report.md and the plots, in the replay's folder (and `out`)."""
    state = ReplayState.load(folder)
    # The nights of this plan, in order (a resumed replay asked for fewer may have judged more).
    state.nights = sorted(
        (n for n in state.nights if n["night"] < len(state.cuts) - 1), key=lambda n: n["night"]
    )
    summary = summarise(folder, state)
    text = markdown(summary, state)
    targets = [folder] + ([out] if out else [])
    for target in targets:
        target.mkdir(parents=True, exist_ok=True)
        stem = f"replay_{state.dataset}"
        write_text_atomically(target / f"{stem}.json", json.dumps(
            {"summary": summary, "nights": state.nights}, indent=1, default=float))  # fmt: skip
        write_text_atomically(target / f"{stem}.md", text)
        summary["plots"] = plot(summary, state, target)
    return summary
