"""The dataset-wide figures the table-level suite judges, as training would see the data after
tonight: sizes, growth, volume against recent snapshots, new ids (and whether they look like a
remap), time going backwards, the heaviest user and item."""

from __future__ import annotations

import duckdb
import numpy as np

from tasks.validate.info import (
    DatasetInfo,
)


def _profile(con: duckdb.DuckDBPyConnection, info: DatasetInfo, snapshot_id: int) -> dict:
    """Dataset-wide figures for the table-level suite: as training would see it after tonight."""
    history = (
        "i.snapshot_id IN "
        "(SELECT snapshot_id FROM snapshots WHERE dataset = ? AND status = 'passed')"
    )
    tonight = "i.snapshot_id = ?"
    both = f"({history} OR {tonight})"
    users, items, rows = con.execute(
        f"""SELECT count(DISTINCT user_idx), count(DISTINCT item_idx), count(*)
            FROM interactions i WHERE i.dataset = ? AND {both}""",
        [info.name, info.name, snapshot_id],
    ).fetchone()
    before, history_mean = con.execute(
        f"SELECT count(*), avg(rating) FROM interactions i WHERE i.dataset = ? AND {history}",
        [info.name, info.name],
    ).fetchone()
    tonight_rows, tonight_mean = con.execute(
        f"SELECT count(*), avg(rating) FROM interactions i WHERE {tonight}", [snapshot_id]
    ).fetchone()
    read, quarantined, errors, rejected, worst_file = con.execute(
        """SELECT coalesce(sum(rows_read), 0), coalesce(sum(quarantined), 0),
                  count(*) FILTER (WHERE status = 'error'),
                  coalesce(sum(rejected) FILTER (WHERE status = 'loaded'), 0),
                  coalesce(max(rejected / rows_read) FILTER (WHERE status = 'loaded'
                                                           AND rows_read > 0), 0)
           FROM source_files WHERE snapshot_id = ?""",
        [snapshot_id],
    ).fetchone()
    # Rows of a file refused whole count under `unreadable_files`, not as malformed lines.
    readable = con.execute(
        "SELECT coalesce(sum(rows_read), 0) FROM source_files"
        " WHERE snapshot_id = ? AND status = 'loaded'",
        [snapshot_id],
    ).fetchone()[0]
    volume_ratio, new_users, new_items = _against_recent(con, info.name, snapshot_id, tonight_rows)
    top_user, top_item = (
        _top_share(con, snapshot_id, column) for column in ("user_idx", "item_idx")
    )
    backdated = _backdated_share(con, info, snapshot_id) if before and tonight_rows else None
    shift = None
    if info.kind == "explicit" and before and tonight_rows:
        span = (info.rating_high - info.rating_low) or 1.0
        shift = abs(tonight_mean - history_mean) / span
    return {
        "n_users": users,
        "n_items": items,
        "n_interactions": rows,
        "new_interactions": tonight_rows,
        "growth": (rows / before) if before else None,
        "mean_rating_shift": shift,
        "top_user_share": top_user,
        "top_item_share": top_item,
        "volume_ratio": volume_ratio,
        "backdated_share": backdated,
        "new_user_share": new_users,
        "new_item_share": new_items,
        "quarantine_fraction": (quarantined / read) if read else 0.0,
        "reject_fraction": (rejected / readable) if readable else 0.0,
        "worst_file_reject_fraction": float(worst_file),
        "unreadable_files": errors,
    }


def _backdated_share(
    con: duckdb.DuckDBPyConnection, info: DatasetInfo, snapshot_id: int
) -> float | None:
    """The share of tonight's rows older than the newest event of the passed history (None
    without timestamps): time going backwards."""
    if not info.has_timestamps:
        return None
    return con.execute(
        """SELECT avg((i.ts < h.newest)::INTEGER)
           FROM interactions i,
                (SELECT max(ts) AS newest FROM interactions WHERE dataset = ? AND snapshot_id IN
                    (SELECT snapshot_id FROM snapshots WHERE dataset = ? AND status = 'passed')) h
           WHERE i.snapshot_id = ? AND i.ts IS NOT NULL AND h.newest IS NOT NULL""",
        [info.name, info.name, snapshot_id],
    ).fetchone()[0]


# One user's (item's) share of tonight is only checked among at least this many users (items).
TOP_SHARE_MIN_DISTINCT = 100


def _top_share(con: duckdb.DuckDBPyConnection, snapshot_id: int, column: str) -> float | None:
    """The largest share of tonight's rows held by one user (or item), or None when tonight
    has too few of them for a share to mean anything."""
    distinct, top, total = con.execute(
        f"""SELECT count(*), max(n), sum(n) FROM
               (SELECT count(*) AS n FROM interactions WHERE snapshot_id = ? GROUP BY {column})""",
        [snapshot_id],
    ).fetchone()
    if not distinct or distinct < TOP_SHARE_MIN_DISTINCT:
        return None
    return top / total


# The volume and new-id checks compare tonight with this many of the latest passed snapshots,
# and only once there are at least RECENT_MIN of them (the first nights set the baseline).
RECENT, RECENT_MIN = 7, 3


def _against_recent(
    con: duckdb.DuckDBPyConnection, dataset: str, snapshot_id: int, tonight_rows: int
) -> tuple[float | None, float | None, float | None]:
    """Tonight's rows / the recent snapshots' median, and the shares of tonight's rows whose
    user, or item, looks remapped: new tonight while the ids seen before went silent (see
    `_remapped_share`); None while the dataset has too little history."""
    recent = con.execute(
        "SELECT snapshot_id, loaded FROM snapshots WHERE dataset = ? AND status = 'passed'"
        " AND snapshot_id < ? ORDER BY snapshot_id DESC LIMIT ?",
        [dataset, snapshot_id, RECENT],
    ).fetchall()
    if len(recent) < RECENT_MIN or not tonight_rows:
        return None, None, None
    median = float(np.median([loaded for _, loaded in recent]))
    shares = [
        _remapped_share(con, snapshot_id, column, table)
        for column, table in (("user_idx", "user_ids"), ("item_idx", "item_ids"))
    ]
    return (tonight_rows / median if median else None), shares[0], shares[1]


# An id remap upstream makes every id new at once: the ids seen before all go silent. A real wave
# of sign-ups (MovieLens 100K's week of 1998-03-21: 91.7 % of its rows from new users) still
# brings users seen before back. Tonight's new ids are judged a remap only when fewer than this
# share of tonight's distinct ids (and fewer than RETURNING_MIN) were seen before.
RETURNING_SHARE, RETURNING_MIN = 0.02, 3


def _remapped_share(con: duckdb.DuckDBPyConnection, snapshot_id: int, column: str, table: str):
    """The share of tonight's rows whose id is new tonight, when almost none of tonight's ids
    were seen before; 0 when enough were (growth, not a remap)."""
    new_share, returning, distinct = con.execute(
        f"""SELECT avg((m.first_snapshot = i.snapshot_id)::INTEGER),
                   count(DISTINCT i.{column}) FILTER (WHERE m.first_snapshot < i.snapshot_id),
                   count(DISTINCT i.{column})
            FROM interactions i
            JOIN {table} m ON m.dataset = i.dataset AND m.idx = i.{column}
            WHERE i.snapshot_id = ?""",
        [snapshot_id],
    ).fetchone()
    came_back = returning >= max(RETURNING_MIN, RETURNING_SHARE * distinct)
    return 0.0 if came_back else float(new_share or 0.0)
