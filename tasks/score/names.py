"""Item names (MovieLens titles, Last.fm artist names) for `encore recommend`.

Name files are optional side files of a dataset (`item_names` in sources.toml); they are read
whole on every ingest run (a few MB at most) and replace the dataset's names in one statement.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from tasks.ingest.stage import sql_str
from tasks.warehouse.schema import transaction

NAMES_SCHEMA = """
CREATE TABLE IF NOT EXISTS item_names (
    dataset VARCHAR NOT NULL, external_id VARCHAR NOT NULL, name VARCHAR NOT NULL
);
"""

# format -> (read_csv options, id column, name column)
NAME_FORMATS = {
    # u.item: id|title|release date|...|19 genre flags, Latin-1, no header
    "movielens-u.item": (
        "delim='|', header=false, encoding='latin-1', quote='', names=['id', 'title']",
        "id",
        "title",
    ),
    # movies.csv: movieId,title,genres
    "movielens-movies": ("delim=',', header=true", "movieId", "title"),
    # artists.dat: id, name, url, pictureURL (tab-separated)
    "lastfm-artists": ("delim='\\t', header=true, quote=''", "id", "name"),
}


def load_item_names(con: duckdb.DuckDBPyConnection, dataset: str, path: Path, fmt: str) -> int:
    """Replace the dataset's item names from `path`; returns how many were loaded."""
    if fmt not in NAME_FORMATS:
        raise ValueError(f"{path}: unknown item_names_format {fmt!r}; use {sorted(NAME_FORMATS)}")
    options, id_column, name_column = NAME_FORMATS[fmt]
    con.execute(NAMES_SCHEMA)
    source = (
        f"read_csv({sql_str(str(path))}, {options}, all_varchar=true, null_padding=true,"
        " ignore_errors=true)"
    )
    with transaction(con):
        con.execute("DELETE FROM item_names WHERE dataset = ?", [dataset])
        count = con.execute(
            f"""INSERT INTO item_names SELECT ?, "{id_column}", "{name_column}" FROM {source}
                WHERE "{id_column}" IS NOT NULL AND "{name_column}" IS NOT NULL""",
            [dataset],
        ).fetchone()[0]
    return count
