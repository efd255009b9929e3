"""Which models are due tonight, read from the warehouse alone: no Prefect, no torch, so
`encore nightly` can answer "nothing new" in a second before it starts anything (issue 38).

The nightly flow's `plan training` task (tasks/train/plan.py) asks the same questions and then
heals what a killed night left (a candidate published but never gated).
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from tasks.home import recommendations_file
from tasks.registry.registry import champion, serving_version, slot_of

# Lists for every dataset (GAT-BPR, judged on liked items for ratings); predicted stars too for
# explicit ones.
DEFAULT_MODELS = {"implicit": ["gat-bpr"], "explicit": ["gat-bpr", "rating"]}


def assess(con, dataset: str, model: str, retrain: bool, exports_dir: Path | None = None) -> dict:
    """Is `model` on `dataset` due tonight? A work item, or a skip with its reason. A version
    published by a night killed before its gate is due again, under "interrupted"; nothing is
    written here (the plan task marks it)."""
    item = {"dataset": dataset, "model": model}
    snapshot = latest_passed_snapshot(con, dataset)
    newest, status = con.execute(
        "SELECT snapshot_id, status FROM snapshots WHERE dataset = ?"
        " ORDER BY snapshot_id DESC LIMIT 1",
        [dataset],
    ).fetchone() or (None, None)
    current = champion(con, slot_of(model), dataset)
    serving = (
        f"champion v{current['version']} ({current['kind']}) keeps serving"
        if current
        else "no champion yet"
    )
    if snapshot is None:
        return {**item, "status": "skipped", "reason": f"no passed snapshot yet; {serving}"}
    if newest != snapshot and status != "passed":
        return {
            **item,
            "status": "skipped",
            "snapshot_id": newest,
            "reason": f"snapshot {newest} is {status} (see Data); {serving}",
        }
    # A version abandoned as interrupted does not count as trained (so a retried plan still
    # trains its snapshot again).
    trained = con.execute(
        "SELECT version, status FROM model_versions WHERE kind = ? AND dataset = ?"
        " AND snapshot_id = ? AND role = 'evaluated' AND version NOT IN"
        " (SELECT challenger FROM promotions WHERE action = 'interrupted')"
        " ORDER BY version DESC LIMIT 1",
        [model, dataset, snapshot],
    ).fetchone()
    item["lists_missing"] = _lists_missing(con, current, exports_dir)
    if trained and trained[1] == "candidate":  # published, then the night was killed
        return {**item, "status": "due", "snapshot_id": snapshot, "interrupted": trained[0]}
    if trained and not retrain:
        reason = (
            f"no new data: snapshot {snapshot} already trained v{trained[0]}"
            f" ({trained[1]}); {serving}"
        )
        if item["lists_missing"]:  # a champion whose scoring was killed
            return {**item, "status": "score", "snapshot_id": snapshot, "reason": reason}
        return {**item, "status": "skipped", "snapshot_id": snapshot, "reason": reason}
    return {**item, "status": "due", "snapshot_id": snapshot}


INTERRUPTED = "published, but its night ended before the gate: its snapshot is trained again"


def _lists_missing(con, current: dict | None, exports_dir: Path | None = None) -> bool:
    """A ranking champion with none of its serving version's lists in `recommendations` (the
    night that crowned it was killed before its lists were loaded), or, given `exports_dir`,
    without them in its Parquet export."""
    if current is None or current["slot"] != "ranking":
        return False
    serving = serving_version(con, current)
    exists = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'recommendations'"
    ).fetchone()[0]
    if not exists:
        return True
    found = con.execute(
        "SELECT count(*) FROM recommendations WHERE dataset = ? AND model_version = ?",
        [current["dataset"], serving["version"]],
    ).fetchone()[0]
    if found == 0:
        return True
    return exports_dir is not None and not _export_holds(
        con, exports_dir, current["dataset"], serving["version"], found
    )


def _export_holds(con, exports_dir: Path, dataset: str, version: int, rows: int) -> bool:
    """The Parquet export holds the serving version's lists, as many rows as DuckDB: a night
    killed between the lists' commit and the export's rename leaves the old file, or none, and
    is then scored again (issue 37)."""
    path = recommendations_file(exports_dir, dataset)
    if not path.exists():
        return False
    try:
        exported = con.execute(
            "SELECT count(*) FILTER (WHERE model_version = ?), count(*) FROM read_parquet(?)",
            [version, str(path)],
        ).fetchone()
    except duckdb.Error:
        return False  # unreadable: written again
    return exported == (rows, rows)


def latest_passed_snapshot(con: duckdb.DuckDBPyConnection, dataset: str) -> int | None:
    row = con.execute(
        "SELECT max(snapshot_id) FROM snapshots WHERE dataset = ? AND status = 'passed'", [dataset]
    ).fetchone()
    return row[0]


def assess_all(
    con,
    datasets: list[str],
    models: dict[str, list[str]],
    retrain: bool,
    exports_dir: Path | None = None,
) -> list[dict]:
    """`assess` for each dataset's models (`models[dataset]`, else DEFAULT_MODELS of its kind);
    datasets never ingested are left out (the ingest section of the report says why)."""
    kinds = dict(con.execute("SELECT name, kind FROM datasets").fetchall())
    return [
        assess(con, dataset, model, retrain, exports_dir)
        for dataset in datasets
        if dataset in kinds
        for model in models.get(dataset, DEFAULT_MODELS[kinds[dataset]])
    ]
