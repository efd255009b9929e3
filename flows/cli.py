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
# Datasets Encore ingests. One table per dataset; see README "Your own data" for the keys.
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
    from tasks.warehouse.schema import warehouse

    home = EncoreHome.from_env().ensure()
    try:
        with warehouse(home.warehouse) as con:
            yield con
    except expected as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from error


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
    fail_on_warning: Annotated[
        bool,
        typer.Option(
            "--fail-on-warning",
            help="Exit 2 when the night completed with warnings (a baseline serves, a serving "
            "refit was refused), for schedulers that should page someone.",
        ),
    ] = False,
) -> None:
    """Run the nightly retrain once, here (ingest, validate, train, gate, score, report)."""
    from flows.nightly import NightlyRunFailed, nightly_retrain
    from flows.params import NightlyParams
    from tasks.report import headline

    overrides: dict = {"datasets": dataset or None, "retrain_without_new_data": retrain}
    overrides["device"] = device
    if epochs is not None:
        overrides |= {"gat_bpr": {"epochs": epochs}, "rating": {"epochs": epochs}}
    params = NightlyParams.model_validate(overrides)
    home = EncoreHome.from_env()
    try:
        night = nightly_retrain(params)
    except NightlyRunFailed as failure:
        typer.echo(f"nightly run FAILED: {failure}", err=True)
        raise typer.Exit(1) from failure
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
    typer.echo(f"run report: {night['report_path']}")
    if fail_on_warning and night.get("warnings"):
        raise typer.Exit(2)


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


@app.command()
def models(
    dataset: Annotated[str | None, typer.Option(help="Only this dataset.")] = None,
) -> None:
    """Model versions: family, slot, role, status, val metrics, and the gate's rule for each."""
    from tasks.warehouse.registry import ensure_registry

    with open_warehouse() as con:
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
                       ORDER BY p.promotion_id DESC LIMIT 1)
               FROM model_versions v WHERE ? IS NULL OR v.dataset = ?
               ORDER BY v.version DESC""",
            [dataset, dataset],
        ).fetchall()
    if not rows:
        typer.echo("no model versions yet")
    for row in rows:
        typer.echo(_version_line(*row))


def _version_line(
    version, kind, slot, data, snapshot, status, refit_of, recall, ndcg, rmse, created, rule
) -> str:
    metrics = f"val recall@10 {recall:.4f} ndcg@10 {ndcg:.4f}" if recall is not None else ""
    metrics += f" rmse {rmse:.4f}" if rmse is not None else ""
    state = f"serves v{refit_of}" if refit_of is not None else status
    why = f"  ({rule})" if rule else ""
    return (
        f"v{version:<4} {kind:12} {slot:8} {data:16} snapshot {snapshot}  {state:10}"
        f" {metrics}  {created}{why}"
    )


@app.command()
def promote(
    version: int,
    actor: Annotated[str, typer.Option(help="Who decides (logged).")] = "human",
) -> None:
    """Make VERSION the champion of its kind and dataset (a logged human override)."""
    from tasks.warehouse.registry import RegistryError
    from tasks.warehouse.registry import promote as promote_version

    with open_warehouse(RegistryError) as con:
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
) -> None:
    """Go back to the previous champion of SLOT (logged); re-score with `batch-score` after."""
    from tasks.warehouse.registry import RegistryError
    from tasks.warehouse.registry import rollback as rollback_slot

    with open_warehouse(RegistryError) as con:
        row = rollback_slot(con, slot, dataset, actor)
    typer.echo(f"v{row['version']} ({row['kind']}) is the {slot} champion of {dataset} again")


@app.command()
def recommend(
    user_id: str,
    dataset: Annotated[str, typer.Option(help="Dataset the user belongs to.")],
    k: Annotated[int, typer.Option("-k", help="How many to show.")] = 10,
) -> None:
    """A user's latest batch recommendations (from the dataset's ranking champion)."""
    from tasks.warehouse.names import NAMES_SCHEMA
    from tasks.warehouse.scoring import RECOMMENDATIONS_SCHEMA

    with open_warehouse() as con:
        con.execute(RECOMMENDATIONS_SCHEMA)
        con.execute(NAMES_SCHEMA)
        rows = con.execute(
            """SELECT r.rank, r.item_id || coalesce(' ' || chr(8212) || ' ' || n.name, ''),
                      r.score, r.source, r.model_kind, r.model_version
               FROM recommendations r
               LEFT JOIN item_names n ON n.dataset = r.dataset AND n.external_id = r.item_id
               WHERE r.dataset = ? AND r.user_id = ? AND r.rank <= ?
               ORDER BY r.rank""",
            [dataset, user_id, k],
        ).fetchall()
    if not rows:
        typer.echo(f"no recommendations for {user_id} in {dataset}; run batch scoring", err=True)
        raise typer.Exit(1)
    for rank, item, score, source, kind, version in rows:
        typer.echo(f"{rank:>3}. {item}  score {score:.4f}  ({source}, {kind} v{version})")


@app.command()
def predict(
    dataset: Annotated[str, typer.Option(help="Dataset whose champion rating model to use.")],
    pairs: Annotated[Path, typer.Option(help="CSV or Parquet with user_id, item_id columns.")],
    out: Annotated[Path, typer.Option(help="Where to write predictions (.csv or .parquet).")],
) -> None:
    """Predicted ratings for (user, item) pairs; unknown ids get the bias fallback, marked."""
    from tasks.warehouse.predict import predict_pairs
    from tasks.warehouse.registry import RegistryError

    with open_warehouse(RegistryError, ValueError) as con:
        result = predict_pairs(con, dataset, pairs, out)
    typer.echo(
        f"{result['pairs']:,} predictions ({result['fallback']:,} by fallback) from rating"
        f" model v{result['model_version']} -> {result['out']}"
    )


if __name__ == "__main__":
    app()
