"""Ingest the real datasets in ../shared/data and check their published counts.

Skips cleanly on a fresh clone without ../shared (the data's licence forbids copying it here).
"""

from __future__ import annotations

import pytest
from conftest import SHARED_DATA, spec_for

from tasks.ingest.load import ingest_file
from tasks.ingest.snapshots import open_snapshot, register_dataset
from tasks.validate.thresholds import ValidationThresholds
from tasks.validate.validation import validate_snapshot

pytestmark = pytest.mark.integration

CASES = [
    # file, format, rows, users, items
    ("ml-100k/u.data", "movielens-100k", 100_000, 943, 1_682),
    ("ml-latest-small/ratings.csv", "movielens-csv", 100_836, 610, 9_724),
    ("hetrec2011-lastfm-2k/user_artists.dat", "lastfm-user-artists", 92_834, 1_892, 17_632),
]


@pytest.mark.parametrize(("relative", "format_name", "n_rows", "n_users", "n_items"), CASES)
def test_published_counts(con, relative, format_name, n_rows, n_users, n_items):
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"{path} not present (../shared is optional)")
    spec = spec_for(format_name, path, "real")
    register_dataset(con, spec)
    snapshot_id = open_snapshot(con, "real")
    result = ingest_file(con, spec, path, snapshot_id)
    assert (result.rows_read, result.loaded, result.duplicates, result.rejected) == (
        n_rows,
        n_rows,
        0,
        0,
    )
    assert (result.new_users, result.new_items) == (n_users, n_items)
    # MovieLens ratings are from 1996-2018: the default 'absurdly old' bound (1995) keeps them.
    report = validate_snapshot(con, snapshot_id, ValidationThresholds())
    assert report["status"] == "passed", report["failed"]
    assert report["accounting"]["totals"]["quarantined"] == 0
