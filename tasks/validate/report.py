"""A snapshot's validation report: its JSON (stored with the snapshot and in data/reports), the
one-line summary the CLI prints, and the markdown the Prefect artifact and the run report show."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import duckdb

from tasks.ingest.errors import AccountingError
from tasks.validate.info import (
    DatasetInfo,
    _jsonable,
)


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
