"""The registry and the lists from the command line: `encore models`, `promote`, `rollback`,
`gc`, `recommend`, `predict`. Registered on the `encore` app by flows/cli.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli_common import WAIT_HELP, _usage, data_home_writer, open_warehouse
from tasks.home import EncoreHome


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
    """Remove model files and training folders no one can need (docs/operating.md)."""
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
