"""What the data home keeps, and what `encore gc` (and the end of every night) removes.

Kept, whatever their age:
- every champion, with its latest serving refit: what serves and what tomorrow's gate compares;
- the `previous_champions` champions before it (the chain `encore rollback` walks), each with
  its latest serving refit;
- every candidate (a night in progress, or one a killed night left for the next to heal);
- the warehouse, the reports, the exports and the landing files.

Removed:
- the files of any other version (rejected, retired beyond the rollback chain, superseded serving
  refits) once `rejected_nights` newer snapshots of its dataset exist. Its registry row, metrics
  and the gate's decisions stay; the row records when and why its files went, so a promotion of
  it is refused in one line instead of failing on a missing file;
- a version directory no registry row points at (a publish killed before its commit);
- the nightly scratch folders `runs/<night>/` beyond the newest `night_runs`: training outputs
  and resume checkpoints, of no use once a night has published what it keeps.

Age is counted in snapshots (nights that brought data), not calendar days: a pipeline paused
for a holiday keeps its latest evidence, and the rule holds however often the night runs.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb
from pydantic import BaseModel, ConfigDict, Field

from tasks.registry.registry import ensure_registry, predecessor, serving_version, version_row
from tasks.warehouse.schema import transaction

NIGHT_FOLDER = re.compile(r"\d{8}T\d{6}")


class RetentionPolicy(BaseModel):
    """How much history the data home keeps (docs/operating.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(
        True, description="Remove what the policy below no longer keeps at the end of each night."
    )
    previous_champions: int = Field(
        2,
        ge=0,
        description="Earlier champions whose model files stay, so `encore rollback` can go back "
        "this many steps.",
    )
    rejected_nights: int = Field(
        3,
        ge=0,
        description="Nights with new data during which a model that does not serve keeps its "
        "files (to inspect it or `encore promote` it); after that only its metrics remain.",
    )
    night_runs: int = Field(
        1,
        ge=0,
        description="Most recent nights whose training folders (runs/<night>: checkpoints, "
        "curves, logs) are kept.",
    )
    prefect_days: float = Field(
        90,
        gt=0,
        description="Days Prefect's database keeps Encore's finished runs, their task runs and "
        "artifacts (shown in the Prefect UI).",
    )


@dataclass(frozen=True)
class Removal:
    """One folder the policy no longer keeps."""

    path: str
    bytes: int
    reason: str
    version: int | None = None


def plan_removals(
    con: duckdb.DuckDBPyConnection, root: Path, policy: RetentionPolicy
) -> list[Removal]:
    """What `apply_removals` would delete under `policy`, without deleting anything."""
    ensure_registry(con)
    return (
        _expired_versions(con, policy)
        + _unregistered_folders(con, root / "models")
        + _old_night_runs(root / "runs", policy.night_runs)
    )


def apply_removals(con: duckdb.DuckDBPyConnection, removals: list[Removal]) -> dict:
    """Delete what `plan_removals` listed. A version is marked pruned before its files go: a
    crash in between leaves a marked row and a folder the next gc removes as unregistered."""
    versions = [r for r in removals if r.version is not None]
    with transaction(con):
        for removal in versions:
            con.execute(
                "UPDATE model_versions SET pruned_at = now(), pruned_reason = ? WHERE version = ?",
                [removal.reason, removal.version],
            )
    for removal in removals:
        shutil.rmtree(removal.path, ignore_errors=True)
    return {
        "removed": [asdict(r) for r in removals],
        "bytes": sum(r.bytes for r in removals),
        "versions": [r.version for r in versions],
    }


def kept_versions(con: duckdb.DuckDBPyConnection, previous_champions: int) -> set[int]:
    """Champions, the rollback chain behind each and the serving refit of each of them."""
    kept: set[int] = set()
    for (version,) in con.execute(
        "SELECT version FROM model_versions WHERE status = 'champion'"
    ).fetchall():
        row = version_row(con, version)
        for _ in range(previous_champions + 1):
            kept |= {row["version"], serving_version(con, row)["version"]}
            earlier = predecessor(con, row)
            if earlier is None:
                break
            row = version_row(con, earlier)
    return kept


def _expired_versions(con: duckdb.DuckDBPyConnection, policy: RetentionPolicy) -> list[Removal]:
    kept = kept_versions(con, policy.previous_champions)
    rows = con.execute(
        """SELECT v.version, v.status, v.artifact_dir,
                  (SELECT count(*) FROM snapshots s
                   WHERE s.dataset = v.dataset AND s.snapshot_id > coalesce(v.snapshot_id, -1))
           FROM model_versions v
           WHERE v.pruned_at IS NULL AND v.status <> 'champion' AND v.status <> 'candidate'
           ORDER BY v.version"""
    ).fetchall()
    removals = []
    for version, status, directory, newer_snapshots in rows:
        if version in kept or newer_snapshots < policy.rejected_nights:
            continue
        reason = (
            f"{status}, {newer_snapshots} newer snapshots; the policy keeps a model that does not"
            f" serve for {policy.rejected_nights} and {policy.previous_champions} earlier"
            " champions for rollback"
        )
        removals.append(Removal(directory, _size(Path(directory)), reason, version))
    return removals


def _unregistered_folders(con: duckdb.DuckDBPyConnection, models_root: Path) -> list[Removal]:
    """Version folders (and `.partial` copies) no unpruned registry row points at."""
    registered = {
        str(Path(d))
        for (d,) in con.execute(
            "SELECT artifact_dir FROM model_versions WHERE pruned_at IS NULL"
        ).fetchall()
    }
    found = sorted(models_root.glob("*/*/v*")) if models_root.exists() else []
    return [
        Removal(str(path), _size(path), "no registry row points at it (a publish cut short)")
        for path in found
        if path.is_dir() and str(path) not in registered
    ]


def _old_night_runs(runs_root: Path, keep: int) -> list[Removal]:
    nights = (
        sorted(p for p in runs_root.glob("*") if p.is_dir() and NIGHT_FOLDER.fullmatch(p.name))
        if runs_root.exists()
        else []
    )
    expired = nights[: max(len(nights) - keep, 0)]
    return [
        Removal(str(p), _size(p), f"a night's training folder; the policy keeps the last {keep}")
        for p in expired
    ]


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0
