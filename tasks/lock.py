"""One nightly run per data home at a time.

Why a file lock and not (only) a Prefect concurrency limit: the thing to protect is the data home
(one DuckDB writer, one model registry), and runs reach it by several roads — the deployment on a
server, `encore nightly` in ephemeral mode, a `flow.serve` process — which do not share one
Prefect server, so a server-side limit would not see all of them. An `flock` on a file in the data
home does, and the kernel releases it when its process dies, so a crashed run never leaves a stale
lock behind. The deployment adds Prefect's own `concurrency_limit` on top
(deployments/prefect.yaml), so a second scheduled run queues visibly in the UI instead of starting.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

# The data home's writer lock: the nightly run holds it for the whole night, and every CLI
# command that writes (ingest, validate, promote, rollback) takes it too (flows/cli.py). The
# name predates the other writers.
WRITER_LOCK = "nightly.lock"


# Locks this process holds and lends (resolved paths): a flow started by a CLI command that
# already took the lock (`encore nightly`) goes on under it instead of refusing itself.
_LENT_HERE: set[Path] = set()


class LockHeld(RuntimeError):
    """Another run holds the lock; the message says who and since when."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    return f"{info.get('owner', 'a run')} (pid {info.get('pid')}, since {info.get('since')})"


@contextmanager
def exclusive_lock(
    path: Path,
    owner: str,
    wait_seconds: float = 0.0,
    reentrant: bool = False,
    lend: bool = False,
) -> Iterator[None]:
    """Hold an exclusive lock on `path` for the block; wait up to `wait_seconds` for it, then
    raise LockHeld naming the holder. `lend`: code of this process that asks `reentrant` goes
    on under this hold (a CLI command running a flow that takes the lock itself)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = path.resolve()
    if reentrant and key in _LENT_HERE:
        yield
        return
    handle = path.open("a+")
    deadline = time.monotonic() + wait_seconds
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockHeld(
                        f"{path} is held by {_holder(path)}; waited {wait_seconds:g} s"
                    ) from None
                time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        handle.seek(0)
        handle.truncate()
        since = datetime.now(UTC).isoformat(timespec="seconds")
        handle.write(json.dumps({"owner": owner, "pid": os.getpid(), "since": since}))
        handle.flush()
        if lend:
            _LENT_HERE.add(key)
        try:
            yield
        finally:
            if lend:
                _LENT_HERE.discard(key)
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()
