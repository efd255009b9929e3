"""The retry policy and artifact keys every task module shares.

Kept apart from the stages' task modules on purpose: a Dask worker imports the module of each
task it runs, and importing this one must not pull in Great Expectations or PyG (seconds per
worker).
"""

from __future__ import annotations

import re

import duckdb


def retry_on_io_error(task, task_run, state) -> bool:
    """Retry only what a retry can fix: file-system errors and a warehouse locked by another
    process. Bad data fails the same way every time, so it is never retried."""
    try:
        state.result()
    except (OSError, duckdb.IOException):
        return True
    except Exception:
        return False
    return False


# The retry policy of every task that touches files or the warehouse: `@task(..., **IO_RETRIES)`.
IO_RETRIES = {"retries": 2, "retry_delay_seconds": 5, "retry_condition_fn": retry_on_io_error}


def artifact_key(text: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
