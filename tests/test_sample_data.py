"""The sample generator: deterministic, day-addressable, streamed, with learnable structure."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from models_src.sample_data import (
    SampleConfig,
    SampleWorld,
    default_configs,
    existing_days,
    write_events,
    write_sample_days,
)

SMALL = SampleConfig(seed=3, n_users=300, n_items=500, n_groups=10, events_per_day=2_000)


def day_table(world: SampleWorld, kind: str, day: int, chunk_rows: int = 1_000_000) -> pa.Table:
    return pa.concat_tables(world.events(kind, day, chunk_rows))


def test_same_config_same_bytes(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    write_events(SampleWorld(SMALL), "listens", range(2), a)
    write_events(SampleWorld(SMALL), "listens", range(2), b)
    assert a.read_bytes() == b.read_bytes()


def test_a_day_is_the_same_alone_or_with_others(tmp_path):
    together, alone = tmp_path / "all.csv", tmp_path / "day.csv"
    write_events(SampleWorld(SMALL), "ratings", range(3), together)
    write_events(SampleWorld(SMALL), "ratings", range(2, 3), alone)
    assert together.read_text().splitlines()[-5:] == alone.read_text().splitlines()[-5:]


def test_chunked_generation_has_the_requested_size():
    world = SampleWorld(SMALL)
    chunks = list(world.events("listens", 0, chunk_rows=500))
    assert all(c.num_rows <= 500 for c in chunks)
    assert sum(c.num_rows for c in chunks) == world.day_size(0)


def test_users_concentrate_on_their_groups_and_items_follow_zipf():
    world = SampleWorld(SMALL)
    table = pa.concat_tables(day_table(world, "listens", d) for d in range(5)).to_pandas()
    per_user = table.groupby("user_id")["artist_id"].agg(
        lambda s: s.value_counts(normalize=True).iloc[0]
    )
    heavy = per_user[table.groupby("user_id").size() >= 20]
    # With 10 groups a user without taste would put ~10% in its top group.
    assert heavy.median() > 0.3
    counts = table["track_id"].value_counts().to_numpy()
    top_decile_share = counts[: len(counts) // 10].sum() / counts.sum()
    assert top_decile_share > 0.35


def test_ratings_are_half_stars_within_1_to_5_and_follow_affinity():
    world = SampleWorld(SMALL)
    table = day_table(world, "ratings", 0).to_pandas()
    assert set(np.unique(table["rating"] * 2)) <= set(range(2, 11))
    assert 3.0 < table["rating"].mean() < 4.2


def test_new_users_arrive_on_later_days():
    world = SampleWorld(SMALL)
    first = set(day_table(world, "listens", 0)["user_id"].to_pylist())
    later = set(day_table(world, "listens", 40)["user_id"].to_pylist())
    assert later - first


def test_sample_days_are_written_once(tmp_path):
    config = default_configs()["ratings"]
    folder = tmp_path / "landing"
    assert len(write_sample_days(folder, "ratings", config, range(2))) == 2
    assert write_sample_days(folder, "ratings", config, range(2)) == []
    assert existing_days(folder, "ratings", config.start) == [0, 1]
