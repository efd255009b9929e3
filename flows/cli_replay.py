"""`encore replay`: the replay flow (flows/replay.py) from the command line, in its own data
home. Registered on the `encore` app by flows/cli.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tasks.home import EncoreHome


def replay_command(
    dataset: Annotated[str, typer.Argument(help="The dataset of --sources to replay.")],
    sources: Annotated[
        Path, typer.Option(help="The sources.toml that names the dataset (it needs timestamps).")
    ],
    start: Annotated[
        float, typer.Option(help="Share of the events (by time) before the first night.")
    ] = 0.7,
    period: Annotated[str, typer.Option(help="day, week or month: one delivery a night.")] = "week",
    nights: Annotated[
        int | None, typer.Option(help="Stop after this many nights (default: to the end).")
    ] = None,
    results: Annotated[
        Path | None, typer.Option(help="Also write the report (JSON, markdown, plots) here.")
    ] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option("--set", help="A nightly parameter, dotted, as `encore nightly --set`."),
    ] = None,
) -> None:
    """Replay a timestamped dataset period by period in this data home (use an empty --home):
    land each period, run the nightly, judge what it served on the next period beside peers
    refit on the same schedule and the first night's model never retrained. Resumable."""
    from flows.cli_common import _dotted, _merge, _usage, data_home_writer
    from flows.params import ReplayParams
    from tasks.replay.state import ReplayState

    home = EncoreHome.from_env()
    refusal = foreign_home(home.root, dataset)
    state = ReplayState.load(ReplayState.folder(home.root, dataset))
    refusal = refusal or (state and state.settings_differ(start, period))
    if refusal:
        _usage(refusal)
    if not sources.is_file():
        _usage(f"--sources {sources}: no such file")
    overrides: dict = {}
    for setting in settings or []:
        _merge(overrides, *_dotted(setting))
    try:
        params = ReplayParams.model_validate(
            {
                "dataset": dataset,
                "sources_file": str(sources.resolve()),
                "start": start,
                "period": period,
                "nights": nights,
                "results_dir": str(results.resolve()) if results else None,
                "nightly": ReplayParams.model_fields["nightly"].default_factory().model_dump()
                | overrides,
            }
        )
    except ValueError as error:
        _usage(f"encore replay: {str(error).splitlines()[-1].strip() or error}")
    from tasks.replay.events import ReplayInputError, dataset_spec

    try:
        dataset_spec(sources, dataset)
    except (ReplayInputError, ValueError) as error:
        _usage(str(error))
    with data_home_writer("replay", 0.0):
        from flows.replay import replay

        summary = replay(params)
    for line in headline(summary):
        typer.echo(line)


def foreign_home(root: Path, dataset: str) -> str | None:
    """Why `root` must not hold a replay: it has a warehouse that is not this replay's."""
    warehouse, state = root / "warehouse.duckdb", root / "replay" / dataset / "state.json"
    if warehouse.exists() and not state.exists():
        return (
            f"{root} already holds a warehouse: a replay writes its own models and lists, so give"
            " it an empty data home (encore --home /path/to/replay-home replay ...)"
        )
    return None


def headline(summary: dict) -> list[str]:
    contenders, differences = summary["contenders"], summary["differences"]
    encore = contenders["Encore (served)"]
    lines = [
        f"{summary['dataset']}: {summary['nights']} nights, {summary['pairs']:,} (user, night)"
        f" pairs; Encore next-period Recall@10 {encore['recall@10']['mean']:.4f},"
        f" NDCG@10 {encore['ndcg@10']['mean']:.4f}"
    ]
    for name, d in differences.items():
        r, n = d["recall@10"], d["ndcg@10"]
        lines.append(
            f"  vs {name}: Recall@10 {r['ratio']:.2f}x ({r['difference']:+.4f} ± {r['se']:.4f}),"
            f" NDCG@10 {n['ratio']:.2f}x ({n['difference']:+.4f} ± {n['se']:.4f})"
        )
    share = summary["promotions"]["better_share"]
    lines.append(
        f"  champion changes: {summary['promotions']['changes']}; better on the next period:"
        f" {'n/a' if share is None else f'{share:.0%}'}; every active user had a list:"
        f" {summary['every_user_has_a_list']}"
    )
    return lines
