"""Duplicates and conflicts: a staged row whose natural key the dataset already holds, or an
earlier line of the same file holds, is dropped (the same values) or quarantined (others)."""

from __future__ import annotations

import duckdb

from tasks.ingest.sources import (
    SourceFormat,
)
from tasks.ingest.stage import sql_str


def _natural_key_match(fmt: SourceFormat, left: str, right: str) -> str:
    return " AND ".join(f"{left}.{c} = {right}.{c}" for c in fmt.natural_key())


# What Encore does with a row whose natural key it has already loaded (README, "What ingest
# guarantees"): the same values again is a duplicate, dropped and counted; different values
# (another rating, another play count) is a conflict. The first loaded is kept, because history
# already trained on never changes silently, and the conflicting row is quarantined with both
# values, so a re-export that corrects data shows up in the report instead of vanishing.
CONFLICT_EXPECTATION = "conflicting_value"


def _drop_duplicates(
    con: duckdb.DuckDBPyConnection, dataset: str, fmt: SourceFormat
) -> tuple[int, int]:
    """Mark for dropping every row whose natural key was seen on an earlier line of the file or
    in a snapshot that did not fail; returns (duplicates, conflicts). Rows with a NULL key
    column are kept: validation quarantines them with a reason.

    Within the file, rows are first grouped by a 64-bit hash of the key (one cheap aggregate
    over a fixed-width column); only the few rows in colliding groups are compared exactly.
    A row that repeats both a loaded row and an earlier line is judged against the loaded one.
    """
    key = ", ".join(fmt.natural_key())

    def present(alias: str = "") -> str:
        return " AND ".join(f"{alias}{c} IS NOT NULL" for c in fmt.natural_key())

    differs = "(s.rating IS DISTINCT FROM e.rating OR s.weight IS DISTINCT FROM e.weight)"
    con.execute(
        f"""CREATE TEMP TABLE _drop AS
            WITH keyed AS (SELECT line, {key}, hash({key}) AS h FROM _staged WHERE {present()}),
            candidates AS (
                SELECT * FROM keyed
                WHERE h IN (SELECT h FROM keyed GROUP BY h HAVING count(*) > 1)),
            within AS (
                SELECT line, first_value(line) OVER (PARTITION BY {key} ORDER BY line) AS first,
                       row_number() OVER (PARTITION BY {key} ORDER BY line) AS n
                FROM candidates),
            repeats AS (
                SELECT 1 AS precedence, s.line, {differs} AS conflict,
                       'line ' || e.line || ' of this file' AS earlier,
                       e.rating AS earlier_rating, e.weight AS earlier_weight
                FROM within w JOIN _staged s ON s.line = w.line JOIN _staged e ON e.line = w.first
                WHERE w.n > 1
                UNION ALL
                SELECT 0, s.line, {differs}, 'line ' || e.line || ' of ' || f.path,
                       e.rating, e.weight
                FROM _staged s
                JOIN interactions e ON e.dataset = {sql_str(dataset)}
                                   AND {_natural_key_match(fmt, "e", "s")}
                JOIN snapshots sn ON sn.snapshot_id = e.snapshot_id AND sn.status <> 'failed'
                JOIN source_files f ON f.file_id = e.file_id
                WHERE {present("s.")})
            SELECT * EXCLUDE (precedence) FROM repeats
            QUALIFY row_number() OVER (PARTITION BY line ORDER BY precedence) = 1"""
    )
    con.execute("CREATE TEMP VIEW _kept AS SELECT * FROM _staged ANTI JOIN _drop USING (line)")
    return con.execute(
        "SELECT count(*) FILTER (WHERE NOT conflict), count(*) FILTER (WHERE conflict) FROM _drop"
    ).fetchone()


def _quarantine_conflicts(
    con: duckdb.DuckDBPyConnection, dataset: str, snapshot_id: int, file_id: int, offset: int
) -> None:
    """Put the conflicting rows in `quarantine`, each naming the row it conflicts with."""
    there = "coalesce(CAST(d.earlier_rating AS VARCHAR), CAST(d.earlier_weight AS VARCHAR))"
    here = "coalesce(CAST(s.rating AS VARCHAR), CAST(s.weight AS VARCHAR))"
    con.execute(
        f"""INSERT INTO quarantine
            SELECT {offset} + s.line, {sql_str(dataset)}, {snapshot_id}, {file_id}, s.line,
                   s.user_id, s.item_id, s.rating, s.weight, s.ts, s.item_group,
                   '{CONFLICT_EXPECTATION}',
                   CASE WHEN s.rating IS DISTINCT FROM d.earlier_rating THEN 'rating'
                        ELSE 'weight' END,
                   'conflicts with ' || d.earlier || ' (value there: '
                     || coalesce({there}, 'none') || ', here: ' || coalesce({here}, 'none')
                     || '); the row loaded first is kept',
                   current_timestamp
            FROM _drop d JOIN _staged s USING (line) WHERE d.conflict"""
    )
