"""Why a landing file cannot be the delimited text its format says, in words a person can act on.

DuckDB's CSV reader, given a gzip file, a workbook or a headerless export, answers with its
sniffer's dump (candidate dialects, buffer sizes). The few cases a person actually delivers are
recognised here first, from the file's first bytes and first line, and refused with what to do.
"""

from __future__ import annotations

import re
from pathlib import Path

# (leading bytes, what the file is, what to do)
SIGNATURES = (
    (b"\x1f\x8b", "gzip-compressed data", "gunzip it before it lands"),
    (b"BZh", "bzip2-compressed data", "decompress it before it lands"),
    (b"\xfd7zXZ\x00", "xz-compressed data", "decompress it before it lands"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data", "decompress it before it lands"),
    (
        b"PK\x03\x04",
        "a ZIP archive (a .zip, or an Excel .xlsx workbook)",
        "unzip it, or save the sheet as CSV",
    ),
    (b"PAR1", "a Parquet file", 'give its dataset a Parquet format (file_type = "parquet")'),
    (b"%PDF", "a PDF document", "export the data as CSV"),
)
HEAD_BYTES = 8192
_NUMBER = re.compile(r"[-+]?\d+(\.\d*)?([eE][-+]?\d+)?")


def not_delimited_text(path: Path) -> str | None:
    """What the file is when it cannot be delimited text at all (None when it may be)."""
    with path.open("rb") as handle:
        head = handle.read(HEAD_BYTES)
    for magic, what, remedy in SIGNATURES:
        if head.startswith(magic):
            return f"{what}, not a delimited text file although named {path.name}: {remedy}"
    if b"\x00" in head and not head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return (
            "binary data (NUL bytes in its first 8 KiB), not a delimited text file: deliver it"
            " as CSV/TSV text"
        )
    return None


def looks_like_data(fields: list[str]) -> bool:
    """A first line that is a row, not a header: most of its fields are numbers."""
    numbers = sum(bool(_NUMBER.fullmatch(f.strip())) for f in fields if f.strip())
    return len(fields) > 1 and numbers * 2 >= len(fields)


def no_header_reason(header: list[str], expected: list[str], delimiter: str) -> str | None:
    """The missing-header case of a missing column, in words (None when it is something else)."""
    if any(name in header for name in expected) or not looks_like_data(header):
        return None
    sample = delimiter.join(header)[:60]
    return (
        f"no header row: line 1 is data ({sample}); add the header line"
        f" {delimiter.join(expected)!r}, or declare the format headerless"
        " (header = false with positional_columns)"
    )
