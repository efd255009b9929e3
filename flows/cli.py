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

from flows.cli_common import WAIT_HELP, _dotted, _merge, _usage, data_home_writer, open_warehouse
from tasks.home import EncoreHome, configure_environment

app = typer.Typer(help="Encore: nightly retraining of recommenders.", no_args_is_help=True)

SAMPLE_SOURCES = """\
# Datasets Encore ingests. One table per dataset; see docs/sources.md for the keys.
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


def _check_sources(sources: Path | None, datasets: list[str] | None) -> None:
    """A missing or broken sources.toml, a landing that does not exist, a mapped column the
    newest file lacks, or a dataset it does not name: a usage error of one line (exit 2), said
    before any flow or temporary Prefect server starts. A renamed dataset is a warning."""
    from flows.cli_check import source_problems
    from tasks.ingest.sources import dataset_choices

    path = sources or EncoreHome.from_env().sources_file
    specs, errors, warnings = source_problems(path)
    if not specs and errors:  # sources.toml itself does not parse
        _usage(errors[0])
    names = [spec.name for spec in specs]
    for name in datasets or []:
        if name not in names:
            _usage(f"{path}: no dataset named '{name}' {dataset_choices(name, names)}")
    for warning in warnings:
        typer.echo(f"WARNING: {warning}", err=True)
    chosen = [e for e in errors if not datasets or any(f"'{d}'" in e for d in datasets)]
    if chosen:
        more = "\n(`encore check` lists every problem)" if len(chosen) > 1 else ""
        _usage("\n".join(chosen) + more)


@app.command()
def ingest(
    dataset: Annotated[
        list[str] | None, typer.Option(help="Only this dataset (repeatable).")
    ] = None,
    validate: Annotated[bool, typer.Option(help="Validate the new snapshots.")] = True,
    sources: Annotated[Path | None, typer.Option(help="sources.toml to read.")] = None,
    retry: Annotated[
        list[Path] | None,
        typer.Option(help="Read this refused file again although it has not changed (repeatable)."),
    ] = None,
    wait: Annotated[float, typer.Option(help=WAIT_HELP)] = 0.0,
) -> None:
    """Load new landing files into the warehouse and validate them (the `ingest` flow)."""
    _check_sources(sources, dataset)
    with data_home_writer("ingest", wait):
        _request_retries(retry or [])
        if _nothing_new_to_ingest(sources, dataset, validate):
            return
    # Prefect is imported only now (about 2 s): with nothing new the answer came before it.
    from flows.ingest import SnapshotFailed
    from flows.ingest import ingest as ingest_flow

    try:
        with data_home_writer("ingest", wait):
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
    for name, lines in result["refused_before"].items():
        for line in lines:
            typer.echo(f"{name}: {line}")


def _nothing_new_to_ingest(
    sources: Path | None, datasets: list[str] | None, validate: bool
) -> bool:
    """When no landing file can be new and no snapshot waits for validation, say so as the flow
    would and return True: a person checking for new files then waits for a directory listing,
    not for Prefect's import and a temporary server (16.7 s on 2 cores, issue 38)."""
    from tasks.ingest.plan import quiet_datasets

    home = EncoreHome.from_env().ensure()
    path = str((sources or home.sources_file).resolve())
    idle = quiet_datasets(path, str(home.warehouse), datasets or None, validate)
    if idle is None:
        return False
    typer.echo("nothing new to ingest")
    for name, why in idle.items():
        typer.echo(f"{name}: {why}")
    return True


def _nothing_due_tonight(params, home: EncoreHome) -> bool:
    """No landing file can be new, no snapshot waits for validation and no model is due (nor a
    champion's lists missing): say what the night would say and return True, before Prefect and
    torch are imported (20 s of a temporary server and a report that changes nothing)."""
    import duckdb

    from tasks.ingest.plan import quiet_datasets
    from tasks.train.due import assess_all
    from tasks.warehouse.schema import warehouse

    if params.retrain_without_new_data:
        return False
    sources = str(Path(params.sources_file or home.sources_file).resolve())
    idle = quiet_datasets(sources, str(home.warehouse), params.datasets, True)
    if idle is None:
        return False
    try:
        with warehouse(home.warehouse) as con:
            plan = assess_all(con, list(idle), params.models, False, home.root / "exports")
    except duckdb.Error:  # a registry not created yet, or older than this code: the flow decides
        return False
    if any(item["status"] != "skipped" for item in plan):
        return False
    typer.echo("nothing new tonight: no file to ingest, no model due (--retrain trains anyway)")
    for name, why in idle.items():
        typer.echo(f"{name}: {why}")
    for item in plan:
        typer.echo(f"{item['model']} on {item['dataset']}: SKIPPED: {item['reason']}")
    return True


def _request_retries(paths: list[Path]) -> None:
    """`--retry FILE`: the next ingest reads these refused files again."""
    from tasks.ingest.snapshots import request_retry

    for path in paths:
        if not path.is_file():
            _usage(f"--retry {path}: no such file")
    with open_warehouse() as con:
        for path in paths:
            if not request_retry(con, path.resolve()):
                _usage(
                    f"--retry {path}: these bytes were never refused (or a retry is already"
                    " asked for); an ingest reads a new or changed file anyway"
                )


@app.command()
def nightly(
    epochs: Annotated[
        int | None, typer.Option(help="Upper bound on epochs for both models (default: 50).")
    ] = None,
    dataset: Annotated[
        list[str] | None, typer.Option(help="Only this dataset (repeatable).")
    ] = None,
    retrain: Annotated[
        bool, typer.Option("--retrain", help="Train even without new data since the last model.")
    ] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    precision: Annotated[
        str, typer.Option(help="fp32, or bf16: training steps under autocast (for CUDA).")
    ] = "fp32",
    fail_on_warning: Annotated[
        bool,
        typer.Option(
            "--fail-on-warning",
            help="Exit 2 when the night completed with warnings (a baseline serves, a serving "
            "refit was refused), for schedulers that should page someone.",
        ),
    ] = False,
    wait: Annotated[float, typer.Option(help=WAIT_HELP)] = 0.0,
    settings: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Any run parameter, dotted (repeatable): --set gat_bpr.lr=0.01 --set "
            "gate.min_gain=0.05 (docs/reference/parameters.md).",
        ),
    ] = None,
) -> None:
    """Run the nightly retrain once, here (ingest, validate, train, gate, score, report)."""
    overrides: dict = {"datasets": dataset or None, "retrain_without_new_data": retrain}
    overrides["device"], overrides["precision"] = device, precision
    if epochs is not None:
        overrides |= {"gat_bpr": {"epochs": epochs}, "rating": {"epochs": epochs}}
    for setting in settings or []:
        _merge(overrides, *_dotted(setting))
    params = _nightly_params(overrides)
    _check_sources(Path(params.sources_file) if params.sources_file else None, dataset)
    home = EncoreHome.from_env()
    # Locked before the flow starts: a second `encore nightly` is refused here, in one line,
    # before it imports the models or starts a temporary Prefect server on the same database.
    with data_home_writer("nightly", wait):
        if _nothing_due_tonight(params, home):
            return
        from flows.nightly import NightlyRunFailed, nightly_retrain

        try:
            night = nightly_retrain(params)
        except NightlyRunFailed as failure:
            typer.echo(f"nightly run FAILED: {failure}", err=True)
            raise typer.Exit(1) from failure
    from tasks.report.report import headline

    if "skipped" in night:
        typer.echo(night["skipped"])
        return
    for outcome in night["outcomes"]:
        typer.echo(f"{outcome['model']} on {outcome['dataset']}: {headline(outcome)}")
        if outcome.get("scoring"):
            typer.echo(f"  recommendations: {outcome['scoring']['parquet']}")
    for warning in night.get("warnings", []):
        typer.echo(f"WARNING: {warning}", err=True)
    typer.echo(f"recommendations table: {home.warehouse} (encore recommend USER --dataset D)")
    cleaned = night.get("cleaned") or {}
    if "removed" in cleaned:
        typer.echo(
            f"cleaned: {len(cleaned['removed'])} folders the retention policy no longer keeps"
            f" ({cleaned['bytes'] / 1e6:,.1f} MB; docs/operating.md)"
        )
    typer.echo(f"run report: {night['report_path']}")
    if fail_on_warning and night.get("warnings"):
        raise typer.Exit(2)


def _nightly_params(values: dict):
    """NightlyParams from the command line; a wrong name or value is one line naming it and,
    for a misspelled name, the nearest valid one."""
    from pydantic import BaseModel, ValidationError

    from flows.params import NightlyParams
    from models_src.config import unknown_keys_message

    try:
        params = NightlyParams.model_validate(values)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        if where in OPTION_OF_PARAMETER:
            _usage(f"{OPTION_OF_PARAMETER[where]}: {first['msg']} (got {first.get('input')!r})")
        if first["type"] == "extra_forbidden":
            model: type[BaseModel] = NightlyParams
            for part in first["loc"][:-1]:
                model = model.model_fields[str(part)].annotation
            hint = unknown_keys_message([str(first["loc"][-1])], set(model.model_fields))
            _usage(f"--set {where}: {hint}")
        _usage(f"--set {where}: {first['msg']} (got {first.get('input')!r})")
    if params.device == "cuda":  # checked here too, so that it is one line before any flow
        from models_src.config import resolve_device

        try:
            resolve_device(params.device)
        except RuntimeError as error:
            _usage(str(error))
    return params


# Run parameters that `encore nightly` sets from an option of its own, for error messages.
OPTION_OF_PARAMETER = {"device": "--device", "precision": "--precision", "datasets": "--dataset"}


@app.command()
def status() -> None:
    """What the warehouse holds: datasets, snapshots and their row accounting."""
    from tasks.warehouse.status import status_text

    home = EncoreHome.from_env().ensure()
    with open_warehouse() as con:
        typer.echo(status_text(con, home))


def _register_commands() -> None:
    """The commands kept in modules of their own (cli.py is the night's and the data's), in
    the order `encore --help` lists them."""
    from flows.cli_check import check_command
    from flows.cli_models import gc, models, predict, promote, recommend, rollback
    from flows.cli_replay import replay_command
    from flows.cli_tune import tune
    from flows.cli_validate import validate

    for name, command in (
        ("tune", tune),
        ("validate", validate),
        ("models", models),
        ("promote", promote),
        ("rollback", rollback),
        ("gc", gc),
        ("recommend", recommend),
        ("predict", predict),
        ("check", check_command),
        ("replay", replay_command),
    ):
        app.command(name)(command)


_register_commands()

if __name__ == "__main__":
    app()
