"""The `encore` command line.

Prefect, DuckDB and Great Expectations are imported inside the commands: the data home has to be
configured (PREFECT_HOME and caches pointed inside it) before Prefect is imported, and `--help`
stays instant.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from tasks.home import EncoreHome, configure_environment

app = typer.Typer(help="Encore: nightly retraining of recommenders.", no_args_is_help=True)

SAMPLE_SOURCES = """\
# Datasets Encore ingests. One table per dataset; see README "Sources" for the keys.
[datasets.sample-listens]
format = "encore-listens"
landing = "landing/sample-listens"

[datasets.sample-ratings]
format = "encore-ratings"
landing = "landing/sample-ratings"
"""


@contextmanager
def open_warehouse(*expected: type[Exception]) -> Iterator:
    """The data home's warehouse. An `expected` error (a refused promotion, a bad pairs file)
    ends the command with its message and exit code 1 instead of a traceback."""
    from tasks.warehouse.schema import WarehouseBusy, warehouse

    home = EncoreHome.from_env().ensure()
    try:
        with warehouse(home.warehouse) as con:
            yield con
    except (WarehouseBusy, *expected) as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from error


WAIT_HELP = "Seconds to wait for another command or night that holds the data home (default 0)."


@contextmanager
def data_home_writer(command: str, wait: float) -> Iterator[None]:
    """The data home's writer lock, the one the nightly run holds: two commands that write
    never both proceed; the one refused says who holds it, in one line."""
    from tasks.lock import WRITER_LOCK, LockHeld, exclusive_lock

    home = EncoreHome.from_env().ensure()
    try:
        with exclusive_lock(home.root / WRITER_LOCK, f"encore {command}", wait, lend=True):
            yield
    except LockHeld as held:
        typer.echo(
            f"encore {command}: the data home is busy: {held}. Run it again when that is"
            " done, or pass --wait SECONDS.",
            err=True,
        )
        raise typer.Exit(1) from None


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
            "gate.min_gain=0.05 (README, Parameters).",
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
            f" ({cleaned['bytes'] / 1e6:,.1f} MB; README, Operating it)"
        )
    typer.echo(f"run report: {night['report_path']}")
    if fail_on_warning and night.get("warnings"):
        raise typer.Exit(2)


def _dotted(setting: str) -> tuple[list[str], object]:
    """'gat_bpr.lr=0.01' -> (['gat_bpr', 'lr'], 0.01); the value is read as JSON when it is
    JSON (numbers, true/false, lists), as text otherwise."""
    import json

    key, sep, text = setting.partition("=")
    if not sep or not key:
        _usage(f"--set {setting}: expected NAME=VALUE, e.g. --set gat_bpr.lr=0.01")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    return key.strip().split("."), value


def _merge(target: dict, path: list[str], value: object) -> None:
    for part in path[:-1]:
        target = target.setdefault(part, {})
    target[path[-1]] = value


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
def tune(
    dataset: Annotated[
        list[str] | None,
        typer.Option(help="Dataset to tune or show (repeatable; default: all with data)."),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(help="gat-bpr or rating (repeatable; default: the nightly's models)."),
    ] = None,
    trials: Annotated[
        int, typer.Option(help="Finished trials each study should hold (resumes add the rest).")
    ] = 20,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds after which no new trial starts.")
    ] = None,
    epochs: Annotated[int, typer.Option(help="Epoch budget of one trial.")] = 30,
    show: Annotated[
        bool, typer.Option("--show", help="Print the stored parameters instead of tuning.")
    ] = False,
    pin: Annotated[
        bool, typer.Option("--pin", help="Keep the stored parameters when later studies run.")
    ] = False,
    unpin: Annotated[
        bool, typer.Option("--unpin", help="Let the next study's best replace them again.")
    ] = False,
    clear: Annotated[
        bool, typer.Option("--clear", help="Forget them: the nightly goes back to defaults.")
    ] = False,
) -> None:
    """Search model parameters on val with Optuna (the `tune` flow); the next nightly uses the
    best. --show, --pin, --unpin and --clear manage what is stored."""
    from tasks.tune import tuned_summary

    home = EncoreHome.from_env().ensure()
    if sum([show, pin, unpin, clear]) > 1:
        _usage("choose one of --show, --pin, --unpin, --clear")
    if pin or unpin or clear:
        _manage_tuned(home.root, dataset, model, pin=pin, clear=clear)
        return
    if show:
        for record in tuned_summary(home.root):
            if not dataset or record["dataset"] in dataset:
                typer.echo(_tuned_line(record))
        return
    _run_tuning(dataset, model, trials, timeout, epochs)


def _usage(message: str) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(2)


def _manage_tuned(root: Path, datasets, models, pin: bool, clear: bool) -> None:
    from tasks.tune import clear_tuned, set_pinned, tuned_summary

    if not datasets:
        _usage("name the dataset: --dataset D (encore tune --show lists what is stored)")
    stored = [r for r in tuned_summary(root) if r["dataset"] in datasets]
    stored = [r for r in stored if not models or r["model"] in models]
    if not stored:
        typer.echo(f"no tuned parameters stored for {', '.join(datasets)}", err=True)
        raise typer.Exit(1)
    for record in stored:
        where = f"{record['model']} on {record['dataset']}"
        if clear:
            clear_tuned(root, record["dataset"], record["model"])
            typer.echo(f"{where}: tuned parameters cleared; the nightly uses its defaults")
        else:
            set_pinned(root, record["dataset"], record["model"], pin)
            state = "pinned" if pin else "unpinned"
            typer.echo(f"{where}: {state} (trial {record['trial']} of {record['study']})")


def _tuned_line(record: dict) -> str:
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in record["params"].items())  # fmt: skip
    pinned = " [pinned]" if record.get("pinned") else ""
    return (
        f"{record['dataset']} {record['model']}: val {record['metric']} {record['value']:.4f}"
        f" (trial {record['trial']} of {record['trials']}, study {record['study']}){pinned}"
        f"\n  {params}"
    )


def _run_tuning(datasets, models, trials: int, timeout: float | None, epochs: int) -> None:
    from pydantic import ValidationError

    from flows.params import TuneParams
    from flows.tune import tune as tune_flow

    try:
        params = TuneParams.model_validate(
            {
                "datasets": datasets or None,
                "models": models or None,
                "trials": trials,
                "timeout_minutes": timeout / 60 if timeout else None,
                "max_epochs": epochs,
            }
        )
    except ValidationError as error:
        _usage(f"encore tune: {error.errors()[0]['loc'][-1]}: {error.errors()[0]['msg']}")
    from tasks.tune import tunable_datasets

    home = EncoreHome.from_env()
    try:  # checked before the flow starts, so a wrong name is one line, not a failed run
        planned = tunable_datasets(str(home.warehouse), params.datasets, params.models)
    except ValueError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from error
    if not planned:
        typer.echo(
            "nothing to tune yet: no dataset has a passed snapshot (run encore nightly)", err=True
        )
        raise typer.Exit(1)
    result = tune_flow(params)
    if "skipped" in result:
        typer.echo(result["skipped"])
        return
    for study in result["studies"]:
        best = study["best"]
        line = f"{study['study']}: {study['ran_now']} trial(s) run now, {study['trials']} in all"
        if best:
            line += f"; best trial {best['trial']}: val {best['metric']} {best['value']:.4f}"
            line += " (stored for the nightly)" if study["stored"] else " (pinned kept)"
        typer.echo(line)


@app.command()
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
    from tasks.validate.review import ReviewError, accept_snapshot, revalidate_snapshot
    from tasks.validate.validation import report_summary, validate_snapshot

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

    from tasks.validate.validation import ValidationThresholds

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


@app.command()
def status() -> None:
    """What the warehouse holds: datasets, snapshots and their row accounting."""
    from tasks.warehouse.status import status_text

    home = EncoreHome.from_env().ensure()
    with open_warehouse() as con:
        typer.echo(status_text(con, home))


@app.command()
def models(
    dataset: Annotated[str | None, typer.Option(help="Only this dataset.")] = None,
) -> None:
    """Model versions: family, slot, role, status, val metrics, and the gate's rule for each."""
    from tasks.registry.registry import ensure_registry
    from tasks.warehouse.status import unknown_dataset

    with open_warehouse() as con:
        if dataset is not None and (unknown := unknown_dataset(con, dataset)):
            _usage(unknown)
        ensure_registry(con)
        rows = con.execute(
            """SELECT v.version, v.kind, v.slot, v.dataset, v.snapshot_id, v.status, v.refit_of,
                      json_extract(v.metrics_json, '$.val."recall@10"')::DOUBLE,
                      json_extract(v.metrics_json, '$.val."ndcg@10"')::DOUBLE,
                      json_extract(v.metrics_json, '$.val.rmse')::DOUBLE,
                      strftime(v.created_at, '%Y-%m-%d %H:%M'),
                      (SELECT CASE WHEN p.promoted THEN 'served' ELSE 'not served' END
                              || ': ' || p.rule
                       FROM promotions p WHERE p.challenger = v.version AND p.rule IS NOT NULL
                       ORDER BY p.promotion_id DESC LIMIT 1),
                      v.pruned_at IS NOT NULL
               FROM model_versions v WHERE ? IS NULL OR v.dataset = ?
               ORDER BY v.version DESC""",
            [dataset, dataset],
        ).fetchall()
    if not rows:
        typer.echo("no model versions yet")
    for row in rows:
        typer.echo(_version_line(*row))


def _version_line(
    version, kind, slot, data, snapshot, status, refit_of, recall, ndcg, rmse, created, rule, pruned
) -> str:
    metrics = f"val recall@10 {recall:.4f} ndcg@10 {ndcg:.4f}" if recall is not None else ""
    metrics += f" rmse {rmse:.4f}" if rmse is not None else ""
    state = f"serves v{refit_of}" if refit_of is not None else status
    why = f"  ({rule})" if rule else ""
    why += "  [files removed by gc]" if pruned else ""
    return (
        f"v{version:<4} {kind:12} {slot:8} {data:16} snapshot {snapshot}  {state:10}"
        f" {metrics}  {created}{why}"
    )


@app.command()
def promote(
    version: int,
    actor: Annotated[str, typer.Option(help="Who decides (logged).")] = "human",
    wait: Annotated[float, typer.Option(help=WAIT_HELP)] = 0.0,
) -> None:
    """Make VERSION the champion of its kind and dataset (a logged human override)."""
    from tasks.registry.registry import RegistryError
    from tasks.registry.registry import promote as promote_version

    with data_home_writer("promote", wait), open_warehouse(RegistryError) as con:
        row = promote_version(con, version, actor)
    typer.echo(
        f"v{row['version']} ({row['kind']}) is now the {row['slot']} champion of {row['dataset']}"
    )


@app.command()
def rollback(
    dataset: Annotated[str, typer.Option(help="The dataset whose champion to roll back.")],
    slot: Annotated[
        str, typer.Option(help="ranking (the lists) or rating (predicted stars).")
    ] = "ranking",
    actor: Annotated[str, typer.Option(help="Who decides (logged).")] = "human",
    wait: Annotated[float, typer.Option(help=WAIT_HELP)] = 0.0,
) -> None:
    """Go back to the previous champion of SLOT (logged); re-score with `batch-score` after."""
    from tasks.registry.registry import RegistryError
    from tasks.registry.registry import rollback as rollback_slot

    with data_home_writer("rollback", wait), open_warehouse(RegistryError) as con:
        row = rollback_slot(con, slot, dataset, actor)
    typer.echo(f"v{row['version']} ({row['kind']}) is the {slot} champion of {dataset} again")


@app.command()
def gc(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would go; remove nothing.")
    ] = False,
    previous_champions: Annotated[
        int, typer.Option(min=0, help="Earlier champions kept for rollback.")
    ] = 2,
    rejected_nights: Annotated[
        int,
        typer.Option(min=0, help="Nights with new data a model that does not serve is kept."),
    ] = 3,
    night_runs: Annotated[
        int, typer.Option(min=0, help="Latest nights whose runs/<night> folders are kept.")
    ] = 1,
    wait: Annotated[float, typer.Option(help=WAIT_HELP)] = 0.0,
) -> None:
    """Remove model files and training folders no one can need (README, "Operating it")."""
    from tasks.registry.retention import RetentionPolicy, apply_removals, plan_removals

    home = EncoreHome.from_env().ensure()
    policy = RetentionPolicy(
        previous_champions=previous_champions,
        rejected_nights=rejected_nights,
        night_runs=night_runs,
    )
    with data_home_writer("gc", wait), open_warehouse() as con:
        removals = plan_removals(con, home.root, policy)
        if not dry_run:
            apply_removals(con, removals)
    for removal in removals:
        typer.echo(f"{removal.bytes / 1e6:9,.1f} MB  {removal.path}  ({removal.reason})")
    verb = "would free" if dry_run else "freed"
    total = sum(r.bytes for r in removals)
    typer.echo(f"{len(removals)} folders; {verb} {total / 1e6:,.1f} MB")


@app.command()
def recommend(
    user_id: str,
    dataset: Annotated[str, typer.Option(help="Dataset the user belongs to.")],
    k: Annotated[int, typer.Option("-k", help="How many to show.")] = 10,
) -> None:
    """A user's latest batch recommendations (from the dataset's ranking champion); a user
    never seen gets the cold-start list (recent popularity), said on stderr."""
    from tasks.score.cold_start import cold_start_rows
    from tasks.score.names import NAMES_SCHEMA
    from tasks.score.scoring import RECOMMENDATIONS_SCHEMA
    from tasks.warehouse.status import unknown_dataset, why_no_list

    with open_warehouse() as con:
        if unknown := unknown_dataset(con, dataset):
            _usage(unknown)
        for schema in (RECOMMENDATIONS_SCHEMA, NAMES_SCHEMA):
            con.execute(schema)
        rows = con.execute(
            """SELECT r.rank, r.item_id || coalesce(' ' || chr(8212) || ' ' || n.name, ''),
                      r.score, r.source || ', ' || r.model_kind || ' v' || r.model_version
               FROM recommendations r
               LEFT JOIN item_names n ON n.dataset = r.dataset AND n.external_id = r.item_id
               WHERE r.dataset = ? AND r.user_id = ? AND r.rank <= ?
               ORDER BY r.rank""",
            [dataset, user_id, k],
        ).fetchall()
        cold = [] if rows else cold_start_rows(con, dataset, user_id, k)
        why = None if rows or cold else why_no_list(con, dataset, user_id)
    if why:
        typer.echo(why, err=True)
        raise typer.Exit(1)
    if cold:
        half_life = cold[0][-1]
        recent = "all time" if half_life is None else f"recent days, half-life {half_life:g} days"
        typer.echo(
            f"user '{user_id}' has no history in {dataset}: the cold-start list (most taken up"
            f" over {recent})",
            err=True,
        )
    for rank, item, score, source, *_ in rows or cold:
        typer.echo(f"{rank:>3}. {item}  score {score:.4f}  ({source})")


@app.command()
def predict(
    dataset: Annotated[str, typer.Option(help="Dataset whose champion rating model to use.")],
    pairs: Annotated[Path, typer.Option(help="CSV or Parquet with user_id, item_id columns.")],
    out: Annotated[Path, typer.Option(help="Where to write predictions (.csv or .parquet).")],
) -> None:
    """Predicted ratings for (user, item) pairs; unknown ids get the bias fallback, marked."""
    from tasks.registry.registry import RegistryError
    from tasks.score.predict import predict_pairs

    if not pairs.is_file():
        _usage(f"--pairs {pairs}: no such file (a CSV or Parquet of user_id, item_id)")
    with open_warehouse(RegistryError, ValueError) as con:
        result = predict_pairs(con, dataset, pairs, out)
    typer.echo(
        f"{result['pairs']:,} predictions ({result['fallback']:,} by fallback) from rating"
        f" model v{result['model_version']} -> {result['out']}"
    )


def _register_check() -> None:
    from flows.cli_check import check_command  # its own module: cli.py is long enough

    app.command("check")(check_command)


_register_check()


def _register_replay() -> None:
    from flows.cli_replay import replay_command  # its own module: cli.py is long enough

    app.command("replay")(replay_command)


_register_replay()

if __name__ == "__main__":
    app()
