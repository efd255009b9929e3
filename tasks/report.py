"""The nightly run report: what came in, what was trained, what the gate decided, what was scored.

Pure formatting of the plain dicts the nightly tasks return (no Prefect here), so the same text is
the UI's markdown artifact, the file under `reports/` and what `encore nightly` prints.
"""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.warehouse.validation import report_summary

SPLITS = ("val", "test")


@contextmanager
def stage_clock(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Add the block's wall time to `timings[stage]` (seconds), even when the block raises."""
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - started


def _number(value: object) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4f}"
    return "–" if value is None else str(value)


def data_section(reports: list[dict], idle: dict[str, str]) -> list[str]:
    lines = [
        "## Data",
        "",
        "| dataset | snapshot | validation | files | read | loaded | duplicates | rejected |"
        " quarantined |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in reports:
        t = r["accounting"]["totals"]
        lines.append(
            f"| `{r['dataset']}` | {r['snapshot_id']} | {r['status'].upper()} |"
            f" {len(r['accounting']['files'])} | {t['rows_read']:,} | {t['loaded']:,} |"
            f" {t['duplicates']:,} | {t['rejected']:,} | {t['quarantined']:,} |"
        )
    if not reports:
        lines.append("| (no new files tonight) | | | | | | | | |")
    for r in reports:
        if r["status"] != "passed":
            lines += ["", f"**Validation failed** for `{r['dataset']}`:", "", "```"]
            lines += report_summary(r).splitlines()
            lines += ["```"]
    for dataset, why in idle.items():
        lines += ["", f"`{dataset}`: {why}."]
    return lines


def metrics_rows(outcome: dict) -> list[dict]:
    """One row per (split, metric): challenger vs champion vs MostPopular (the table artifact)."""
    gate = outcome.get("gate") or {}
    tables = gate.get("tables") or {}
    names = sorted(
        {m for split in SPLITS for m in (tables.get("challenger") or {}).get(split, {})} - {"users"}
    )
    rows = []
    for split in SPLITS:
        for metric in names:
            rows.append(
                {
                    "dataset": outcome["dataset"],
                    "model": outcome["model"],
                    "split": split,
                    "metric": metric,
                    "challenger": tables.get("challenger", {}).get(split, {}).get(metric),
                    "champion": tables.get("champion", {}).get(split, {}).get(metric),
                    "popularity": tables.get("popularity", {}).get(split, {}).get(metric),
                }
            )
    return rows


def headline(outcome: dict) -> str:
    """One line: what happened to this model tonight."""
    gate = outcome.get("gate")
    if outcome["status"] == "skipped":
        return f"SKIPPED: {outcome['reason']}"
    if outcome["status"] == "failed":
        return f"FAILED in {outcome.get('stage', 'a stage')}: {outcome['reason']}"
    previous = gate.get("champion_before")
    if gate["promote"]:
        replaces = f" (replaces v{previous})" if previous else " (first champion)"
        return f"PROMOTED v{gate['version']}{replaces}"
    if previous:
        return f"KEPT champion v{previous}: challenger v{gate['version']} rejected"
    return f"REJECTED v{gate['version']}: no champion yet, nothing is served"


def image_markdown(path: Path | None, alt: str) -> str:
    """The training curves inline (base64 PNG), so the UI shows them without file access."""
    if path is None or not path.exists():
        return ""
    encoded = base64.b64encode(path.read_bytes()).decode()
    return f"![{alt}](data:image/png;base64,{encoded})"


def _started_from(training: dict) -> str:
    """How training began: from the champion (what was carried over) or from scratch (why)."""
    start = training.get("started_from") or {}
    if not start.get("warm"):
        reason = start.get("reason")
        return f"Started from scratch ({reason})." if reason else "Started from scratch."
    new = start.get("new", {})
    initial = training.get("start_val", {})
    monitor = "rmse" if "rmse" in initial and "recall@10" not in initial else "recall@10"
    line = (
        f"Warm start from champion v{start['version']}: {start['kept'].get('users', 0):,} users"
        f" and {start['kept'].get('items', 0):,} items carried over, {new.get('users', 0):,} new"
        f" users and {new.get('items', 0):,} new items added."
    )
    if "rmse" in initial:
        line += f" Val RMSE at the start {initial['rmse']:.4f}."
    elif monitor in initial:
        line += f" Val Recall@10 at the start {initial[monitor]:.4f}."
    return line


def model_section(outcome: dict) -> list[str]:
    title = f"### {outcome['model']} on `{outcome['dataset']}`"
    if outcome.get("snapshot_id") is not None:
        title += f" (snapshot {outcome['snapshot_id']})"
    lines = [title, "", f"**{headline(outcome)}**", ""]
    training = outcome.get("training")
    if training:
        lines.append(
            f"Training: best epoch {training['best_epoch']} of {training['epochs_run']},"
            f" {training['seconds']:.1f} s ({training['seconds_to_best']:.1f} s to the best),"
            f" outputs in `{training['run_dir']}`. {_started_from(training)}"
        )
        lines.append("")
    gate = outcome.get("gate")
    if gate:
        rows = metrics_rows(outcome)
        previous = gate.get("champion_before")
        champion = f"champion v{previous}" if previous else "champion"
        lines += [
            f"| split | metric | challenger v{gate['version']} | {champion} | baseline¹ |",
            "|---|---|---:|---:|---:|",
        ]
        for row in rows:
            lines.append(
                f"| {row['split']} | {row['metric']} | {_number(row['challenger'])} |"
                f" {_number(row['champion'])} | {_number(row['popularity'])} |"
            )
        lines += [
            "",
            "¹ MostPopular for the ranking metrics, the training mean rating for RMSE/MAE.",
            "",
            "Gate:",
            "",
        ]
        lines += [f"- {reason}" for reason in gate["reasons"]] + [""]
    scoring = outcome.get("scoring")
    if scoring:
        lines += [
            f"Scoring with v{scoring['model_version']}: {scoring['users']:,} users"
            f" ({scoring['model_users']:,} by the model, {scoring['fallback_users']:,} by the"
            f" popularity fallback), {scoring['rows']:,} rows in {scoring['seconds']:.1f} s"
            f" -> `recommendations` table and `{scoring['parquet']}`.",
            "",
        ]
    if outcome.get("model_dir"):
        lines += [f"Model files: `{outcome['model_dir']}`", ""]
    curve = image_markdown(
        Path(training["run_dir"]) / "history.png" if training else None,
        f"{outcome['model']} training curves",
    )
    if curve:
        lines += [curve, ""]
    return lines


def timings_section(timings: dict[str, float], total: float) -> list[str]:
    lines = ["## Timings", "", "| stage | seconds | share |", "|---|---:|---:|"]
    for stage, seconds in timings.items():
        share = seconds / total if total > 0 else 0.0
        lines.append(f"| {stage} | {seconds:.1f} | {share:.0%} |")
    lines.append(f"| **whole run** | {total:.1f} | 100% |")
    return lines


def nightly_report_markdown(night: dict) -> str:
    """`night`: status, problems, started_at, home, ingest {reports, idle}, outcomes, timings,
    seconds."""
    status = "COMPLETED" if not night["problems"] else "FAILED"
    lines = [f"# Nightly retrain {night['started_at']}: {status}", ""]
    for problem in night["problems"]:
        lines.append(f"- **{problem}**")
    if night["problems"]:
        lines.append("")
    lines += [f"Data home: `{night['home']}`", ""]
    lines += data_section(night["ingest"]["reports"], night["ingest"]["idle"])
    lines += ["", "## Models", ""]
    if not night["outcomes"]:
        lines += ["No model was due tonight.", ""]
    for outcome in night["outcomes"]:
        lines += model_section(outcome)
    lines += timings_section(night["timings"], night["seconds"])
    return "\n".join(lines) + "\n"
