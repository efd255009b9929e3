"""Export a dataset's trainable interactions for models_src (which never reads the warehouse)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np

from models_src.data import Interactions
from tasks.files import write_atomically
from tasks.train.due import latest_passed_snapshot


def export_interactions(
    con: duckdb.DuckDBPyConnection, dataset: str, path: Path, snapshot_id: int | None = None
) -> dict:
    """Write rows of passed snapshots up to `snapshot_id` (default: the latest) to Parquet, with
    the id maps, the item groups and the rating scale in its metadata. Returns a summary."""
    snapshot_id = snapshot_id or latest_passed_snapshot(con, dataset)
    if snapshot_id is None:
        raise ValueError(f"dataset {dataset!r} has no passed snapshot to train on")
    kind, low, high = con.execute(
        "SELECT kind, rating_low, rating_high FROM datasets WHERE name = ?", [dataset]
    ).fetchone()
    rows = con.execute(
        """SELECT user_idx, item_idx, rating, epoch(ts)::BIGINT AS ts
           FROM training_interactions WHERE dataset = ? AND snapshot_id <= ?
           ORDER BY row_id""",
        [dataset, snapshot_id],
    ).fetchnumpy()
    user_ids = [
        r[0]
        for r in con.execute(
            "SELECT external_id FROM user_ids WHERE dataset = ? ORDER BY idx", [dataset]
        ).fetchall()
    ]
    item_ids = [
        r[0]
        for r in con.execute(
            "SELECT external_id FROM item_ids WHERE dataset = ? ORDER BY idx", [dataset]
        ).fetchall()
    ]
    groups = con.execute(
        """SELECT item_idx, any_value(item_group) FROM training_interactions
           WHERE dataset = ? AND item_group IS NOT NULL GROUP BY item_idx""",
        [dataset],
    ).fetchall()
    item_group, names = None, []
    if groups:
        names = sorted({g for _, g in groups})
        code = {name: i for i, name in enumerate(names)}
        item_group = np.full(len(item_ids), -1, dtype=np.int64)
        for item, group in groups:
            item_group[item] = code[group]
    # DuckDB hands a column with NULLs over as a masked array: a source without timestamps has
    # every ts masked, and then the export carries none (np.isnan of masked values is masked).
    has_ts = bool(len(rows["ts"])) and not np.ma.getmaskarray(rows["ts"]).any()
    meta = {
        "name": dataset,
        "snapshot_id": snapshot_id,
        "user_ids": user_ids,
        "item_ids": item_ids,
        # Group codes follow the sorted names, so a new artist shifts them: warm start maps
        # a champion's group rows by name.
        "group_ids": names,
    }
    if kind == "explicit":
        meta["rating_scale"] = [low, high]
    data = Interactions(
        rows["user_idx"].astype(np.int64),
        rows["item_idx"].astype(np.int64),
        len(user_ids),
        len(item_ids),
        rows["rating"].astype(np.float32) if kind == "explicit" else None,
        np.ma.getdata(rows["ts"]).astype(np.int64) if has_ts else None,
        item_group,
        meta,
    )
    write_atomically(path, data.to_parquet)
    return {
        "dataset": dataset,
        "kind": kind,
        "snapshot_id": snapshot_id,
        "path": str(path),
        "rows": len(data),
        "users": data.num_users,
        "items": data.num_items,
    }
