"""The data home: the one folder where Encore keeps all of its state.

Default `./data`, overridden by `ENCORE_HOME`. Prefect's home and library caches are pointed inside
it so that nothing is written to `~` (schedulers often run with a read-only or shared home).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EncoreHome:
    root: Path

    @classmethod
    def from_env(cls) -> EncoreHome:
        return cls(Path(os.environ.get("ENCORE_HOME", "data")).resolve())

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse.duckdb"

    @property
    def sources_file(self) -> Path:
        return self.root / "sources.toml"

    @property
    def landing(self) -> Path:
        return self.root / "landing"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def prefect_home(self) -> Path:
        return self.root / "prefect"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    def ensure(self) -> EncoreHome:
        for folder in (self.root, self.landing, self.reports, self.cache, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)
        return self


def recommendations_file(exports_dir: Path, dataset: str) -> Path:
    """The Parquet export of a dataset's ranked lists (what consumers read)."""
    return exports_dir / f"recommendations_{dataset}_ranking.parquet"


def configure_environment(home: EncoreHome | None = None) -> EncoreHome:
    """Point Prefect and library caches into the data home; call before importing prefect.

    Variables the user already set win, so a deployment can still point at a shared Prefect server.
    """
    home = (home or EncoreHome.from_env()).ensure()
    defaults = {
        "ENCORE_HOME": str(home.root),
        "PREFECT_HOME": str(home.prefect_home),
        "MPLCONFIGDIR": str(home.cache / "matplotlib"),
        "XDG_CACHE_HOME": str(home.cache),
        # Both phone home; a scheduler without internet got a `database is locked` traceback
        # from Prefect's telemetry service in the first seconds of `make run`.
        "GX_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # The temporary server of `encore nightly` creates its database on a fresh data home,
        # which on a small machine can outlast Prefect's 20 s default wait.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    }
    for name, value in defaults.items():
        os.environ.setdefault(name, value)
    return home
