"""`encore validate`: pending snapshots validated, or a failed one reviewed (accepted, or
validated again under changed thresholds). Registered on the `encore` app by flows/cli.py."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli_common import WAIT_HELP, _dotted, _usage, data_home_writer, open_warehouse
from tasks.home import EncoreHome


def validate(
    snapshot: Annotated[
        int | None, typer.Option(help="Snapshot id (default: all pending).")
    ] = None,
    accept: Annotated[
        int | None,
        typer.Option(help="Accept this failed snapshot after review: its rows reach training."),
    ] = None,
    revalidate: Annotated[
        int | None,
        typer.Option(help="Validate this failed snapshot again, under --set thresholds."),
    ] = None,
    reason: Annotated[str, typer.Option(help="Why (logged with --accept / --revalidate).")] = "",
    settings: Annotated[
        list[str] | None,
        typer.Option("--set", help="A validation threshold, e.g. --set max_new_id_share=0.95."),
    ] = None,
    wait: Annotated[float, typer.Option(help=WAIT_HELP)] = 0.0,
) -> None:
    """Validate pending snapshots (those ingested with --no-validate), or review a failed one:
    --accept it (logged with who and why) or --revalidate it under changed thresholds."""
    from tasks.validate.report import report_summary
    from tasks.validate.review import ReviewError, accept_snapshot, revalidate_snapshot
    from tasks.validate.validation import validate_snapshot

    home = EncoreHome.from_env().ensure()
    thresholds = _thresholds(settings or [])
    failed = False
    with data_home_writer("validate", wait), open_warehouse() as con:
        try:
            if accept is not None:
                done = accept_snapshot(con, accept, reason, reports_dir=home.reports)
                typer.echo(
                    f"snapshot {accept} of {done['dataset']} accepted by {done['actor']}"
                    f" ({reason}): its rows reach training on the next night"
                )
                return
            if revalidate is not None:
                report = revalidate_snapshot(
                    con, revalidate, thresholds, reason, reports_dir=home.reports
                )
                typer.echo(report_summary(report))
                if report["status"] != "passed":
                    raise typer.Exit(1)
                return
        except ReviewError as error:
            _usage(str(error))
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
            report = validate_snapshot(con, snapshot_id, thresholds, reports_dir=home.reports)
            typer.echo(report_summary(report))
            failed |= report["status"] != "passed"
    if failed:
        raise typer.Exit(1)


def _thresholds(settings: list[str]):
    """ValidationThresholds with `--set NAME=VALUE` applied; a wrong one is a usage error."""
    from pydantic import ValidationError

    from tasks.validate.thresholds import ValidationThresholds

    values = {".".join(key): value for key, value in map(_dotted, settings)}
    unknown = sorted(set(values) - set(ValidationThresholds.model_fields))
    if unknown:
        names = ", ".join(sorted(ValidationThresholds.model_fields))
        _usage(f"--set {unknown[0]}: no such threshold; choose from {names}")
    try:
        return ValidationThresholds(**values)
    except ValidationError as error:
        first = error.errors()[0]
        _usage(f"--set {'.'.join(map(str, first['loc']))}: {first['msg']}")
