"""The nightly run report: what came in, what was trained, what the gate decided, what was scored.

Pure formatting of the plain dicts the nightly tasks return (no Prefect here), so the same text is
the UI's markdown artifact, the file under `reports/` and what `encore nightly` prints.
"""

from __future__ import annotations

import base64
import math
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.validate.report import report_summary

SPLITS = ("val", "test")
# (stage, start, end) in time.time() seconds of the stages this process has timed lately: what
# a profiler lines its own samples up with (bench/bench_scale.py: peak memory per stage).
# Bounded, as a served deployment's process times night after night.
STAGE_WINDOWS: deque[tuple[str, float, float]] = deque(maxlen=10_000)


@contextmanager
def stage_clock(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Add the block's wall time to `timings[stage]` (seconds), even when the block raises."""
    started, wall_start = time.perf_counter(), time.time()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - started
        STAGE_WINDOWS.append((stage, wall_start, time.time()))


def significant(value: object, digits: int = 4) -> object:
    """A float to `digits` significant digits (what a table in the UI shows), anything else as
    it is: 0.123456789 -> 0.1235, 1234.5678 -> 1235.0."""
    if isinstance(value, float) and math.isfinite(value) and value != 0:
        return float(f"{value:.{digits}g}")
    return value


def rounded_rows(rows: list[dict], digits: int = 4) -> list[dict]:
    """Every float of a table artifact's rows to `digits` significant digits."""
    return [{key: significant(value, digits) for key, value in row.items()} for row in rows]


def markdown_table(rows: list[dict]) -> str:
    """A complete markdown table of `rows` (the UI's table artifact cuts long tables short)."""
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---:|" * len(columns)]
    lines += [
        "| " + " | ".join(_number(significant(r.get(c))) for c in columns) + " |" for r in rows
    ]
    return "\n".join(lines) + "\n"


def _number(value: object) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4g}"
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


# The report's metric rows, in this order (those a contender lacks are left out).
REPORTED = (
    "recall@{k}",
    "ndcg@{k}",
    "cold_recall@{k}",
    "tail_recall@{k}",
    "coverage@{k}",
    "popularity@{k}",
    "rmse",
    "mae",
    "users",
    "cold_users",
)


def _columns(tables: dict) -> list[tuple[str, str]]:
    """(column key, table name) of each contender: challenger, champion, then the baselines."""
    columns = []
    for name in tables:
        if name.startswith("challenger"):
            columns.insert(0, ("challenger", name))
        elif name.startswith("champion"):
            columns.append(("champion", name))
    columns += [(name, name) for name in tables if not name.startswith(("challenger", "champion"))]
    return columns


def metrics_rows(outcome: dict) -> list[dict]:
    """One row per (split, metric), one column per contender (the table artifact)."""
    gate = outcome.get("gate") or {}
    tables = gate.get("tables") or {}
    k = (gate.get("thresholds") or {}).get("k", 10)
    columns = _columns(tables)
    present = {m for t in tables.values() for part in t.values() for m in part}
    rows = []
    for split in SPLITS:
        for template in REPORTED:
            metric = template.format(k=k)
            if metric not in present:
                continue
            row = {"dataset": outcome["dataset"], "model": outcome["model"], "split": split}
            row["metric"] = metric
            for key, name in columns:
                row[key] = tables[name].get(split, {}).get(metric)
            rows.append(row)
    return rows


def baseline_ratios(gate: dict) -> list[str]:
    """The challenger's val and test Recall@K and NDCG@K as a share of the best baseline's."""
    tables, k = gate.get("tables") or {}, (gate.get("thresholds") or {}).get("k", 10)
    challenger = next((t for n, t in tables.items() if n.startswith("challenger")), None)
    baselines = {n: t for n, t in tables.items() if not n.startswith(("challenger", "champion"))}
    if challenger is None or not baselines:
        return []
    primary = "rmse" if "rmse" in challenger.get("val", {}) else f"recall@{k}"
    pick = min if primary == "rmse" else max
    best = pick(baselines, key=lambda n: baselines[n]["val"].get(primary, float("nan")))
    lines = []
    for metric in (primary,) if primary == "rmse" else (f"recall@{k}", f"ndcg@{k}"):
        ratios = [
            f"{split} {challenger[split][metric] / baselines[best][split][metric]:.2f}x"
            for split in SPLITS
            if baselines[best][split].get(metric)
        ]
        lines.append(f"{gate.get('model', 'challenger')} / {best} {metric}: {', '.join(ratios)}")
    return lines


def headline(outcome: dict) -> str:
    """One line: what happened to this model tonight, and what serves."""
    gate = outcome.get("gate")
    if outcome["status"] == "skipped":
        return f"SKIPPED: {outcome['reason']}"
    if outcome["status"] == "failed":
        return f"FAILED in {outcome.get('stage', 'a stage')}: {outcome['reason']}"
    if outcome["status"] == "rescored":
        return f"RESCORED: the champion had no lists (an interrupted night); {outcome['reason']}"
    previous, after = gate.get("champion_before"), gate.get("champion_after")
    replaces = f" (replaces v{previous})" if previous and previous != after else ""
    if previous is None and after is not None:
        replaces = " (first champion)"
    if gate["serve_role"] == "challenger":
        return f"PROMOTED v{gate['version']}{replaces}: {gate['rule']}"
    if gate["serve_role"] == "baseline":
        return (
            f"BASELINE SERVES: {gate['serve']}{replaces}; challenger v{gate['version']} did not"
            f" ({gate['rule']})"
        )
    if after is not None:
        return (
            f"KEPT champion v{after} ({gate['champion_after_family']}): challenger"
            f" v{gate['version']} rejected"
        )
    return f"REJECTED v{gate['version']}: nothing can serve yet"


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


def _blend_line(training: dict) -> str:
    """What the item-item blend (models_src/item_item.py) chose on val, and what it changed."""
    blend = training.get("item_item")
    if not blend:
        return ""
    if "skipped" in blend:
        return f"Item-item blend: not built ({blend['skipped']})."
    alone = blend["val"].get("embeddings alone")
    if not blend["weight"]:
        return f"Item-item blend: the embeddings alone ranked best on val ({alone:.4f})."
    best = max(v for name, v in blend["val"].items() if name != "embeddings alone")
    if blend.get("method"):  # neighbour lists, past the dense cap
        params = ", ".join(f"{key} {value:g}" for key, value in blend["params"].items())
        weights = f"{blend['method']} neighbour lists ({params})"
    else:
        weights = f"EASE^R λ {blend['lambda']:g}"
    return (
        f"Item-item blend: {weights}, weight {blend['weight']:g}, chosen on val (its monitored"
        f" metric {best:.4f} against {alone:.4f} for the embeddings alone;"
        f" {blend['seconds']:.0f} s)."
    )


def model_section(outcome: dict) -> list[str]:
    title = f"### {outcome['model']} on `{outcome['dataset']}`"
    if outcome.get("snapshot_id") is not None:
        title += f" (snapshot {outcome['snapshot_id']})"
    lines = [title, "", f"**{headline(outcome)}**", ""]
    if outcome.get("healed"):
        lines += [f"Healed from an interrupted night: {outcome['healed']}.", ""]
    training = outcome.get("training")
    if training:
        lines.append(
            f"Training: best epoch {training['best_epoch']} of {training['epochs_run']},"
            f" {training['seconds']:.1f} s ({training['seconds_to_best']:.1f} s to the best),"
            f" outputs in `{training['run_dir']}`. {_started_from(training)}"
        )
        if outcome.get("tuned_from"):
            lines.append(f"Parameters from the tuning job: {outcome['tuned_from']}.")
        blend = _blend_line(training)
        if blend:
            lines.append(blend)
        lines.append("")
    gate = outcome.get("gate")
    if gate:
        lines += _gate_lines(outcome, gate)
    serving = outcome.get("serving")
    if serving:
        kept = "the kept champion's " if serving.get("refreshed") else ""
        lines += [
            f"Serving refit of {kept}configuration on all of the snapshot: v{serving['version']}."
            if "version" in serving
            else f"**Serving refit refused** ({serving['refused']}): {still_serving(serving)}.",
            "",
        ]
    scoring = outcome.get("scoring")
    if scoring:
        lines += [
            f"Lists scored by {scoring['kind']} v{scoring['model_version']} (serving for champion"
            f" v{scoring['champion']}, rows marked `{scoring['source']}`): {scoring['users']:,}"
            f" users ({scoring['model_users']:,} by the model, {scoring['fallback_users']:,} by"
            f" the popularity fallback), {scoring['rows']:,} rows in {scoring['seconds']:.1f} s"
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


def _gate_lines(outcome: dict, gate: dict) -> list[str]:
    """Every contender's metrics on val and test, the ratios to the best baseline, and the
    gate's checks with their intervals and p-values."""
    columns = _columns(gate.get("tables") or {})
    lines = [
        "| split | metric | " + " | ".join(name for _, name in columns) + " |",
        "|---|---|" + "---:|" * len(columns),
    ]
    for row in metrics_rows(outcome):
        values = " | ".join(_number(row[key]) for key, _ in columns)
        lines.append(f"| {row['split']} | {row['metric']} | {values} |")
    lines += [
        "",
        "cold: users with at most 5 train items; tail: items outside the most popular"
        " 20 %; popularity: mean share of users who had each recommended item.",
        "",
    ]
    ratios = baseline_ratios(gate)
    if ratios:
        lines += ["Against the best baseline: " + "; ".join(ratios) + ".", ""]
    lines += [f"**WARNING: {w}**" for w in gate.get("warnings", [])]
    lines += ["", "Gate (paired bootstrap over users, or ratings for RMSE):", ""]
    return lines + [f"- {reason}" for reason in gate["reasons"]] + [""]


def timings_section(timings: dict[str, float], total: float) -> list[str]:
    lines = ["## Timings", "", "| stage | seconds | share |", "|---|---:|---:|"]
    for stage, seconds in timings.items():
        share = seconds / total if total > 0 else 0.0
        lines.append(f"| {stage} | {seconds:.1f} | {share:.0%} |")
    lines.append(f"| **whole run** | {total:.1f} | 100% |")
    return lines


def cleaning_section(cleaned: dict | None) -> list[str]:
    """What the retention policy removed tonight (flows/nightly.py `_clean`)."""
    if cleaned is None:
        return ["## Data home", "", "Cleaning is off (`retention.enabled`).", ""]
    if "error" in cleaned:
        return ["## Data home", "", f"**WARNING: cleaning failed: {cleaned['error']}**", ""]
    versions = ", ".join(f"v{v}" for v in cleaned["versions"]) or "none"
    return [
        "## Data home",
        "",
        f"Removed {len(cleaned['removed'])} folders ({cleaned['bytes'] / 1e6:,.1f} MB) that the"
        f" retention policy no longer keeps; model versions whose files went: {versions}"
        " (their metrics stay in the registry)." + _prefect_line(cleaned.get("prefect")),
        "",
    ]


def _prefect_line(pruned: dict | None) -> str:
    if not pruned or not pruned["flow_runs"]:
        return ""
    return (
        f" Prefect's database let go of {pruned['flow_runs']} old flow runs and"
        f" {pruned['artifacts']} artifacts."
    )


def nightly_report_markdown(night: dict) -> str:
    """`night`: status, problems, started_at, home, ingest {reports, idle}, outcomes, timings,
    seconds, and optionally cleaned (what the retention policy removed)."""
    status = "FAILED" if night["problems"] else "COMPLETED"
    if not night["problems"] and night.get("warnings"):
        status = "COMPLETED WITH WARNINGS"
    lines = [f"# Nightly retrain {night['started_at']}: {status}", ""]
    for problem in night["problems"]:
        lines.append(f"- **{problem}**")
    for warning in night.get("warnings", []):
        lines.append(f"- **WARNING: {warning}**")
    if night["problems"] or night.get("warnings"):
        lines.append("")
    lines += [f"Data home: `{night['home']}`", ""]
    lines += data_section(night["ingest"]["reports"], night["ingest"]["idle"])
    lines += ["", "## Models", ""]
    if not night["outcomes"]:
        lines += ["No model was due tonight.", ""]
    for outcome in night["outcomes"]:
        lines += model_section(outcome)
    if "cleaned" in night:
        lines += cleaning_section(night["cleaned"])
    lines += timings_section(night["timings"], night["seconds"])
    return "\n".join(lines) + "\n"


def still_serving(serving: dict) -> str:
    """What serves when a serving refit was refused."""
    if serving.get("refreshed"):
        return "the kept champion's previous serving model goes on serving"
    return "the evaluated model serves"
