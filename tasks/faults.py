"""Fault injection: end the process at a named point, as a kill -9 would, to test that every
crash heals on the next plain run (tests/test_faults.py).

    ENCORE_CRASH_AT=<point> encore nightly     # exits with CRASH_EXIT_CODE at <point>

`os._exit` skips every `finally`, context manager and atexit hook, so the warehouse, the files
and the lock are left exactly as a killed process leaves them. The points, in the order a night
passes them:

- ingest (tasks/ingest/load.py): `staged`, `inserted`, `registered` inside one file's
  transaction; `between files` after a file is committed;
- validation (tasks/validate/validation.py): `validating`, inside the transaction that
  quarantines rows and records the verdict;
- training (tasks/train/tasks.py): `epoch`, after an epoch's checkpoints were written;
- nightly (flows/nightly.py): `published` (a candidate registered, not yet gated), `gated`
  (a verdict recorded, no serving refit yet), `refit` (the refit registered, no lists yet);
- registry (tasks/registry/registry.py): `retired old champion`, `crowned new champion`;
- scoring (flows/batch_score.py): `scored` (parts written, not yet loaded);
- nightly again: `report` (everything done but the run report).

Unset (the default) every point is a no-op.
"""

from __future__ import annotations

import os

CRASH_ENV = "ENCORE_CRASH_AT"
CRASH_EXIT_CODE = 86


def crash_point(point: str) -> None:
    if os.environ.get(CRASH_ENV) == point:
        os._exit(CRASH_EXIT_CODE)
