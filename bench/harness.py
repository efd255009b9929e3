"""What every benchmark shares: where results go, how they are written, and one child process
per measured run.

Each `make bench-…` target writes `bench/results/<stem>.json` (the figures) and
`bench/results/<stem>.md` (the table people read, published on the docs site under results/).
A measured run goes to a child process so that its peak memory and its threads are its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
# BLAS threads pinned the same way in every child: two cores, no oversubscription.
CHILD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "2"}


def save_results(stem: str, data: Any, markdown: str) -> tuple[Path, Path]:
    """bench/results/<stem>.json and .md; floats and other numbers of numpy as JSON numbers."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    figures, table = RESULTS / f"{stem}.json", RESULTS / f"{stem}.md"
    figures.write_text(json.dumps(data, indent=2, default=float))
    table.write_text(markdown.rstrip("\n") + "\n")
    return figures, table


def run_child(
    module: str,
    args: list[str],
    on_failure: dict[str, Any] | None = None,
    env: dict[str, str] = CHILD_ENV,
) -> dict[str, Any]:
    """`python -m module *args` in a child process with `env` added to this one's; its result is
    the JSON on the last line of its stdout. A failed child gives `on_failure` with the tail of
    its stderr under "error" (a row of the table that says so), or, without it, raises."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=False,
    )
    if done.returncode != 0:
        if on_failure is None:
            raise RuntimeError(f"{module} {' '.join(args)} failed:\n{done.stderr[-3000:]}")
        return {**on_failure, "error": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def table_row(*cells: object) -> str:
    """One row of a markdown table: `| a | b | c |`."""
    return "| " + " | ".join(str(cell) for cell in cells) + " |"
