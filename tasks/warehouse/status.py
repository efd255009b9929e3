"""What the warehouse holds, as text for `encore status`."""

from __future__ import annotations

import duckdb

from tasks.home import EncoreHome


def _table(headers: list[str], rows: list[tuple]) -> list[str]:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    out += [
        "  ".join(
            c.rjust(w) if c[:1].isdigit() else c.ljust(w) for c, w in zip(row, widths, strict=True)
        )
        for row in cells
    ]
    return out


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def status_text(con: duckdb.DuckDBPyConnection, home: EncoreHome) -> str:
    lines = [f"warehouse: {home.warehouse}", ""]
    datasets = con.execute(
        """SELECT d.name, d.kind,
                  CASE WHEN d.rating_low IS NULL THEN '-'
                       ELSE d.rating_low || '-' || d.rating_high END AS scale,
                  (SELECT count(*) FROM user_ids u WHERE u.dataset = d.name),
                  (SELECT count(*) FROM item_ids i WHERE i.dataset = d.name),
                  (SELECT count(*) FROM training_interactions t WHERE t.dataset = d.name),
                  (SELECT count(*) FROM source_files f WHERE f.dataset = d.name)
           FROM datasets d ORDER BY d.name"""
    ).fetchall()
    if not datasets:
        return "\n".join(lines + ["no data yet: run `encore generate-sample` then `encore ingest`"])
    lines += ["Datasets"]
    lines += _table(
        ["dataset", "kind", "scale", "users", "items", "trainable rows", "files"], datasets
    )
    snapshots = con.execute(
        """SELECT snapshot_id, dataset, status, strftime(created_at, '%Y-%m-%d %H:%M'),
                  rows_read, loaded, duplicates, rejected, quarantined,
                  CASE WHEN rows_read = loaded + duplicates + rejected + quarantined
                       THEN 'holds' ELSE 'BROKEN' END
           FROM snapshots ORDER BY snapshot_id DESC LIMIT 20"""
    ).fetchall()
    lines += ["", "Snapshots (newest first; read = loaded + duplicates + rejected + quarantined)"]
    lines += _table(
        [
            "id",
            "dataset",
            "status",
            "created",
            "read",
            "loaded",
            "duplicates",
            "rejected",
            "quarantined",
            "accounting",
        ],
        snapshots,
    )
    errors = con.execute(
        "SELECT dataset, path, error FROM source_files WHERE status = 'error' ORDER BY file_id DESC"
        " LIMIT 5"
    ).fetchall()
    if errors:
        lines += ["", "Unreadable files (newest first)"]
        lines += [f"  {dataset}: {error}" for dataset, _, error in errors]
    return "\n".join(lines)


def unknown_dataset(con: duckdb.DuckDBPyConnection, dataset: str) -> str | None:
    """None when the warehouse knows `dataset`; else one line naming the ones it knows and the
    nearest (a typo is the usual cause)."""
    from tasks.ingest.sources import dataset_choices

    names = [r[0] for r in con.execute("SELECT name FROM datasets ORDER BY name").fetchall()]
    if dataset in names:
        return None
    return f"no dataset '{dataset}' in the warehouse {dataset_choices(dataset, names)}"


def why_no_list(con: duckdb.DuckDBPyConnection, dataset: str, user_id: str) -> str:
    """Why `user_id` of a known `dataset` has no recommendations, and what gives them one."""
    from tasks.registry.registry import champion

    serving = champion(con, "ranking", dataset)
    if serving is None:
        return f"{dataset} has no ranking champion yet: `encore nightly` trains and scores one"
    users, known = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE external_id = ?) FROM user_ids WHERE dataset = ?",
        [user_id, dataset],
    ).fetchone()
    if not known:
        return (
            f"no user '{user_id}' in {dataset} ({users:,} users; ids match exactly): a user gets"
            " a list from the first night that loads one of their interactions"
        )
    lists = con.execute(
        "SELECT count(*) FROM recommendations WHERE dataset = ?", [dataset]
    ).fetchone()[0]
    if not lists:
        return (
            f"{dataset}'s champion v{serving['version']} has not scored its lists yet: the next"
            " `encore nightly` does, or the 'batch-score/manual' deployment"
        )
    return (
        f"user '{user_id}' of {dataset} arrived after the last scoring: the next `encore nightly`"
        " (or the 'batch-score/manual' deployment) gives them a list"
    )
