"""The row-level expectations of a snapshot, checked inside DuckDB.

Each rule is a Great Expectations expectation by name and meaning
(expect_column_values_to_not_be_null, …_to_match_regex, …_to_be_between, …_to_be_in_set),
written as the SQL condition under which one row fails it, with GX's conventions: a value check
ignores missing values (the not-null rule catches them), and a NaN counts as missing, as in
GX's pandas engine. One scan counts every rule's failing rows; only the failing rows' ids and a
few sample values leave the warehouse.

Why not GX itself here: its pandas engine needs tonight's rows copied out of DuckDB (gigabytes
at ten million rows), and its SQL engine needs a second SQLAlchemy connection (duckdb_engine)
to a warehouse file this process already holds open for writing, and has no DuckDB dialect for
regular expressions. The table-level suite, one row of dataset-wide figures, still runs in GX.

Regular expressions are Python's (`re.search`, as GX's pandas engine applies them), not
DuckDB's RE2: they are matched on the night's distinct ids, which are few next to its rows.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import duckdb
import pandas as pd

if TYPE_CHECKING:  # validation.py calls this module; these are only its types
    from tasks.validate.info import DatasetInfo
    from tasks.validate.thresholds import ValidationThresholds

SAMPLE_SIZE = 5
MALFORMED_IDS = "_malformed_ids"
NUMERIC = ("rating", "weight")
INDEX_OF = {"user_id": "user_idx", "item_id": "item_idx"}
NOT_NULL = "expect_column_values_to_not_be_null"
MATCH_REGEX = "expect_column_values_to_match_regex"
BETWEEN = "expect_column_values_to_be_between"
IN_SET = "expect_column_values_to_be_in_set"


@dataclass(frozen=True)
class RowRule:
    expectation: str  # GX's expectation type
    column: str
    description: str
    failing: str  # SQL: true for a row that fails the rule

    @property
    def sample_value(self) -> str:
        """What the report shows of a failing row: its value, or NULL for a missing one."""
        return "'NULL'" if self.expectation == NOT_NULL else self.column


@dataclass
class RowFailures:
    """Per rule (in rule order): how many of tonight's rows fail it, and the first few values."""

    counts: list[int]
    samples: list[list]


def _missing(column: str) -> str:
    return f"({column} IS NULL OR isnan({column}))" if column in NUMERIC else f"{column} IS NULL"


def _present_and(column: str, condition: str) -> str:
    """A value check: missing values are the not-null rule's, never this one's."""
    return f"(NOT {_missing(column)} AND {condition})"


def _timestamp(value: datetime) -> str:
    return f"TIMESTAMP '{value.isoformat(sep=' ')}'"


def _double(value: float) -> str:
    return f"{float(value)!r}::DOUBLE"


def row_rules(info: DatasetInfo, t: ValidationThresholds, now: datetime) -> list[RowRule]:
    """The row-level rules of this dataset's kind, in the order a failing row is attributed."""
    rules = []
    for column in ("user_id", "item_id"):
        rules.append(RowRule(NOT_NULL, column, f"{column} present", _missing(column)))
        rules.append(
            RowRule(
                MATCH_REGEX,
                column,
                f"{column} well-formed (1-128 chars, no whitespace or control characters)",
                _present_and(
                    column,
                    f"{column} IN (SELECT id FROM {MALFORMED_IDS} WHERE column_name = '{column}')",
                ),
            )
        )
    if info.kind == "explicit":
        rules += _rating_rules(info)
    if "weight" in info.columns:
        rules.append(
            RowRule(
                BETWEEN,
                "weight",
                "play count / duration not negative",
                _present_and("weight", f"weight < {_double(0)}"),
            )
        )
    if info.has_timestamps:
        low, high = t.oldest_timestamp, now + t.future_tolerance
        rules.append(RowRule(NOT_NULL, "ts", "timestamp present", _missing("ts")))
        rules.append(
            RowRule(
                BETWEEN,
                "ts",
                f"timestamp between {low:%Y-%m-%d} and now + {t.future_tolerance}",
                _present_and("ts", f"NOT (ts BETWEEN {_timestamp(low)} AND {_timestamp(high)})"),
            )
        )
    return rules


def _rating_rules(info: DatasetInfo) -> list[RowRule]:
    low, high = info.rating_low, info.rating_high
    rules = [
        RowRule(NOT_NULL, "rating", "rating present", _missing("rating")),
        RowRule(
            BETWEEN,
            "rating",
            f"rating within the scale [{low:g}, {high:g}]",
            _present_and("rating", f"NOT (rating BETWEEN {_double(low)} AND {_double(high)})"),
        ),
    ]
    if info.rating_step:
        steps = round((high - low) / info.rating_step)
        allowed = ", ".join(_double(round(low + i * info.rating_step, 6)) for i in range(steps + 1))
        rules.append(
            RowRule(
                IN_SET,
                "rating",
                f"rating on the scale's steps of {info.rating_step:g}",
                _present_and("rating", f"rating NOT IN ({allowed})"),
            )
        )
    return rules


@contextmanager
def malformed_ids(
    con: duckdb.DuckDBPyConnection, dataset: str, snapshot_id: int, pattern: str
) -> Iterator[None]:
    """The night's distinct user and item ids that do not match `pattern`, registered for the
    regex rules to read while the block runs. Found through the id maps (every id has its
    integer index there): a distinct over integers, not over tonight's strings."""
    regex = re.compile(pattern)
    malformed = []
    for column, table in (("user_id", "user_ids"), ("item_id", "item_ids")):
        ids = con.execute(
            f"""SELECT external_id FROM {table} WHERE dataset = ? AND idx IN
                (SELECT DISTINCT {INDEX_OF[column]} FROM interactions
                 WHERE snapshot_id = ?)""",
            [dataset, snapshot_id],
        ).fetchall()
        malformed += [(column, value) for (value,) in ids if not regex.search(value)]
    frame = pd.DataFrame(malformed, columns=["column_name", "id"], dtype="object")
    con.register(MALFORMED_IDS, frame)
    try:
        yield
    finally:
        con.unregister(MALFORMED_IDS)


def count_failures(
    con: duckdb.DuckDBPyConnection, snapshot_id: int, rules: list[RowRule]
) -> RowFailures:
    """One scan of tonight's rows for every rule's count, then the first failing values (by
    row id) of the rules that failed."""
    filters = ", ".join(f"count(*) FILTER (WHERE {rule.failing})" for rule in rules)
    counts = list(
        con.execute(
            f"SELECT {filters} FROM interactions WHERE snapshot_id = ?", [snapshot_id]
        ).fetchone()
    )
    samples = [
        [
            value
            for (value,) in con.execute(
                f"SELECT {rule.sample_value} FROM interactions"
                f" WHERE snapshot_id = ? AND {rule.failing} ORDER BY row_id LIMIT {SAMPLE_SIZE}",
                [snapshot_id],
            ).fetchall()
        ]
        if count
        else []
        for rule, count in zip(rules, counts, strict=True)
    ]
    return RowFailures(counts, samples)


def quarantine_failing_rows(
    con: duckdb.DuckDBPyConnection, snapshot_id: int, rules: list[RowRule]
) -> int:
    """Move every failing row of tonight out of `interactions` into `quarantine`, with the first
    rule it failed and the value that failed it; returns how many rows moved."""
    first_failed = " ".join(f"WHEN {rule.failing} THEN {n}" for n, rule in enumerate(rules))
    any_failed = " OR ".join(f"({rule.failing})" for rule in rules)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _row_rules"
        " (rule INTEGER, expectation VARCHAR, column_name VARCHAR, reason VARCHAR)"
    )
    con.executemany(
        "INSERT INTO _row_rules VALUES (?, ?, ?, ?)",
        [(n, r.expectation, r.column, r.description) for n, r in enumerate(rules)],
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _quarantine_reasons AS
            SELECT f.row_id, r.expectation, r.column_name, r.reason
            FROM (SELECT row_id, CASE {first_failed} END AS rule FROM interactions
                  WHERE snapshot_id = ? AND ({any_failed})) f
            JOIN _row_rules r USING (rule)""",
        [snapshot_id],
    )
    moved = con.execute("SELECT count(*) FROM _quarantine_reasons").fetchone()[0]
    if moved:
        _move_to_quarantine(con)
    con.execute("DROP TABLE _quarantine_reasons; DROP TABLE _row_rules")
    return moved


def _move_to_quarantine(con: duckdb.DuckDBPyConnection) -> None:
    """Rows of `_quarantine_reasons` out of interactions, into quarantine, and out of their
    files' `loaded` into `quarantined`."""
    con.execute(
        """INSERT INTO quarantine
           SELECT i.row_id, i.dataset, i.snapshot_id, i.file_id, i.line, i.user_id, i.item_id,
                  i.rating, i.weight, i.ts, i.item_group, q.expectation, q.column_name,
                  q.reason || ' (value: ' || coalesce(CASE q.column_name
                      WHEN 'user_id' THEN i.user_id WHEN 'item_id' THEN i.item_id
                      WHEN 'rating' THEN CAST(i.rating AS VARCHAR)
                      WHEN 'weight' THEN CAST(i.weight AS VARCHAR)
                      WHEN 'ts' THEN CAST(i.ts AS VARCHAR) END, 'NULL') || ')',
                  current_timestamp
           FROM interactions i JOIN _quarantine_reasons q USING (row_id)"""
    )
    # Counted before the delete, and added: the file may already hold rows quarantined at
    # ingest (conflicts) that were never part of `loaded`.
    con.execute(
        """UPDATE source_files SET quarantined = source_files.quarantined + q.n,
                                   loaded = source_files.loaded - q.n
           FROM (SELECT i.file_id, count(*) AS n
                 FROM interactions i JOIN _quarantine_reasons USING (row_id)
                 GROUP BY i.file_id) q
           WHERE source_files.file_id = q.file_id"""
    )
    con.execute("DELETE FROM interactions WHERE row_id IN (SELECT row_id FROM _quarantine_reasons)")


def duplicated_rows(con: duckdb.DuckDBPyConnection, snapshot_id: int, key: list[str]) -> int:
    """Tonight's rows that share their natural key with another of tonight's rows. Grouped on
    the ids' integer indices (one per id, and no row without one is left after quarantine)."""
    columns = ", ".join(INDEX_OF.get(column, column) for column in key)
    return con.execute(
        f"""SELECT coalesce(sum(n), 0) FROM
            (SELECT count(*) AS n FROM interactions WHERE snapshot_id = ?
             GROUP BY {columns} HAVING count(*) > 1)""",
        [snapshot_id],
    ).fetchone()[0]
