"""Batch scoring: the ranking champion's ONNX scorer over every user, into `recommendations` +
Parquet. What scores is the champion's serving refit (trained on all of the snapshot) when it has
one, else the champion itself.

Users the model knows get its top-K (items they have interacted with excluded through the
scorer's `exclude` input), marked `model`, or `baseline` when the champion is a baseline
(MostPopular, ALS) that won the gate; users who arrived after it was trained get the cold-start
list's items they have not seen, marked `fallback`. The dataset's previous lists are replaced in
one transaction, so readers see either the old set or the new one, never a mix.

Users never seen at all get the cold-start list itself (`cold_start_recommendations` and
`exports/cold_start_<dataset>.parquet`; `encore recommend` returns it for an
unknown user): recent popularity with the half-life the gate chose on val for users without
history (models_src/serving.py: `cold_start_on_val`), all time until a gate has chosen one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.faults import crash_point
from tasks.files import write_atomically
from tasks.home import recommendations_file
from tasks.registry.registry import RegistryError, champion, serving_version, verify_artifacts
from tasks.score.cold_start import (
    COLD_START_SCHEMA,
    cold_start_file,
    cold_start_half_life,
    cold_start_items,
    replace_cold_start_list,
)
from tasks.warehouse.schema import transaction

RECOMMENDATIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS recommendations (
    dataset VARCHAR NOT NULL,
    user_id VARCHAR NOT NULL,
    rank INTEGER NOT NULL,
    item_id VARCHAR NOT NULL,
    score DOUBLE,
    model_kind VARCHAR NOT NULL,     -- the family that made the list: gat-bpr, als, ...
    model_version INTEGER NOT NULL,  -- the version that scored (the champion's serving refit)
    generated_at TIMESTAMP NOT NULL,
    source VARCHAR NOT NULL          -- model | baseline | fallback
);
"""
# models_src.baselines.BASELINE_FAMILIES, written again: importing it would load torch into
# scoring workers, which run onnxruntime only.
BASELINE_FAMILIES = ("most-popular", "recent-popular", "als")


def open_session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    """A CPU session with no spinning (onnxruntime's spinning pool slows PyTorch in the same
    process, onnxruntime #13808). Threads: `threads`, else OMP_NUM_THREADS (Dask's nanny sets
    it to 1 per worker, so N workers use N cores, not N x cores), else every core."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = (
        threads or int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count() or 1
    )
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
    from models_src.onnx_export import id_map_checksum  # here: it imports torch and PyG, which
    # a scoring worker (score_user_range) never needs

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


@dataclass(frozen=True)
class ScoringPlan:
    """What scoring a dataset needs, on disk, so any process can score a range of users without
    the warehouse (DuckDB has one writer; scoring workers never open it)."""

    dataset: str
    kind: str  # the serving model's family
    version: int  # the serving version (the champion's refit, or the champion)
    champion: int  # the evaluated champion it serves for
    source: str  # model | baseline: what its rows are marked
    scorer: str  # the serving version's scorer.onnx
    seen: str  # .npz with the seen-items CSR (rowptr, items)
    popular: list[tuple[int, float]]  # (item_idx, decayed interactions): the cold-start list
    num_users: int  # tonight's users
    model_users: int  # users the model knows (a prefix of tonight's)
    model_items: int
    k: int
    parts_dir: str
    cold_start_days: float | None = None  # the cold-start list's half-life (None: no decay)

    def ranges(self, parts: int) -> list[tuple[int, int]]:
        """`parts` contiguous user ranges of near-equal size covering every user."""
        bounds = np.linspace(0, self.num_users, max(1, parts) + 1).round().astype(int)
        return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def plan_scoring(con: duckdb.DuckDBPyConnection, dataset: str, work_dir: Path) -> ScoringPlan:
    """Check the ranking champion of `dataset` and what serves for it, and write what scoring
    workers read."""
    current = champion(con, "ranking", dataset)
    if current is None:
        raise RegistryError(f"no ranking champion for {dataset}: nothing to score with")
    row = serving_version(con, current)
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
    _remove_interrupted_parts(work_dir, dataset)
    parts_dir = work_dir / f"scoring-{dataset}-v{row['version']}"
    parts_dir.mkdir(parents=True)
    rowptr, seen = _seen(con, dataset, len(user_ids))
    np.savez(parts_dir / "seen.npz", rowptr=rowptr, items=seen)
    half_life = cold_start_half_life(con, dataset)
    popular = cold_start_items(con, dataset, half_life, sizes["k"] + 1000)
    return ScoringPlan(
        dataset=dataset,
        kind=row["kind"],
        version=row["version"],
        champion=current["version"],
        source="baseline" if row["kind"] in BASELINE_FAMILIES else "model",
        scorer=str(directory / "scorer.onnx"),
        seen=str(parts_dir / "seen.npz"),
        popular=popular,
        num_users=len(user_ids),
        model_users=sizes["num_users"],
        model_items=sizes["num_items"],
        k=sizes["k"],
        parts_dir=str(parts_dir),
        cold_start_days=half_life,
    )


# Scores of one chunk (users x items, float32), sized to stay in a shared L3 cache: scoring is
# memory-bound, so chunks past the cache score each user slower, and two workers scoring side by
# side share that cache.
CHUNK_SCORES = 8_000_000


def chunk_users_for(items: int) -> int:
    return max(16, min(2048, CHUNK_SCORES // max(items, 1)))


def score_user_range(
    plan: ScoringPlan,
    start: int,
    stop: int,
    chunk_users: int | None = None,
    threads: int | None = None,
) -> dict:
    """Top-K of users [start, stop) into one Parquet part (indices, not ids); no warehouse."""
    started = time.perf_counter()
    chunk_users = chunk_users or chunk_users_for(plan.model_items)
    with np.load(plan.seen) as csr:
        rowptr, seen = csr["rowptr"], csr["items"]
    rows = _Rows()
    known_stop = min(stop, plan.model_users)
    if known_stop > start:
        session = open_session(Path(plan.scorer), threads)
        _score_known_users(
            session,
            rowptr,
            seen,
            plan.model_items,
            plan.k,
            range(start, known_stop),
            chunk_users,
            rows,
            plan.source,
        )
    _popular_fallback(
        plan.popular, range(max(start, plan.model_users), stop), rowptr, seen, plan.k, rows
    )
    path = _write_parquet(rows.table(), Path(plan.parts_dir) / f"part-{start:010d}.parquet")
    return {
        "path": str(path),
        "users": stop - start,
        "rows": len(rows),
        "seconds": time.perf_counter() - started,
    }


def load_scored_parts(
    con: duckdb.DuckDBPyConnection, plan: ScoringPlan, parts: list[dict], exports_dir: Path
) -> dict:
    """One transaction: tonight's parts replace the dataset's lists, ids mapped in SQL; then the
    same rows, with ids, to exports_dir's Parquet file."""
    paths = sorted(part["path"] for part in parts)
    covered = sum(part["users"] for part in parts)
    if covered != plan.num_users:
        raise RuntimeError(
            f"scoring parts cover {covered} users of {plan.num_users} in {plan.dataset}"
        )
    con.execute(RECOMMENDATIONS_SCHEMA)
    con.execute(COLD_START_SCHEMA)
    with transaction(con):
        replace_cold_start_list(con, plan.dataset, plan.popular[: plan.k], plan.cold_start_days)
        con.execute("DELETE FROM recommendations WHERE dataset = ?", [plan.dataset])
        con.execute(
            """INSERT INTO recommendations
               SELECT ?, u.external_id, p.rank, i.external_id, p.score, ?, ?, now()::TIMESTAMP,
                      p.source
               FROM read_parquet(?) p
               JOIN user_ids u ON u.dataset = ? AND u.idx = p.user_idx
               JOIN item_ids i ON i.dataset = ? AND i.idx = p.item_idx""",
            [plan.dataset, plan.kind, plan.version, paths, plan.dataset, plan.dataset],
        )
    # A kill here leaves the lists committed and the export old or absent: the next night's
    # plan (tasks/train/plan.py) checks both and scores again.
    crash_point("lists committed")
    path = write_atomically(
        recommendations_file(exports_dir, plan.dataset),
        lambda partial: con.execute(
            f"""COPY (SELECT * FROM recommendations WHERE dataset = ?
                     ORDER BY user_id, rank) TO '{_sql_path(partial)}' (FORMAT parquet)""",
            [plan.dataset],
        ),
    )
    write_atomically(
        cold_start_file(exports_dir, plan.dataset),
        lambda partial: con.execute(
            f"""COPY (SELECT * FROM cold_start_recommendations WHERE dataset = ?
                     ORDER BY rank) TO '{_sql_path(partial)}' (FORMAT parquet)""",
            [plan.dataset],
        ),
    )
    for older in ("gat-bpr", "rating"):  # per-model files of Encore before the ranking slot
        (exports_dir / f"recommendations_{plan.dataset}_{older}.parquet").unlink(missing_ok=True)
    shutil.rmtree(plan.parts_dir, ignore_errors=True)
    rows = sum(part["rows"] for part in parts)
    return {
        "dataset": plan.dataset,
        "kind": plan.kind,
        "model_version": plan.version,
        "champion": plan.champion,
        "source": plan.source,
        "users": plan.num_users,
        "model_users": min(plan.model_users, plan.num_users),
        "fallback_users": max(0, plan.num_users - plan.model_users),
        "rows": rows,
        "parts": len(parts),
        "parquet": str(path),
        "scoring_seconds": sum(part["seconds"] for part in parts),
    }


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")


def score_dataset(
    con: duckdb.DuckDBPyConnection,
    dataset: str,
    exports_dir: Path,
    chunk_users: int | None = None,
    threads: int | None = None,
    parts: int = 1,
) -> dict:
    """Score every user of `dataset` with its ranking champion in this process; returns counts
    and timings. The Dask path runs the same three steps with the ranges on workers."""
    started = time.perf_counter()
    plan = plan_scoring(con, dataset, exports_dir / "scoring")
    scored = [
        score_user_range(plan, start, stop, chunk_users, threads)
        for start, stop in plan.ranges(parts)
    ]
    result = load_scored_parts(con, plan, scored, exports_dir)
    return {**result, "seconds": time.perf_counter() - started}


@dataclass
class _Rows:
    """Recommendation rows as index arrays, gathered chunk by chunk."""

    parts: list[dict[str, np.ndarray]] = field(default_factory=list)

    def add(self, users, ranks, items, scores, source: str) -> None:
        self.parts.append(
            {
                "user_idx": np.asarray(users, np.int64),
                "rank": np.asarray(ranks, np.int32),
                "item_idx": np.asarray(items, np.int64),
                "score": np.asarray(scores, np.float64),
                "source": np.full(len(users), source, dtype=object),
            }
        )

    def __len__(self) -> int:
        return sum(len(part["user_idx"]) for part in self.parts)

    def table(self) -> pa.Table:
        types = {
            "user_idx": pa.int64(),
            "rank": pa.int32(),
            "item_idx": pa.int64(),
            "score": pa.float64(),
            "source": pa.string(),
        }
        return pa.table(
            {
                name: pa.array(
                    np.concatenate([p[name] for p in self.parts]) if self.parts else [], kind
                )
                for name, kind in types.items()
            }
        )


def _score_known_users(
    session,
    rowptr,
    seen,
    known_items: int,
    k: int,
    users: range,
    chunk_users: int,
    rows: _Rows,
    source: str = "model",
) -> None:
    """The scorer over `users` (all known to the model), seen items masked through `exclude`."""
    for chunk_start in range(users.start, users.stop, chunk_users):
        chunk = np.arange(chunk_start, min(chunk_start + chunk_users, users.stop))
        exclude = np.zeros((len(chunk), known_items), dtype=bool)
        for row_index, user in enumerate(chunk):
            items = seen[rowptr[user] : rowptr[user + 1]]
            exclude[row_index, items[items < known_items]] = True
        top_items, top_scores = session.run(None, {"users": chunk, "exclude": exclude})
        valid = np.isfinite(top_scores)  # a user who has seen nearly everything gets fewer
        rows.add(
            np.repeat(chunk, k)[valid.ravel()],
            np.tile(np.arange(1, k + 1), len(chunk))[valid.ravel()],
            top_items[valid],
            top_scores[valid],
            source,
        )


def _popular_fallback(
    popular: list[tuple[int, int]], users: range, rowptr, seen, k: int, rows: _Rows
) -> None:
    """Most interacted-with items the user has not seen, for users the model does not know."""
    for user in users:
        already = set(seen[rowptr[user] : rowptr[user + 1]].tolist())
        picks = [(item, n) for item, n in popular if item not in already][:k]
        rows.add(
            [user] * len(picks),
            range(1, len(picks) + 1),
            [i for i, _ in picks],
            [float(n) for _, n in picks],
            "fallback",
        )


def _remove_interrupted_parts(work_dir: Path, dataset: str) -> None:
    """Parts a killed scoring of `dataset` left behind, whichever version it scored: scoring
    holds the data home's writer lock, so none of them belongs to a run still going."""
    pattern = re.compile(rf"scoring-{re.escape(dataset)}-v\d+")
    for stale in work_dir.glob(f"scoring-{dataset}-v*"):
        if stale.is_dir() and pattern.fullmatch(stale.name):
            shutil.rmtree(stale)


def _write_parquet(table: pa.Table, path: Path) -> Path:
    return write_atomically(path, lambda partial: pq.write_table(table, partial))
