"""The `encore` command line.

Prefect, DuckDB and Great Expectations are imported inside the commands: the data home has to be
configured (PREFECT_HOME and caches pointed inside it) before Prefect is imported, and `--help`
stays instant.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from tasks.home import EncoreHome, configure_environment

app = typer.Typer(help="Encore: nightly retraining of recommenders.", no_args_is_help=True)

SAMPLE_SOURCES = """\
# Datasets Encore ingests. One table per dataset; see README "Your own data" for the keys.
[datasets.sample-listens]
format = "encore-listens"
landing = "landing/sample-listens"

[datasets.sample-ratings]
format = "encore-ratings"
landing = "landing/sample-ratings"
"""


@app.callback()
def main(
    home: Annotated[
        Path | None, typer.Option(help="Data home (default: $ENCORE_HOME or ./data).")
    ] = None,
) -> None:
    if home is not None:
        os.environ["ENCORE_HOME"] = str(home.resolve())
    configure_environment()


@app.command("generate-sample")
def generate_sample(
    days: Annotated[int, typer.Option(help="Days of history to write, one file per day.")] = 30,
    next_day: Annotated[
        bool, typer.Option("--next-day", help="Append the day after the newest one on disk.")
    ] = False,
) -> None:
    """Write the built-in sample (listens and ratings) into the landing folders."""
    from models_src.sample_data import default_configs, existing_days, write_sample_days

    home = EncoreHome.from_env().ensure()
    if not home.sources_file.exists():
        home.sources_file.write_text(SAMPLE_SOURCES)
        typer.echo(f"wrote {home.sources_file}")
    for kind, config in default_configs().items():
        folder = home.landing / f"sample-{kind}"
        if next_day:
            present = existing_days(folder, kind, config.start)
            first = (present[-1] + 1) if present else 0
            wanted = range(first, first + 1)
        else:
            wanted = range(days)
        written = write_sample_days(folder, kind, config, wanted)
        typer.echo(f"{kind}: {len(written)} new file(s) in {folder}")


@app.command()
def ingest(
    dataset: Annotated[
        list[str] | None, typer.Option(help="Only this dataset (repeatable).")
    ] = None,
    validate: Annotated[bool, typer.Option(help="Validate the new snapshots.")] = True,
    sources: Annotated[Path | None, typer.Option(help="sources.toml to read.")] = None,
) -> None:
    """Load new landing files into the warehouse and validate them (the `ingest` flow)."""
    from flows.ingest import SnapshotFailed
    from flows.ingest import ingest as ingest_flow

    try:
        result = ingest_flow(
            sources_file=str(sources.resolve()) if sources else None,
            datasets=dataset or None,
            run_validation=validate,
        )
    except SnapshotFailed as failure:
        typer.echo(str(failure), err=True)
        raise typer.Exit(1) from failure
    typer.echo(result["summary"] or "nothing new to ingest")
    for name, why in result["idle"].items():
        typer.echo(f"{name}: {why}")


@app.command()
def validate(
    snapshot: Annotated[
        int | None, typer.Option(help="Snapshot id (default: all pending).")
    ] = None,
) -> None:
    """Validate pending snapshots (those ingested with --no-validate)."""
    from tasks.warehouse.schema import warehouse
    from tasks.warehouse.validation import report_summary, validate_snapshot

    home = EncoreHome.from_env().ensure()
    failed = False
    with warehouse(home.warehouse) as con:
        ids = (
            [snapshot]
            if snapshot
            else [
                r[0]
                for r in con.execute(
                    "SELECT snapshot_id FROM snapshots WHERE status = 'pending' ORDER BY 1"
                ).fetchall()
            ]
        )
        if not ids:
            typer.echo("no pending snapshot")
        for snapshot_id in ids:
            report = validate_snapshot(con, snapshot_id, reports_dir=home.reports)
            typer.echo(report_summary(report))
            failed |= report["status"] != "passed"
    if failed:
        raise typer.Exit(1)


@app.command()
def status() -> None:
    """What the warehouse holds: datasets, snapshots and their row accounting."""
    from tasks.warehouse.schema import warehouse
    from tasks.warehouse.status import status_text

    home = EncoreHome.from_env().ensure()
    with warehouse(home.warehouse) as con:
        typer.echo(status_text(con, home))


if __name__ == "__main__":
    app()
