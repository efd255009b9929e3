"""Shared fixtures. The data home and Prefect's home point at a temp folder before any test
imports Prefect, so the suite never writes to ./data or ~."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="encore-tests-"))
os.environ["ENCORE_HOME"] = str(_SESSION_HOME)
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from models_src.data import Interactions  # noqa: E402
from models_src.sample_data import SampleConfig, write_sample_days  # noqa: E402
from tasks.home import EncoreHome, configure_environment  # noqa: E402
from tasks.ingest.sources import PRESETS, DatasetSpec, SourceFormat  # noqa: E402
from tasks.warehouse.schema import connect  # noqa: E402

configure_environment(EncoreHome(_SESSION_HOME))
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """One real Prefect server (Prefect's test harness: a uvicorn subprocess on a temporary
    SQLite database) for every test that runs flows. Starting one takes ~20 s on 2 cores, so the
    flow, nightly, Dask and CLI tests share it; yields its API URL for subprocesses."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture
def home(tmp_path: Path) -> EncoreHome:
    return EncoreHome(tmp_path / "home").ensure()


@pytest.fixture
def con(home: EncoreHome) -> Iterator:
    connection = connect(home.warehouse)
    yield connection
    connection.close()


@pytest.fixture
def write_file(tmp_path: Path) -> Callable[[str, bytes | str], Path]:
    def write(name: str, content: bytes | str) -> Path:
        path = tmp_path / "landing" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    return write


def spec_for(format_name: str | SourceFormat, path: Path, name: str = "ds") -> DatasetSpec:
    fmt = PRESETS[format_name] if isinstance(format_name, str) else format_name
    return DatasetSpec(name, fmt, path)


# A few days of the built-in sample, small enough for flow tests (one file per day and kind).
TINY = {
    "listens": SampleConfig(seed=1, n_users=80, n_items=120, n_groups=6, events_per_day=400),
    "ratings": SampleConfig(seed=2, n_users=60, n_items=90, n_groups=5, events_per_day=300),
}


def write_days(home: EncoreHome, days: range) -> None:
    for kind, config in TINY.items():
        write_sample_days(home.landing / f"sample-{kind}", kind, config, days)


@pytest.fixture
def flow_home(tmp_path: Path, monkeypatch) -> EncoreHome:
    """An empty data home, made current (ENCORE_HOME), with the sample's sources.toml."""
    from flows.cli import SAMPLE_SOURCES

    home = EncoreHome(tmp_path / "home").ensure()
    monkeypatch.setenv("ENCORE_HOME", str(home.root))
    home.sources_file.write_text(SAMPLE_SOURCES)
    return home


def planted(users: int, items_per_group: int, groups: list[str], seed: int) -> Interactions:
    """Users each like one group's items (and rate them high): structure a model can learn.
    Ids are external strings; group codes follow sorted names, as the warehouse export does."""
    rng = np.random.default_rng(seed)
    names = sorted(groups)
    item_group = np.repeat([names.index(g) for g in groups], items_per_group)
    n_items = len(item_group)
    user, item = [], []
    for u in range(users):
        liked = np.flatnonzero(item_group == names.index(groups[u % len(groups)]))
        for i in rng.choice(liked, size=min(10, len(liked)), replace=False):
            user.append(u)
            item.append(i)
    rating = np.where(rng.random(len(user)) < 0.8, 5.0, 3.0).astype(np.float32)
    return Interactions(
        np.array(user),
        np.array(item),
        users,
        n_items,
        rating=rating,
        item_group=item_group,
        meta={
            "user_ids": [f"user-{u}" for u in range(users)],
            "item_ids": [f"item-{i}" for i in range(n_items)],
            "group_ids": names,
            "rating_scale": [1.0, 5.0],
        },
    )
