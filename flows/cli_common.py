"""What the `encore` commands share: the warehouse and writer lock opened with one-line refusals,
`--set NAME=VALUE` parsing, and the one-line usage error (exit 2)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

from tasks.home import EncoreHome


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


def _usage(message: str) -> None:
    typer.echo(message, err=True)
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
