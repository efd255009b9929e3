"""The replayed dataset's events, read once from the user's sources.toml, and the period files the
replay lands night by night.

The events are read with the ingest's own readers (`stage_file`: the same formats, the same
rejects), kept as one Parquet file sorted by time under the replay's folder, with dense ids of
the replay's own. Each period is landed as one delimited file in a `delimited` dataset of the
replay's own sources.toml, so every night ingests, validates, trains and serves exactly as it
would for a user's daily drop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.files import write_atomically
from tasks.ingest.sources import DatasetSpec, dataset_choices
from tasks.ingest.sources_file import load_datasets
from tasks.ingest.stage import stage_file


class ReplayInputError(ValueError):
    """The dataset cannot be replayed (unknown, no timestamps, too few events): one line."""


@dataclass
class Events:
    """Every event of the replayed dataset, ascending by time, with the replay's dense ids."""

    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray  # unix seconds
    value: np.ndarray | None  # rating (explicit) or weight (implicit), when the source has it
    user_ids: list[str]
    item_ids: list[str]

    def window(self, since: int | None, until: int) -> np.ndarray:
        """Bool mask of the events in [since, until)."""
        keep = self.ts < until
        return keep if since is None else keep & (self.ts >= since)


def dataset_spec(sources_file: Path, dataset: str) -> DatasetSpec:
    specs = {spec.name: spec for spec in load_datasets(sources_file)}
    if dataset not in specs:
        raise ReplayInputError(
            f"{sources_file}: no dataset '{dataset}'; {dataset_choices(dataset, list(specs))}"
        )
    spec = specs[dataset]
    if not spec.format.has_timestamps:
        raise ReplayInputError(
            f"dataset '{dataset}' has no timestamps (no `ts` column in {sources_file}):"
            " a replay needs time to cut periods; map a timestamp column to replay it"
        )
    return spec


def read_events(spec: DatasetSpec, out: Path) -> dict:
    """Every landing file of `spec`, staged as the ingest reads them, into `out` (Parquet:
    user_id, item_id, value, ts; sorted by time, exact duplicates once). Returns counts."""
    files = spec.landing_files()
    if not files:
        raise ReplayInputError(f"dataset '{spec.name}': no files in {spec.landing}")
    value = "rating" if spec.format.kind == "explicit" else "weight"
    value = value if value in spec.format.columns else "NULL::DOUBLE"
    con = duckdb.connect()
    con.execute("CREATE TABLE events (user_id VARCHAR, item_id VARCHAR, value DOUBLE, ts BIGINT)")
    staged = rejected = 0
    for path in files:
        rows, bad = stage_file(con, spec, Path(path))
        staged, rejected = staged + rows, rejected + bad
        con.execute(
            f"""INSERT INTO events SELECT user_id, item_id, {value}, epoch(ts)::BIGINT FROM _staged
                WHERE user_id IS NOT NULL AND item_id IS NOT NULL AND ts IS NOT NULL"""
        )
    table = con.execute(
        "SELECT DISTINCT * FROM events ORDER BY ts, user_id, item_id"
    ).to_arrow_table()
    con.close()
    if table.num_rows < 100:
        raise ReplayInputError(f"dataset '{spec.name}': {table.num_rows} events, too few to replay")
    write_atomically(out, lambda partial: pq.write_table(table, partial))
    return {"files": len(files), "staged": staged, "rejected": rejected, "events": table.num_rows}


def load_events(path: Path) -> Events:
    table = pq.read_table(path)
    users, user = np.unique(
        table.column("user_id").to_numpy(zero_copy_only=False), return_inverse=True
    )
    items, item = np.unique(
        table.column("item_id").to_numpy(zero_copy_only=False), return_inverse=True
    )
    values = table.column("value").to_numpy(zero_copy_only=False)
    has_value = not np.all(np.isnan(values.astype(np.float64)))
    return Events(
        user.astype(np.int64),
        item.astype(np.int64),
        table.column("ts").to_numpy().astype(np.int64),
        values.astype(np.float64) if has_value else None,
        [str(u) for u in users],
        [str(i) for i in items],
    )


def write_period_file(events_file: Path, since: int | None, until: int, out: Path) -> int:
    """The events in [since, until) as one delimited file (the replay's landing); returns rows."""
    table = pq.read_table(events_file)
    ts = table.column("ts").to_numpy()
    keep = ts < until if since is None else (ts >= since) & (ts < until)
    part = table.filter(pa.array(keep))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out, lambda partial: _write_csv(part, partial))
    return part.num_rows


def _write_csv(table: pa.Table, path: Path) -> None:
    import pyarrow.csv as pacsv

    pacsv.write_csv(table, path)


def replay_sources(spec: DatasetSpec, landing: Path) -> str:
    """The replay's sources.toml: the period files as a `delimited` dataset of the same kind."""
    value = "rating" if spec.format.kind == "explicit" else "weight"
    mapped = f', {value} = "value"' if value in spec.format.columns else ""
    lines = [
        f"[datasets.{json.dumps(spec.name)}]",
        'format = "delimited"',
        f'kind = "{spec.format.kind}"',
        f"landing = {json.dumps(str(landing))}",
        'pattern = "period-*.csv"',
        "header = true",
        f'columns = {{ user_id = "user_id", item_id = "item_id"{mapped}, ts = "ts" }}',
        'timestamp_unit = "epoch_s"',
    ]
    scale = spec.format.rating_scale
    if scale is not None:
        step = [] if scale.step is None else [scale.step]
        lines.append(f"rating_scale = {json.dumps([scale.low, scale.high, *step])}")
    return "\n".join(lines) + "\n"
