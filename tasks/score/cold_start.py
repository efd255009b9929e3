"""The cold-start list: what a user without history gets (a user id never seen, or one that
arrived after the model was trained).

It is recent popularity in the warehouse, each interaction halved per half-life of its age
before the newest (models_src/recency.py ranks the same way), with the half-life the gate chose
on val among users without history (`record_cold_start_choice`). Batch scoring builds it beside
the lists, in their transaction, and exports it (`cold_start_recommendations`,
`exports/cold_start_<dataset>.parquet`); `encore recommend` returns it for an
unknown user id (`cold_start_rows`).
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb

COLD_START_SCHEMA = """
CREATE TABLE IF NOT EXISTS cold_start_choices (  -- the gate's choice, one row per gated night
    dataset VARCHAR NOT NULL,
    snapshot_id INTEGER,
    half_life_days DOUBLE,                          -- NULL: all time
    chosen_at TIMESTAMP NOT NULL,
    val_json VARCHAR                             -- val Recall@K of every half-life tried
);
CREATE TABLE IF NOT EXISTS cold_start_recommendations (  -- the list of users never seen
    dataset VARCHAR NOT NULL,
    rank INTEGER NOT NULL,
    item_id VARCHAR NOT NULL,
    score DOUBLE,                                -- interactions, each halved per half-life of age
    half_life_days DOUBLE,
    generated_at TIMESTAMP NOT NULL
);
"""


def record_cold_start_choice(
    con: duckdb.DuckDBPyConnection, dataset: str, snapshot_id: int | None, choice: dict
) -> None:
    """The cold-start half-life the gate chose tonight, for scoring to build the list from."""
    con.execute(COLD_START_SCHEMA)
    con.execute(
        "INSERT INTO cold_start_choices VALUES (?, ?, ?, now()::TIMESTAMP, ?)",
        [dataset, snapshot_id, choice.get("half_life_days"), json.dumps(choice.get("val", {}))],
    )


def cold_start_half_life(con: duckdb.DuckDBPyConnection, dataset: str) -> float | None:
    con.execute(COLD_START_SCHEMA)
    row = con.execute(
        "SELECT half_life_days FROM cold_start_choices WHERE dataset = ?"
        " ORDER BY chosen_at DESC LIMIT 1",
        [dataset],
    ).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def cold_start_items(
    con: duckdb.DuckDBPyConnection, dataset: str, half_life_days: float | None, limit: int
) -> list[tuple[int, float]]:
    """(item_idx, interactions each halved per `half_life_days` of age before the newest) of the
    cold-start list, most first; ties by all-time interactions, then index: the order of
    models_src/recency.py's `popularity_scores`, in SQL over the warehouse."""
    recent = "count(*)"
    if half_life_days is not None:
        recent = (
            f"sum(pow(0.5, (epoch(n.newest) - epoch(t.ts)) / 86400.0 / {float(half_life_days)!r}))"
        )
    rows = con.execute(
        f"""WITH n AS (SELECT max(ts) AS newest FROM training_interactions WHERE dataset = $d)
            SELECT t.item_idx, {recent} AS recent, count(*) AS every
            FROM training_interactions t, n WHERE t.dataset = $d
            GROUP BY 1 ORDER BY recent DESC NULLS LAST, every DESC, t.item_idx LIMIT $limit""",
        {"d": dataset, "limit": limit},
    ).fetchall()
    return [(int(item), float(recent or 0.0)) for item, recent, _ in rows]


def cold_start_file(exports_dir: Path, dataset: str) -> Path:
    # Not recommendations_<dataset>_*.parquet: consumers glob that for the lists.
    return exports_dir / f"cold_start_{dataset}.parquet"


def replace_cold_start_list(
    con: duckdb.DuckDBPyConnection,
    dataset: str,
    items: list[tuple[int, float]],
    half_life_days: float | None,
) -> None:
    """The list of users never seen, replaced (inside the caller's transaction: scoring's, so it
    changes with the lists)."""
    con.execute("DELETE FROM cold_start_recommendations WHERE dataset = ?", [dataset])
    con.executemany(
        """INSERT INTO cold_start_recommendations
           SELECT ?, ?, external_id, ?, ?, now()::TIMESTAMP FROM item_ids
           WHERE dataset = ? AND idx = ?""",
        [
            [dataset, rank, float(n), half_life_days, dataset, item]
            for rank, (item, n) in enumerate(items, start=1)
        ],
    )


def cold_start_rows(con: duckdb.DuckDBPyConnection, dataset: str, user_id: str, k: int) -> list:
    """(rank, item with its name, score, 'cold start', half-life) of the cold-start list, for a
    user id `dataset` has never seen; none for a known user (their list, or why not, stands)."""
    known = con.execute(
        "SELECT count(*) FROM user_ids WHERE dataset = ? AND external_id = ?", [dataset, user_id]
    ).fetchone()[0]
    if known:
        return []
    con.execute(COLD_START_SCHEMA)
    return con.execute(
        """SELECT c.rank, c.item_id || coalesce(' ' || chr(8212) || ' ' || n.name, ''), c.score,
                  'cold start', c.half_life_days
           FROM cold_start_recommendations c
           LEFT JOIN item_names n ON n.dataset = c.dataset AND n.external_id = c.item_id
           WHERE c.dataset = ? AND c.rank <= ? ORDER BY c.rank""",
        [dataset, k],
    ).fetchall()
