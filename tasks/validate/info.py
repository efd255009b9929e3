"""What every part of validation shares: the dataset a snapshot belongs to, and one
expectation's outcome at the row or the table level."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb
import pandas as pd

ROW_LEVEL, TABLE_LEVEL = "row", "table"


@dataclass
class ExpectationOutcome:
    expectation: str
    level: str
    column: str | None
    success: bool
    description: str
    unexpected_count: int = 0
    observed: Any = None
    sample: list = field(default_factory=list)


@dataclass
class DatasetInfo:
    name: str
    kind: str
    rating_low: float | None
    rating_high: float | None
    rating_step: float | None
    columns: dict[str, str]

    @property
    def has_timestamps(self) -> bool:
        return "ts" in self.columns

    @property
    def natural_key(self) -> list[str]:
        return ["user_id", "item_id", "ts"] if self.has_timestamps else ["user_id", "item_id"]


def _dataset_info(con: duckdb.DuckDBPyConnection, snapshot_id: int) -> DatasetInfo:
    row = con.execute(
        """SELECT d.name, d.kind, d.rating_low, d.rating_high, d.rating_step, d.format_json
           FROM snapshots s JOIN datasets d ON d.name = s.dataset WHERE s.snapshot_id = ?""",
        [snapshot_id],
    ).fetchone()
    if row is None:
        raise ValueError(f"snapshot {snapshot_id} does not exist")
    return DatasetInfo(*row[:5], columns=json.loads(row[5])["columns"])


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, datetime | pd.Timestamp):
        return value.isoformat()
    if isinstance(value, dict | list | tuple):
        return json.loads(json.dumps(value, default=str))
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)
