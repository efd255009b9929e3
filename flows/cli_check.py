"""`encore check`: sources.toml as Encore reads it, and every problem with it, before a night.
Registered on the `encore` app by flows/cli.py, which also runs `source_problems` before
`encore ingest` and `encore nightly` start a flow."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tasks.home import EncoreHome


def source_problems(sources: Path) -> tuple[list, list[str], list[str]]:
    """(datasets, errors, warnings) of `sources`: errors stop a night before it starts (exit 2),
    warnings are printed. A sources.toml that does not parse is an error of its own."""
    from tasks.ingest.sources import SourceConfigError
    from tasks.ingest.sources_file import landing_problems, load_datasets, renamed_datasets

    try:
        specs = load_datasets(sources)
    except SourceConfigError as err:
        return [], [str(err)], []
    errors = [problem for spec in specs for problem in landing_problems(spec)]
    warnings: list[str] = []
    home = EncoreHome.from_env()
    if home.warehouse.exists():
        import duckdb

        try:
            con = duckdb.connect(str(home.warehouse), read_only=True)
        except duckdb.Error:
            return specs, errors, warnings  # a night holds it: the rename check waits
        try:
            warnings = renamed_datasets(con, specs)
        except duckdb.CatalogException:
            pass  # a warehouse from before source_files: nothing loaded to compare
        finally:
            con.close()
    return specs, errors, warnings


def _new_files(spec) -> str:
    """How many landing files an ingest would read (content already loaded is not read)."""
    import duckdb

    from tasks.ingest.snapshots import is_known_unchanged

    if spec.is_remote:
        return "remote (listed at ingest)"
    if not Path(spec.landing).exists():
        return "landing missing"
    files = spec.landing_files()
    home = EncoreHome.from_env()
    if not home.warehouse.exists():
        return f"{len(files)} file(s), all new"
    try:
        con = duckdb.connect(str(home.warehouse), read_only=True)
    except duckdb.Error:  # a night holds the warehouse: say what is there
        return f"{len(files)} file(s)"
    try:
        new = sum(not is_known_unchanged(con, spec.name, path) for path in files)
    except duckdb.CatalogException:
        new = len(files)
    finally:
        con.close()
    return f"{len(files)} file(s), {new} new or changed"


def check_command(
    sources: Annotated[Path | None, typer.Option(help="sources.toml to read.")] = None,
) -> None:
    """Print sources.toml as Encore reads it (each dataset's kind, format, columns, landing and
    how many new files an ingest would read) and every problem; exit 2 when one would stop a
    night."""
    path = sources or EncoreHome.from_env().sources_file
    specs, errors, warnings = source_problems(path)
    typer.echo(f"{path}: {len(specs)} dataset(s)")
    for spec in specs:
        fmt = spec.format
        columns = ", ".join(f"{k}={v}" for k, v in fmt.columns.items())
        typer.echo(
            f"  {spec.name}: {fmt.kind}, {fmt.file_type}"
            + (f" (delimiter {fmt.delimiter!r})" if fmt.file_type == "delimited" else "")
            + f", columns {columns}"
            + (f", timestamps {fmt.timestamp_unit}" if fmt.timestamp_unit else "")
        )
        typer.echo(f"    landing {spec.landing} (pattern {spec.pattern}): {_new_files(spec)}")
    for warning in warnings:
        typer.echo(f"WARNING: {warning}", err=True)
    for error in errors:
        typer.echo(f"ERROR: {error}", err=True)
    if errors:
        raise typer.Exit(2)
    typer.echo("no problems" if not warnings else f"{len(warnings)} warning(s), no errors")
