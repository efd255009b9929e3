"""`encore tune`: the tuning job from the command line, and the tuned settings it keeps.
Registered on the `encore` app by flows/cli.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli_common import _usage
from tasks.home import EncoreHome


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
