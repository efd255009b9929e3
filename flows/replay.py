"""`replay`: a timestamped dataset delivered period by period, the real nightly after each, and
what served judged on the next period (issue 34: the next day is what users meet).

1. plan: read the dataset from the user's sources.toml once, cut its timeline (the first cut at
   `start` of its events, then one per period), choose the peers' settings on the period
   before the start, write the replay's own sources.toml (a resumed replay keeps its plan);
2. per night not yet judged: land the period as one file, run `nightly_retrain` (ingest,
   validation, warm start, gate, refit, scoring, retention: the night a user would have), then
   judge what it served on the next period beside frozen, the previous champion and the peers;
3. the report: tables, paired differences, plots (tasks/replay/report.py).

It runs in its own data home (the CLI's `--home`): the replay's warehouse, models and lists are
the replay's, never a production home's. Killed, it resumes at the first night not judged.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow
from prefect.logging import get_run_logger

from flows.nightly import nightly_retrain, parent_heartbeat_only
from flows.params import ReplayParams
from tasks.home import EncoreHome
from tasks.replay.report import write_report
from tasks.replay.state import ReplayState
from tasks.replay.tasks import judge_night_task, keep_scorer, land_period_task, plan_replay_task


def _night_summary(night: dict) -> dict:
    """What the replay keeps of a nightly run: its wall time by stage and whether it trained
    warm."""
    outcomes = night.get("outcomes", [])
    started = [((o.get("training") or {}).get("started_from") or {}) for o in outcomes]
    trained = [s for s in started if s]
    return {
        "seconds": night.get("seconds"),
        "timings": night.get("timings", {}),
        "warm": bool(trained) and all(s.get("warm") for s in trained),
        "statuses": {f"{o['model']}": o.get("status") for o in outcomes},
        "problems": night.get("problems", []),
        "warnings": night.get("warnings", []),
    }


@flow(name="replay", flow_run_name="replay {params.dataset} by {params.period}")
def replay(params: ReplayParams) -> dict:
    """Replay a dataset night by night and judge every night's lists on the next period."""
    home = EncoreHome.from_env().ensure()
    logger = get_run_logger()
    folder = ReplayState.folder(home.root, params.dataset)
    planned = plan_replay_task(
        params.sources_file, params.dataset, str(folder), params.start, params.period,
        params.nights, params.nightly.k,
    )  # fmt: skip
    logger.info(f"replay plan: {planned}")
    state = ReplayState.load(folder)
    nightly = params.nightly.model_copy(
        update={"sources_file": str(folder / "sources.toml"), "datasets": [params.dataset]}
    )
    for night in range(len(state.cuts) - 1):  # already judged nights are skipped (resumed)
        if night in ReplayState.load(folder).done:
            continue
        land_period_task(str(folder), params.dataset, night)
        # Nights are judged in order, so the previous one is on record (with its cold-start list).
        previous = [n for n in ReplayState.load(folder).nights if n["night"] == night - 1]
        before = keep_scorer(
            previous[0]["champion_after"] if previous else None, folder / "previous"
        )
        started = time.perf_counter()
        with parent_heartbeat_only():
            state_of_night = nightly_retrain(nightly, return_state=True)
        result = state_of_night.result(raise_on_failure=False)
        if not isinstance(result, dict):  # a failed night: the champion serves on
            result = {"problems": [str(state_of_night.message)]}
            logger.warning(f"night {night} failed: {state_of_night.message}")
        result.setdefault("seconds", time.perf_counter() - started)
        record = judge_night_task(
            str(folder), str(home.root), params.dataset, night, _night_summary(result), before,
            params.nightly.k,
        )  # fmt: skip
        means = record["means"]
        logger.info(
            f"night {night}: next-period Recall@10 "
            + ", ".join(f"{name} {m['recall@10']:.4f}" for name, m in means.items())
        )
    out = Path(params.results_dir) if params.results_dir else None
    summary = write_report(folder, out)
    logger.info(f"replay report: {folder / f'replay_{params.dataset}.md'}")
    return summary
