"""`encore predict`: the champion rating model's predicted rating for each (user, item) pair
(from its serving refit when it has one: the model that saw all of the snapshot)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tasks.ingest.stage import sql_str
from tasks.registry.publish import PAIRS_FILE
from tasks.registry.registry import RegistryError, champion, serving_version, verify_artifacts
from tasks.score.scoring import open_session

UNKNOWN = np.int64(2**31)  # past any index the model knows: it falls back to the biases


def _read_pairs(con: duckdb.DuckDBPyConnection, path: Path) -> str:
    reader = "read_parquet" if path.suffix == ".parquet" else "read_csv"
    source = f"{reader}({sql_str(str(path))})"
    columns = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
    missing = sorted({"user_id", "item_id"} - columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; the file has {sorted(columns)}")
    return source


def predict_pairs(con: duckdb.DuckDBPyConnection, dataset: str, pairs: Path, out: Path) -> dict:
    """Predictions in the input's row order (joins do not keep order, so it is carried along)."""
    current = champion(con, "rating", dataset)
    if current is None:
        raise RegistryError(f"no champion rating model for {dataset}")
    row = serving_version(con, current)
    verify_artifacts(row)
    source = _read_pairs(con, pairs)
    frame = con.execute(
        f"""SELECT p.user_id::VARCHAR AS user_id, p.item_id::VARCHAR AS item_id,
                   coalesce(u.idx, {UNKNOWN}) AS user_idx, coalesce(i.idx, {UNKNOWN}) AS item_idx
            FROM (SELECT *, row_number() OVER () AS input_order FROM {source}) p
            LEFT JOIN user_ids u ON u.dataset = ? AND u.external_id = p.user_id::VARCHAR
            LEFT JOIN item_ids i ON i.dataset = ? AND i.external_id = p.item_id::VARCHAR
            ORDER BY p.input_order""",
        [dataset, dataset],
    ).fetchnumpy()
    session = open_session(Path(row["artifact_dir"]) / PAIRS_FILE)
    users, items = frame["user_idx"].astype(np.int64), frame["item_idx"].astype(np.int64)
    rating, known = session.run(None, {"users": users, "items": items})
    table = pa.table(
        {
            "user_id": frame["user_id"].astype(str),
            "item_id": frame["item_id"].astype(str),
            "predicted_rating": rating.astype(np.float64),
            "source": np.where(known > 0, "model", "fallback"),
            "model_version": np.full(len(users), row["version"], dtype=np.int32),
        }
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        pq.write_table(table, out)
    else:
        pacsv.write_csv(table, out)
    return {
        "pairs": table.num_rows,
        "fallback": int((known == 0).sum()),
        "out": str(out),
        "model_version": row["version"],
    }
