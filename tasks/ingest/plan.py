"""Which landing files are due, per dataset: the ingest's plan, without Prefect.

The ingest flow runs it as its first task (`tasks/ingest/tasks.py::plan_ingest`); `encore
ingest` runs it first on its own, so that with nothing new it answers without starting a
temporary Prefect server (importing Prefect alone takes about 2 s on 2 cores).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from tasks.ingest.scan import scan_file
from tasks.ingest.snapshots import (
    already_loaded,
    held_back,
    is_known_unchanged,
    pending_snapshot,
    refused_before,
    register_dataset,
)
from tasks.ingest.sources import SourceConfigError
from tasks.ingest.sources_file import landing_problems, load_datasets
from tasks.score.names import load_item_names
from tasks.warehouse.schema import warehouse

_LOG = logging.getLogger("encore.ingest")


def plan_datasets(
    sources_file: str,
    warehouse_path: str,
    datasets: list[str] | None,
    warn: Callable[[str], None] = _LOG.warning,
) -> dict:
    """Per dataset: which landing files are new (already-loaded content is skipped by sha256),
    the snapshot an interrupted ingest left pending, if any, and what failed validation since
    the last snapshot that passed, and the reminders for files refused before and not changed
    since: {"files": [...], "refused": [...], "pending", "held_back"}."""
    plan: dict[str, dict] = {}
    specs = load_datasets(Path(sources_file))
    unknown = sorted(set(datasets or []) - {s.name for s in specs})
    if unknown:
        raise KeyError(f"{sources_file}: no dataset named {unknown}")
    with warehouse(Path(warehouse_path)) as con:
        for spec in specs:
            if datasets and spec.name not in datasets:
                continue
            missing = [p for p in landing_problems(spec) if "does not exist" in p]
            if missing:  # not "no new files": the dataset would stop taking data unnoticed
                raise SourceConfigError(missing[0])
            register_dataset(con, spec)
            if spec.item_names is not None:
                load_item_names(con, spec.name, spec.item_names, spec.item_names_format or "")
            files, refused = [], []
            for path in spec.landing_files():
                if is_known_unchanged(con, spec.name, path):
                    continue
                sha256 = scan_file(path).sha256
                why = refused_before(con, spec.name, sha256)
                if why is not None:
                    refused.append(
                        f"{path} is unchanged since it was {why.split(': ', 1)[0]}; replace it,"
                        f" or `encore ingest --retry {path}` to read it again"
                    )
                    warn(refused[-1])
                elif already_loaded(con, spec.name, sha256) is None:
                    files.append(str(path))
            plan[spec.name] = {
                "files": files,
                "refused": refused,
                "pending": pending_snapshot(con, spec.name),
                "held_back": held_back(con, spec.name),
            }
    return plan


def quiet_datasets(
    sources_file: str, warehouse_path: str, datasets: list[str] | None, validate: bool
) -> dict[str, str] | None:
    """When nothing can be due, why each dataset is idle; None as soon as something may be: a
    landing file not loaded before with this size and mtime (new, changed or refused: only the
    flow hashes it), or a pending snapshot to validate. Reads stats, never file contents, so it
    costs a directory listing however large the files are."""
    if not Path(warehouse_path).exists():
        return None
    idle = {}
    with warehouse(Path(warehouse_path)) as con:
        tables = {
            name for (name,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
        }
        if "source_files" not in tables:
            return None
        for spec in load_datasets(Path(sources_file)):
            if datasets and spec.name not in datasets:
                continue
            if validate and pending_snapshot(con, spec.name) is not None:
                return None
            if not all(is_known_unchanged(con, spec.name, p) for p in spec.landing_files()):
                return None
            held = held_back(con, spec.name)
            idle[spec.name] = "no new files in the landing folder" + (f"; {held}" if held else "")
    return idle
