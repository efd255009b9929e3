"""Training from the warehouse: the export models_src reads, and the `train` flow."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import spec_for

from models_src.data import Interactions
from tasks.ingest.load import ingest_file
from tasks.ingest.snapshots import open_snapshot, register_dataset
from tasks.ingest.sources import SourceFormat
from tasks.train.export import export_interactions
from tasks.validate.thresholds import ValidationThresholds
from tasks.validate.validation import validate_snapshot

LOOSE = ValidationThresholds(
    min_users=1, min_items=1, min_interactions=1, max_quarantine_fraction=1.0
)


def load_ratings(con, write_file, name: str, body: str) -> int:
    path = write_file(name, "user_id,movie_id,genre,rating,rated_at\n" + body)
    spec = spec_for("encore-ratings", path, "movies")
    register_dataset(con, spec)
    snapshot_id = open_snapshot(con, "movies")
    ingest_file(con, spec, path, snapshot_id)
    validate_snapshot(con, snapshot_id, LOOSE)
    return snapshot_id


def test_export_round_trips_ids_groups_scale_and_only_passed_rows(con, write_file, tmp_path):
    first = load_ratings(
        con,
        write_file,
        "a.csv",
        "u1,m1,Drama,4.0,2026-10-01 10:00:00\nu2,m2,Comedy,3.5,2026-10-01 11:00:00\n"
        "u1,m2,Comedy,9.0,2026-10-01 12:00:00\n",
    )  # 9.0: quarantined
    export = export_interactions(con, "movies", tmp_path / "movies.parquet")
    assert export["snapshot_id"] == first and export["rows"] == 2
    data = Interactions.from_parquet(tmp_path / "movies.parquet")
    assert (data.num_users, data.num_items) == (2, 2)
    assert data.meta["user_ids"] == ["u1", "u2"] and data.meta["item_ids"] == ["m1", "m2"]
    assert data.meta["rating_scale"] == [1.0, 5.0] and data.meta["snapshot_id"] == first
    assert data.rating.tolist() == [4.0, 3.5]
    assert data.item_group.tolist() == [1, 0]  # Comedy=0, Drama=1
    assert np.all(data.ts >= 1_790_000_000)


def test_an_export_of_a_source_without_timestamps_carries_none(con, write_file, tmp_path):
    path = write_file("plays.tsv", "user\tartist\tplays\nu1\ta1\t3\nu2\ta1\t5\nu2\ta2\t1\n")
    fmt = SourceFormat(
        kind="implicit",
        delimiter="\t",
        header=True,
        columns={"user_id": "user", "item_id": "artist", "weight": "plays"},
    )
    spec = spec_for(fmt, path, "plays")
    register_dataset(con, spec)
    snapshot_id = open_snapshot(con, "plays")
    ingest_file(con, spec, path, snapshot_id)
    validate_snapshot(con, snapshot_id, LOOSE)
    export_interactions(con, "plays", tmp_path / "plays.parquet")
    data = Interactions.from_parquet(tmp_path / "plays.parquet")
    assert len(data) == 3 and data.ts is None


def test_export_refuses_a_dataset_without_passed_snapshot(con, tmp_path):
    with pytest.raises(ValueError, match="no passed snapshot"):
        export_interactions(con, "nothing", tmp_path / "x.parquet")
