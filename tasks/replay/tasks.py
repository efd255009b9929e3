"""The replay's Prefect tasks: read the source and plan the periods, land a period, judge a night
on the next period, and write the report. The nightly itself is the real flow, composed by
flows/replay.py."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import task

from models_src.replay import (
    PERIOD_SECONDS,
    NextPeriod,
    as_interactions,
    choose_peer_settings,
    period_cuts,
)
from tasks.replay.events import (
    Events,
    dataset_spec,
    load_events,
    read_events,
    replay_sources,
    write_period_file,
)
from tasks.replay.judge import IdMaps, cold_start_items, peer_lists, served_lists, version_lists
from tasks.replay.state import ReplayState, save_vectors

ENCORE = "Encore (served)"
FROZEN = "frozen (night 0's model)"
PREVIOUS = "previous champion"
# The forward holdout the peers' settings are chosen on: the period before the replay's start
# (a month counts as 30 days there).
HOLDOUT_SECONDS = {**PERIOD_SECONDS, "month": 30 * 86_400}


def _history(events: Events, until: int, since: int | None = None):
    keep = events.window(since, until)
    return as_interactions(
        events.user[keep], events.item[keep], events.ts[keep], len(events.user_ids),
        len(events.item_ids),
    )  # fmt: skip


def next_period(events: Events, cut: int, end: int) -> NextPeriod:
    return NextPeriod.build(_history(events, cut), _history(events, end, cut))


@task(name="plan the replay", task_run_name="plan the replay of {dataset}")
def plan_replay_task(
    sources_file: str, dataset: str, folder: str, start: float, period: str, nights: int | None,
    k: int,
) -> dict:  # fmt: skip
    """Read the source once, cut its timeline, choose the peers' settings on the period before
    the start, and write the replay's sources.toml; a resumed replay keeps what it had."""
    root = Path(folder)
    state = ReplayState.load(root)
    if state is not None:  # resumed: the same cuts (a function of the events), maybe more
        differs = state.settings_differ(start, period)
        if differs:
            raise ValueError(differs)
        state.cuts = period_cuts(load_events(root / "events.parquet").ts, start, period, nights)
        state.save(root)
        return {"resumed": True, "nights_done": len(state.done), "nights": len(state.cuts) - 1}
    spec = dataset_spec(Path(sources_file), dataset)
    source = read_events(spec, root / "events.parquet")
    events = load_events(root / "events.parquet")
    cuts = period_cuts(events.ts, start, period, nights)
    if len(cuts) < 2:
        raise ValueError(f"dataset '{dataset}': no full {period} after the start to judge on")
    holdout_cut = cuts[0] - HOLDOUT_SECONDS[period]
    peers = choose_peer_settings(
        _history(events, holdout_cut), next_period(events, holdout_cut, cuts[0]), k
    )
    (root / "sources.toml").write_text(replay_sources(spec, root / "landing"))
    ReplayState(dataset, start, period, cuts, peers, source).save(root)
    return {"resumed": False, "nights": len(cuts) - 1, "events": source["events"]}


@task(name="land a period", task_run_name="land period {night} of {dataset}")
def land_period_task(folder: str, dataset: str, night: int) -> dict:
    """Night `night`'s file: everything before the first cut on night 0, then each period."""
    root = Path(folder)
    state = ReplayState.load(root)
    since = None if night == 0 else state.cuts[night - 1]
    path = root / "landing" / f"period-{night:04d}.csv"
    rows = write_period_file(root / "events.parquet", since, state.cuts[night], path)
    return {"path": str(path), "rows": rows}


SCORER_FILES = ("scorer.onnx", "scorer.onnx.data", "scorer_meta.json")


def keep_scorer(champion: dict | None, where: Path) -> dict | None:
    """The champion's ONNX scorer linked (or copied) into `where`: the nightly's retention
    policy removes a retired version's files, and the replay scores it again afterwards."""
    import os
    import shutil

    if champion is None:
        return None
    source = Path(champion["artifact_dir"])
    if where.exists():
        shutil.rmtree(where)
    where.mkdir(parents=True)
    for name in SCORER_FILES:
        if not (source / name).exists():
            continue
        try:
            os.link(source / name, where / name)
        except OSError:  # another filesystem
            shutil.copy2(source / name, where / name)
    return {**champion, "artifact_dir": str(where)}


def ranking_champion(warehouse: Path, dataset: str) -> dict | None:
    """The ranking champion's version and what serves for it (artifact dir)."""
    from tasks.registry.registry import champion, serving_version
    from tasks.warehouse.schema import warehouse as open_warehouse

    if not warehouse.exists():
        return None
    with open_warehouse(warehouse) as con:
        row = champion(con, "ranking", dataset)
        if row is None:
            return None
        serving = serving_version(con, row)
    return {
        "version": row["version"],
        "kind": row["kind"],
        "serving_version": serving["version"],
        "artifact_dir": serving["artifact_dir"],
    }


@task(name="judge a night", task_run_name="judge night {night} of {dataset} on the next period")
def judge_night_task(
    folder: str, home: str, dataset: str, night: int, nightly: dict, before: dict | None,
    k: int,
) -> dict:  # fmt: skip
    """Score what served after night `night` on the next period, beside frozen, the previous
    champion (when tonight crowned another) and the peers; record it in the replay's state."""
    root, home_path = Path(folder), Path(home)
    state = ReplayState.load(root)
    events = load_events(root / "events.parquet")
    cut, end = state.cuts[night], state.cuts[night + 1]
    judged = next_period(events, cut, end)
    exports = home_path / "exports"
    after = ranking_champion(home_path / "warehouse.duckdb", dataset)
    ids = IdMaps.read(home_path / "warehouse.duckdb", dataset, events)
    cold = cold_start_items(exports, dataset, events)
    if state.frozen is None and after is not None:
        state.frozen = keep_scorer({**after, "cold_start": cold}, root / "frozen")
    served, fallback_users = served_lists(exports, dataset, events, judged, k)
    lists = {ENCORE: served}
    timings = {}
    if state.frozen is not None:
        started = time.perf_counter()
        lists[FROZEN] = version_lists(
            Path(state.frozen["artifact_dir"]), state.frozen["cold_start"], ids, judged, k
        )
        timings[FROZEN] = time.perf_counter() - started
    promoted = bool(before and after and before["version"] != after["version"])
    if promoted:
        lists[PREVIOUS] = version_lists(
            Path(before["artifact_dir"]), before.get("cold_start", cold), ids, judged, k
        )
    for name, (peer, seconds) in peer_lists(events, cut, judged, state.peers, k).items():
        lists[name], timings[name] = peer, seconds
    vectors = {name: judged.score(given, k) for name, given in lists.items()}
    save_vectors(root, night, vectors, judged.seen_users)
    record = {
        "night": night,
        "cut": cut,
        "end": end,
        "active_users": len(judged.users),
        "seen_users": int(judged.seen_users.sum()),
        "new_user_share": float(1 - judged.seen_users.mean()) if len(judged.users) else 0.0,
        "new_item_share": judged.new_items,
        "users_with_a_list": sum(1 for u in judged.users if len(served.get(int(u), ())) > 0),
        "cold_start_users": fallback_users,
        "coverage": {
            name: len({int(i) for given in lst.values() for i in given}) / len(events.item_ids)
            for name, lst in lists.items()
        },
        "means": {
            name: {metric: float(v.mean()) if len(v) else 0.0 for metric, v in by.items()}
            for name, by in vectors.items()
        },
        "champion_before": before,
        "champion_after": after and {**after, "cold_start": cold},
        "promoted": promoted,
        "nightly": nightly,
        "peer_seconds": timings,
        "home_bytes": _home_bytes(home_path),
    }
    state.nights = [n for n in state.nights if n["night"] != night] + [record]
    state.save(root)
    return record


def _home_bytes(home: Path) -> int:
    """The data home's size without the replay's own folder and Prefect's database."""
    skip = {home / "replay", home / "prefect"}
    total = 0
    for path in home.rglob("*"):
        if any(parent in skip for parent in path.parents) or not path.is_file():
            continue
        total += path.stat().st_size
    return total
