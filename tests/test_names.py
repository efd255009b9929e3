"""Item names for `encore recommend`: MovieLens titles and Last.fm artist names."""

from __future__ import annotations

import pytest
from conftest import SHARED_DATA

from tasks.ingest.sources_file import load_datasets
from tasks.score.names import load_item_names


def names(con, dataset: str) -> dict[str, str]:
    return dict(
        con.execute(
            "SELECT external_id, name FROM item_names WHERE dataset = ?", [dataset]
        ).fetchall()
    )


def test_movielens_u_item_is_latin1_pipe_separated(con, tmp_path):
    path = tmp_path / "u.item"
    path.write_bytes(
        "1|Toy Story (1995)|01-Jan-1995||http://x|0|0\n"
        "2|Amélie (2001)|01-Jan-2001||http://y|0|1\n".encode("latin-1")
    )
    assert load_item_names(con, "ml", path, "movielens-u.item") == 2
    assert names(con, "ml") == {"1": "Toy Story (1995)", "2": "Amélie (2001)"}
    # Loading again replaces, never duplicates.
    assert load_item_names(con, "ml", path, "movielens-u.item") == 2
    assert con.execute("SELECT count(*) FROM item_names").fetchone()[0] == 2


def test_lastfm_artists_and_unknown_format(con, tmp_path):
    path = tmp_path / "artists.dat"
    path.write_text(
        "id\tname\turl\tpictureURL\n1\tMALICE MIZER\thttp://a\thttp://b\n"
        '2\t"Weird" Al\thttp://c\thttp://d\n'
    )
    assert load_item_names(con, "fm", path, "lastfm-artists") == 2
    assert names(con, "fm")["2"] == '"Weird" Al'
    with pytest.raises(ValueError, match="unknown item_names_format 'imdb'"):
        load_item_names(con, "fm", path, "imdb")


def test_sources_toml_item_names_are_relative_to_the_data_home(tmp_path):
    sources = tmp_path / "sources.toml"
    sources.write_text(
        '[datasets.ml]\nformat = "movielens-100k"\nlanding = "in"\n'
        'item_names = "in/u.item"\nitem_names_format = "movielens-u.item"\n'
    )
    (spec,) = load_datasets(sources)
    assert spec.item_names == tmp_path / "in" / "u.item"
    assert spec.item_names_format == "movielens-u.item"


@pytest.mark.integration
@pytest.mark.parametrize(
    ("relative", "fmt", "count", "first"),
    [
        ("ml-100k/u.item", "movielens-u.item", 1_682, "Toy Story (1995)"),
        ("ml-latest-small/movies.csv", "movielens-movies", 9_742, "Toy Story (1995)"),
        ("hetrec2011-lastfm-2k/artists.dat", "lastfm-artists", 17_632, "MALICE MIZER"),
    ],
)
def test_shared_name_files(con, relative, fmt, count, first):
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"{path} not present (../shared is optional)")
    assert load_item_names(con, "real", path, fmt) == count
    assert names(con, "real")["1"] == first
