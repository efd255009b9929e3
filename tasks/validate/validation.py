"""Validating a snapshot with Great Expectations' rules, and quarantining the rows that fail.

Two kinds of expectation:
- row-level (not null, within scale, well-formed ids, sane timestamps): a failing row moves to the
  `quarantine` table with the expectation it failed; the snapshot can still pass. These run as
  DuckDB SQL where the rows are (tasks/validate/row_checks.py), with GX's names and meaning.
- table-level (duplicates, minimum users/items/interactions, drift against the history, share of
  quarantined rows, unreadable files): a failure fails the snapshot, so it is never trained on.

Table-level figures (cumulative counts, history mean) are computed in SQL and checked by GX on a
one-row profile, so their verdicts come from GX's rule engine while no rows leave the warehouse.
Both kinds land in one report.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from tasks.faults import crash_point
from tasks.files import write_text_atomically
from tasks.ingest.dedupe import CONFLICT_EXPECTATION
from tasks.ingest.errors import AccountingError
from tasks.ingest.snapshots import refresh_snapshot_totals
from tasks.validate.row_checks import (
    SAMPLE_SIZE,
    RowRule,
    count_failures,
    duplicated_rows,
    malformed_ids,
    quarantine_failing_rows,
    row_rules,
)
from tasks.warehouse.schema import transaction

ROW_LEVEL, TABLE_LEVEL = "row", "table"


class ValidationThresholds(BaseModel):
    """Bounds the suites check. A pydantic model, so Prefect's run form shows each with its help."""

    model_config = ConfigDict(frozen=True)

    min_users: int = Field(10, ge=0, description="Fewest distinct users the dataset may have.")
    min_items: int = Field(10, ge=0, description="Fewest distinct items the dataset may have.")
    min_interactions: int = Field(
        100, ge=0, description="Fewest interactions the dataset may have."
    )
    max_quarantine_fraction: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Largest share of tonight's rows that may be quarantined; more means the "
        "delivery itself is broken and the snapshot fails.",
    )
    max_reject_fraction: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Largest share of tonight's rows that may be malformed (rejected): 200 good "
        "lines in 10,000 broken ones are a broken delivery, not 200 rows of data.",
    )
    max_file_reject_fraction: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Largest share of any one file's rows that may be malformed.",
    )
    max_growth: float = Field(
        2.0,
        ge=1,
        description="Largest ratio of rows after / before one snapshot: a night that more than "
        "doubles the history is more likely a replayed export than real traffic.",
    )
    max_volume_ratio: float = Field(
        10.0,
        ge=1,
        description="Tonight's rows may be at most this many times the median of the last "
        "snapshots' (and at least 1/this): a day 10x larger or 90 % smaller is a broken "
        "export. Checked once the dataset has 3 passed snapshots.",
    )
    max_new_id_share: float = Field(
        0.9,
        ge=0,
        le=1,
        description="Largest share of tonight's rows whose user (or item) was never seen "
        "before, counted only when the ids seen before went silent (under 2 % of tonight's ids "
        "were seen before): mostly-new ids with the old ones gone mean the ids were remapped "
        "upstream; a sign-up wave brings returning users too. Checked once the dataset has 3 "
        "passed snapshots.",
    )
    max_single_user_share: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Largest share of tonight's rows one user may have (a bot or a replay "
        "loop). Checked when tonight has at least 100 users.",
    )
    max_single_item_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Largest share of tonight's rows one item may have. Checked when tonight "
        "has at least 100 items.",
    )
    max_backdated_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Largest share of tonight's rows older than the newest event already "
        "loaded: a day mostly older than yesterday is a replayed or re-dated export (events "
        "from offline devices arrive late, but few). Raise it for a deliberate backfill.",
    )
    max_mean_rating_shift: float = Field(
        0.15,
        ge=0,
        description="Largest |tonight's mean rating - the history's|, as a share of the scale.",
    )
    oldest_timestamp: datetime = Field(
        datetime(1995, 1, 1), description="Events before this are absurdly old."
    )
    future_tolerance: timedelta = Field(
        timedelta(hours=24), description="How far past 'now' an event time may be (clock skew)."
    )
    id_pattern: str = Field(
        r"^[^\s\x00-\x1f]{1,128}$",
        description="Regex every user and item id must match (default: 1-128 characters, no "
        "whitespace or control characters).",
    )


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


def _run_suite(name: str, frame: pd.DataFrame, rules: list) -> list[tuple[Any, Any]]:
    """Run GX on a DataFrame; returns (rule, GX result) pairs in rule order."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    for noisy in ("great_expectations", "great_expectations.data_context.types.base"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    # GX draws a progress bar per validation; in a nightly log that is noise.
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch = (
        context.data_sources.add_pandas(f"{name}_source")
        .add_dataframe_asset(f"{name}_frame")
        .add_batch_definition_whole_dataframe(f"{name}_batch")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=name))
    for expectation, *_ in rules:
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{name}_validation", data=batch, suite=suite)
    )
    result = definition.run(
        batch_parameters={"dataframe": frame}, result_format={"result_format": "COMPLETE"}
    )
    # GX returns results in suite order; match them back by the expectation's id.
    by_id = {r.expectation_config.id: r for r in result.results}
    return [(rule, by_id[expectation.id]) for rule in rules for expectation in [rule[0]]]


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, datetime | pd.Timestamp):
        return value.isoformat()
    if isinstance(value, dict | list | tuple):
        return json.loads(json.dumps(value, default=str))
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)


def _outcome(rule, result, level: str) -> ExpectationOutcome:
    expectation, column, description = rule
    details = result.result or {}
    return ExpectationOutcome(
        expectation=expectation.expectation_type,
        level=level,
        column=column,
        success=bool(result.success),
        description=description,
        unexpected_count=int(details.get("unexpected_count") or 0),
        observed=_jsonable(details.get("observed_value")),
        sample=[_jsonable(v) for v in (details.get("partial_unexpected_list") or [])[:SAMPLE_SIZE]],
    )


def _conflicts_outcome(
    con: duckdb.DuckDBPyConnection, info: DatasetInfo, snapshot_id: int
) -> ExpectationOutcome:
    """Ingest's conflicts (a key loaded before, another value), reported as the row-level
    check they are; the rows are already in `quarantine`."""
    count, sample = con.execute(
        f"""SELECT count(*), list(reason ORDER BY row_id)[1:{SAMPLE_SIZE}] FROM quarantine
            WHERE snapshot_id = ? AND expectation = ?""",
        [snapshot_id, CONFLICT_EXPECTATION],
    ).fetchone()
    return ExpectationOutcome(
        CONFLICT_EXPECTATION,
        ROW_LEVEL,
        ",".join(info.natural_key),
        count == 0,
        f"one value per ({', '.join(info.natural_key)}): a conflicting later row is "
        "quarantined, the first loaded kept",
        count,
        sample=sample or [],
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


def _table_rules(info: DatasetInfo, t: ValidationThresholds, profile: dict) -> list:
    import great_expectations as gx

    e = gx.expectations

    def bounded(column: str, low=None, high=None, description: str = ""):
        return (
            e.ExpectColumnValuesToBeBetween(column=column, min_value=low, max_value=high),
            column,
            description,
        )

    rules = [
        bounded("n_users", t.min_users, None, f"at least {t.min_users} users"),
        bounded("n_items", t.min_items, None, f"at least {t.min_items} items"),
        bounded(
            "n_interactions",
            t.min_interactions,
            None,
            f"at least {t.min_interactions} interactions",
        ),
        bounded(
            "quarantine_fraction",
            None,
            t.max_quarantine_fraction,
            f"at most {t.max_quarantine_fraction:.0%} of tonight's rows quarantined",
        ),
        bounded(
            "reject_fraction",
            None,
            t.max_reject_fraction,
            f"at most {t.max_reject_fraction:.0%} of tonight's rows malformed",
        ),
        bounded(
            "worst_file_reject_fraction",
            None,
            t.max_file_reject_fraction,
            f"at most {t.max_file_reject_fraction:.0%} of any one file's rows malformed",
        ),
        bounded("unreadable_files", None, 0, "every delivered file readable"),
    ]
    for column, what, bound in (
        ("top_user_share", "user", t.max_single_user_share),
        ("top_item_share", "item", t.max_single_item_share),
    ):
        if profile[column] is not None:
            rules.append(
                bounded(column, None, bound, f"no {what} with over {bound:.0%} of tonight's rows")
            )
    if profile["volume_ratio"] is not None:
        ratio = t.max_volume_ratio
        rules.append(
            bounded(
                "volume_ratio",
                1.0 / ratio,
                ratio,
                f"tonight's rows within x{ratio:g} of the recent snapshots' median",
            )
        )
    if profile["backdated_share"] is not None:
        bound = t.max_backdated_share
        rules.append(
            bounded(
                "backdated_share",
                None,
                bound,
                f"at most {bound:.0%} of tonight's rows older than the newest event loaded before",
            )
        )
    for column, what in (("new_user_share", "users"), ("new_item_share", "items")):
        if profile[column] is not None:
            rules.append(
                bounded(
                    column,
                    None,
                    t.max_new_id_share,
                    f"at most {t.max_new_id_share:.0%} of tonight's rows from {what} never "
                    f"seen before while the {what} seen before went silent (an id remap)",
                )
            )
    if profile["growth"] is not None:
        rules.append(
            bounded(
                "growth",
                1.0,
                t.max_growth,
                f"history grows by at most x{t.max_growth:g} in one snapshot",
            )
        )
    if profile["mean_rating_shift"] is not None:
        rules.append(
            bounded(
                "mean_rating_shift",
                None,
                t.max_mean_rating_shift,
                f"mean rating within {t.max_mean_rating_shift:.0%} of the scale of the history's",
            )
        )
    return rules


def _check_accounting(con: duckdb.DuckDBPyConnection, snapshot_id: int) -> list[dict]:
    """Recount every file of the snapshot from the tables themselves; any gap is a bug."""
    rows = con.execute(
        """SELECT f.file_id, f.path, f.status, f.rows_read,
                  (SELECT count(*) FROM interactions i WHERE i.file_id = f.file_id),
                  f.duplicates,
                  CASE WHEN f.status = 'error' THEN f.rejected ELSE
                      (SELECT count(DISTINCT line) FROM rejects r WHERE r.file_id = f.file_id) END,
                  (SELECT count(*) FROM quarantine q WHERE q.file_id = f.file_id)
           FROM source_files f WHERE f.snapshot_id = ? ORDER BY f.file_id""",
        [snapshot_id],
    ).fetchall()
    accounts = []
    for file_id, path, status, read, loaded, dups, rejected, quarantined in rows:
        account = {
            "file_id": file_id,
            "path": path,
            "status": status,
            "rows_read": read,
            "loaded": loaded,
            "duplicates": dups,
            "rejected": rejected,
            "quarantined": quarantined,
        }
        if read != loaded + dups + rejected + quarantined:
            raise AccountingError(f"{path}: accounting broken: {account}")
        accounts.append(account)
    return accounts


def validate_snapshot(
    con: duckdb.DuckDBPyConnection,
    snapshot_id: int,
    thresholds: ValidationThresholds | None = None,
    reports_dir: Path | None = None,
    now: datetime | None = None,
) -> dict:
    """Validate a pending snapshot: quarantine failing rows, pass or fail it, write the report."""
    thresholds = thresholds or ValidationThresholds()
    now = now or datetime.now()
    info = _dataset_info(con, snapshot_id)
    rules = row_rules(info, thresholds, now)
    with malformed_ids(con, info.name, snapshot_id, thresholds.id_pattern), transaction(con):
        outcomes = _row_outcomes(con, snapshot_id, rules)
        outcomes.append(_conflicts_outcome(con, info, snapshot_id))
        if any(not o.success for o in outcomes[: len(rules)]):
            quarantine_failing_rows(con, snapshot_id, rules)
        duplicated = duplicated_rows(con, snapshot_id, info.natural_key)
        outcomes.append(
            ExpectationOutcome(
                "expect_compound_columns_to_be_unique",
                TABLE_LEVEL,
                ",".join(info.natural_key),
                duplicated == 0,
                f"no duplicate ({', '.join(info.natural_key)})",
                duplicated,
            )
        )
        profile = _profile(con, info, snapshot_id)
        profile_frame = pd.DataFrame([{k: v for k, v in profile.items() if v is not None}])
        for rule, result in _run_suite(
            f"table_{snapshot_id}", profile_frame, _table_rules(info, thresholds, profile)
        ):
            outcome = _outcome(rule, result, TABLE_LEVEL)
            outcome.observed = _jsonable(profile[rule[1]])
            outcomes.append(outcome)
        status = (
            "passed" if all(o.success for o in outcomes if o.level == TABLE_LEVEL) else "failed"
        )
        refresh_snapshot_totals(con, snapshot_id)
        report = _report(con, info, snapshot_id, status, outcomes, profile, now)
        crash_point("validating")
        con.execute(
            "UPDATE snapshots SET status = ?, validated_at = ?, report_json = ? "
            "WHERE snapshot_id = ?",
            [status, now, json.dumps(report), snapshot_id],
        )
    if reports_dir is not None:
        path = reports_dir / f"snapshot_{snapshot_id:05d}_{info.name}.json"
        write_text_atomically(path, json.dumps(report, indent=2))
        report["report_path"] = str(path)
    return report


def _row_outcomes(
    con: duckdb.DuckDBPyConnection, snapshot_id: int, rules: list[RowRule]
) -> list[ExpectationOutcome]:
    failures = count_failures(con, snapshot_id, rules)
    return [
        ExpectationOutcome(
            rule.expectation,
            ROW_LEVEL,
            rule.column,
            count == 0,
            rule.description,
            count,
            sample=[_jsonable(value) for value in sample],
        )
        for rule, count, sample in zip(rules, failures.counts, failures.samples, strict=True)
    ]


def _report(con, info: DatasetInfo, snapshot_id: int, status: str, outcomes, profile, now) -> dict:
    files = _check_accounting(con, snapshot_id)
    totals = {
        k: sum(f[k] for f in files)
        for k in ("rows_read", "loaded", "duplicates", "rejected", "quarantined")
    }
    errors = con.execute(
        "SELECT path, error FROM source_files WHERE snapshot_id = ? AND status = 'error'",
        [snapshot_id],
    ).fetchall()
    return {
        "snapshot_id": snapshot_id,
        "dataset": info.name,
        "kind": info.kind,
        "status": status,
        "validated_at": now.isoformat(timespec="seconds"),
        "accounting": {"totals": totals, "files": files},
        "file_errors": [{"path": p, "error": e} for p, e in errors],
        "profile": {k: _jsonable(v) for k, v in profile.items()},
        "expectations": [asdict(o) for o in outcomes],
        "failed": [asdict(o) for o in outcomes if not o.success],
    }


def report_summary(report: dict) -> str:
    """A few lines for a terminal: the verdict, the accounting and what failed."""
    t = report["accounting"]["totals"]
    verdict = "passed" if report["status"] == "passed" else "FAILED"
    lines = [
        f"snapshot {report['snapshot_id']} of {report['dataset']}: {verdict} "
        f"({len(report['accounting']['files'])} file(s)); rows read {t['rows_read']:,} = loaded "
        f"{t['loaded']:,} + duplicates {t['duplicates']:,} + rejected {t['rejected']:,} + "
        f"quarantined {t['quarantined']:,}"
    ]
    for error in report["file_errors"]:
        lines.append(f"  unreadable: {error['error']}")
    for o in report["failed"]:
        if o["level"] == "table" and o["observed"] is not None:  # one figure, not rows
            observed = o["observed"]
            shown = f"{observed:.4g}" if isinstance(observed, float) else str(observed)
            lines.append(f"  failed [table] {o['description']}: observed {shown}")
            continue
        sample = ", ".join(map(str, o["sample"]))
        lines.append(
            f"  failed [{o['level']}] {o['description']}: {o['unexpected_count']:,} rows"
            f" failing, e.g. {sample}"
        )
    if "report_path" in report:
        lines.append(f"  report: {report['report_path']}")
    return "\n".join(lines)


def report_markdown(report: dict) -> str:
    """The report as markdown: printed by the CLI and published as a Prefect artifact."""
    t = report["accounting"]["totals"]
    verdict = "PASSED" if report["status"] == "passed" else "FAILED"
    lines = [
        f"## Snapshot {report['snapshot_id']} of `{report['dataset']}` "
        f"({report['kind']}): {verdict}",
        "",
        f"rows read {t['rows_read']:,} = loaded {t['loaded']:,} + duplicates {t['duplicates']:,}"
        f" + rejected {t['rejected']:,} + quarantined {t['quarantined']:,}",
        "",
        "| file | read | loaded | duplicates | rejected | quarantined |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for f in report["accounting"]["files"]:
        name = Path(f["path"]).name + (" (unreadable)" if f["status"] == "error" else "")
        lines.append(
            f"| {name} | {f['rows_read']:,} | {f['loaded']:,} | {f['duplicates']:,} |"
            f" {f['rejected']:,} | {f['quarantined']:,} |"
        )
    for error in report["file_errors"]:
        lines += ["", f"- unreadable: {error['error']}"]
    lines += [
        "",
        "| expectation | level | column | result | failing | observed / sample |",
        "|---|---|---|---|---:|---|",
    ]
    for o in report["expectations"]:
        observed = o["observed"]
        if isinstance(observed, float):
            observed = f"{observed:.4g}"
        shown = observed if observed is not None else ", ".join(map(str, o["sample"]))
        mark = "ok" if o["success"] else "**FAILED**"
        lines.append(
            f"| {o['description']} | {o['level']} | {o['column'] or ''} | {mark} |"
            f" {o['unexpected_count']:,} | {shown} |"
        )
    return "\n".join(lines)
