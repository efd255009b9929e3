"""What the ingest raises about a file: it cannot be loaded, or its rows do not add up."""

from __future__ import annotations

from pathlib import Path


class IngestFileError(ValueError):
    """A file that cannot be loaded at all; the message names the file, line and column."""

    def __init__(
        self, path: Path | str, message: str, line: int | None = None, column: str | None = None
    ):
        where = f"{path}" + (f", line {line}" if line is not None else "")
        where += f", column '{column}'" if column else ""
        super().__init__(f"{where}: {message}")
        self.path, self.line, self.column = path, line, column


class AccountingError(RuntimeError):
    """rows read != loaded + duplicates + rejected + quarantined: a row would have been lost."""
