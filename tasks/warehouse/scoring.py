"""Batch scoring: the champion's ONNX scorer over every user, into `recommendations` + Parquet.

Users the model knows get its top-K (items they have interacted with excluded through the
scorer's `exclude` input); users who arrived after it was trained get the most popular items
they have not seen, marked `fallback`. The previous set for that (dataset, model kind) is
replaced in one transaction, so readers see either the old set or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq

from models_src.onnx_export import id_map_checksum
from tasks.warehouse.registry import RegistryError, champion, verify_artifacts
from tasks.warehouse.schema import transaction

RECOMMENDATIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS recommendations (
    dataset VARCHAR NOT NULL,
    user_id VARCHAR NOT NULL,
    rank INTEGER NOT NULL,
    item_id VARCHAR NOT NULL,
    score DOUBLE,
    model_kind VARCHAR NOT NULL,
    model_version INTEGER NOT NULL,
    generated_at TIMESTAMP NOT NULL,
    source VARCHAR NOT NULL          -- model | fallback
);
"""


def open_session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    """A CPU session with threads = cores and no spinning: onnxruntime's spinning pool slows
    PyTorch in the same process (onnxruntime #13808)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _ids(con, table: str, dataset: str) -> list[str]:
    return [
        r[0]
        for r in con.execute(
            f"SELECT external_id FROM {table} WHERE dataset = ? ORDER BY idx", [dataset]
        ).fetchall()
    ]


def _seen(con, dataset: str, num_users: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR of the items each user has interacted with (every trainable interaction)."""
    pairs = con.execute(
        "SELECT DISTINCT user_idx, item_idx FROM training_interactions WHERE dataset = ?"
        " ORDER BY 1, 2",
        [dataset],
    ).fetchnumpy()
    users, items = pairs["user_idx"].astype(np.int64), pairs["item_idx"].astype(np.int64)
    rowptr = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=num_users))])
    return rowptr, items


def _check_scorer(
    row: dict, model: onnx.ModelProto, user_ids: list[str], item_ids: list[str], sizes: dict
) -> None:
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get("model_version") != str(row["version"]):
        raise RegistryError(
            f"scorer of version {row['version']} says it is version {meta.get('model_version')}"
        )
    expected = id_map_checksum(user_ids[: sizes["num_users"]], item_ids[: sizes["num_items"]])
    if meta.get("id_map_sha256") != expected:
        raise RegistryError(
            f"model version {row['version']}: the warehouse's id maps no longer"
            " match the ones it was trained with"
        )


def score_dataset(
    con: duckdb.DuckDBPyConnection,
    kind: str,
    dataset: str,
    exports_dir: Path,
    chunk_users: int = 2048,
    threads: int | None = None,
) -> dict:
    """Score every user of `dataset` with the champion of `kind`; returns counts and timings."""
    started = time.perf_counter()
    row = champion(con, kind, dataset)
    if row is None:
        raise RegistryError(f"no champion {kind} model for {dataset}: nothing to score with")
    verify_artifacts(row)
    directory = Path(row["artifact_dir"])
    sizes = json.loads((directory / "scorer_meta.json").read_text())
    user_ids, item_ids = _ids(con, "user_ids", dataset), _ids(con, "item_ids", dataset)
    _check_scorer(
        row,
        onnx.load(directory / "scorer.onnx", load_external_data=False),
        user_ids,
        item_ids,
        sizes,
    )
    session = open_session(directory / "scorer.onnx", threads)
    rowptr, seen = _seen(con, dataset, len(user_ids))
    rows = _Rows()
    _score_known_users(session, rowptr, seen, sizes, chunk_users, rows)
    _popular_fallback(
        con, dataset, range(sizes["num_users"], len(user_ids)), rowptr, seen, sizes["k"], rows
    )
    table = rows.table(dataset, kind, row["version"], user_ids, item_ids)
    path = _write_parquet(table, exports_dir / f"recommendations_{dataset}_{kind}.parquet")
    _replace(con, dataset, kind, path)
    return {
        "dataset": dataset,
        "kind": kind,
        "model_version": row["version"],
        "users": len(user_ids),
        "model_users": sizes["num_users"],
        "fallback_users": max(0, len(user_ids) - sizes["num_users"]),
        "rows": table.num_rows,
        "parquet": str(path),
        "seconds": time.perf_counter() - started,
    }


@dataclass
class _Rows:
    """Recommendation rows as index arrays, gathered chunk by chunk, named at the end."""

    parts: list[dict[str, np.ndarray]] = field(default_factory=list)

    def add(self, users, ranks, items, scores, source: str) -> None:
        self.parts.append(
            {
                "user": np.asarray(users, np.int64),
                "rank": np.asarray(ranks, np.int32),
                "item": np.asarray(items, np.int64),
                "score": np.asarray(scores, np.float64),
                "source": np.full(len(users), source, dtype=object),
            }
        )

    def column(self, name: str) -> np.ndarray:
        return np.concatenate([part[name] for part in self.parts]) if self.parts else np.array([])

    def table(
        self, dataset: str, kind: str, version: int, user_ids: list[str], item_ids: list[str]
    ) -> pa.Table:
        users, items = self.column("user").astype(np.int64), self.column("item").astype(np.int64)
        n = len(users)
        return pa.table(
            {
                "dataset": pa.array([dataset] * n, pa.string()),
                "user_id": pa.array(
                    np.array(user_ids, dtype=object)[users] if n else [], pa.string()
                ),
                "rank": pa.array(self.column("rank"), pa.int32()),
                "item_id": pa.array(
                    np.array(item_ids, dtype=object)[items] if n else [], pa.string()
                ),
                "score": pa.array(self.column("score"), pa.float64()),
                "model_kind": pa.array([kind] * n, pa.string()),
                "model_version": pa.array([version] * n, pa.int32()),
                "generated_at": pa.array([datetime.now()] * n, pa.timestamp("us")),
                "source": pa.array(self.column("source"), pa.string()),
            }
        )


def _score_known_users(session, rowptr, seen, sizes: dict, chunk_users: int, rows: _Rows) -> None:
    """The scorer over every user the model knows, seen items masked through `exclude`."""
    k, known_users, known_items = sizes["k"], sizes["num_users"], sizes["num_items"]
    for start in range(0, known_users, chunk_users):
        users = np.arange(start, min(start + chunk_users, known_users))
        exclude = np.zeros((len(users), known_items), dtype=bool)
        for row_index, user in enumerate(users):
            items = seen[rowptr[user] : rowptr[user + 1]]
            exclude[row_index, items[items < known_items]] = True
        top_items, top_scores = session.run(None, {"users": users, "exclude": exclude})
        valid = np.isfinite(top_scores)  # a user who has seen nearly everything gets fewer
        rows.add(
            np.repeat(users, k)[valid.ravel()],
            np.tile(np.arange(1, k + 1), len(users))[valid.ravel()],
            top_items[valid],
            top_scores[valid],
            "model",
        )


def _popular_fallback(con, dataset: str, users: range, rowptr, seen, k: int, rows: _Rows) -> None:
    """Most interacted-with items the user has not seen, for users the model does not know."""
    counts = con.execute(
        "SELECT item_idx, count(*) AS n FROM training_interactions WHERE dataset = ?"
        " GROUP BY 1 ORDER BY n DESC, item_idx LIMIT ?",
        [dataset, k + 1000],
    ).fetchall()
    for user in users:
        already = set(seen[rowptr[user] : rowptr[user + 1]].tolist())
        picks = [(item, n) for item, n in counts if item not in already][:k]
        rows.add(
            [user] * len(picks),
            range(1, len(picks) + 1),
            [i for i, _ in picks],
            [float(n) for _, n in picks],
            "fallback",
        )


def _write_parquet(table: pa.Table, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".parquet.partial")
    pq.write_table(table, partial)
    os.replace(partial, path)
    return path


def _replace(con, dataset: str, kind: str, path: Path) -> None:
    con.execute(RECOMMENDATIONS_SCHEMA)
    with transaction(con):
        con.execute(
            "DELETE FROM recommendations WHERE dataset = ? AND model_kind = ?", [dataset, kind]
        )
        con.execute("INSERT INTO recommendations SELECT * FROM read_parquet(?)", [str(path)])
