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
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from tasks.faults import crash_point
from tasks.files import write_text_atomically
from tasks.ingest.dedupe import CONFLICT_EXPECTATION
from tasks.ingest.snapshots import refresh_snapshot_totals
from tasks.validate.info import (
    ROW_LEVEL,
    TABLE_LEVEL,
    DatasetInfo,
    ExpectationOutcome,
    _dataset_info,
    _jsonable,
)
from tasks.validate.profile import _profile
from tasks.validate.report import _report
from tasks.validate.row_checks import (
    SAMPLE_SIZE,
    RowRule,
    count_failures,
    duplicated_rows,
    malformed_ids,
    quarantine_failing_rows,
    row_rules,
)
from tasks.validate.thresholds import ValidationThresholds
from tasks.warehouse.schema import transaction


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
