"""A landing file's bytes, counted apart from DuckDB: sha256, size, lines, blank lines, and, where
a quoted field may span lines, the line each CSV record starts on (Python's csv module). The
ingest's accounting checks DuckDB's rows against these counts, so they must come from an
independent reader."""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from tasks.ingest.sources import (
    RemoteFile,
    SourceFormat,
)

SCAN_BLOCK_BYTES = 8 << 20


_BLANK_LINE = re.compile(rb"(?:^|(?<=\n))\r?\n")


@dataclass(frozen=True)
class FileScan:
    sha256: str  # of the bytes; for a remote file, its RemoteFile.identity
    size_bytes: int
    lines: int  # non-blank physical lines, header included
    blank_lines: tuple[int, ...]  # 1-based numbers of empty lines (DuckDB skips them)
    mtime: float | None = None  # remote files only (local ones are stat'ed when registered)
    # Only for a delimited file that holds its quote character (a quoted field may span lines):
    # the physical line each CSV record starts on, in file order, header and blank lines
    # included, the way DuckDB numbers records; and the 1-based ordinals of the blank ones.
    # None when every record is one line.
    record_lines: tuple[int, ...] | None = None
    blank_records: frozenset[int] = frozenset()
    # Why the csv module could not read the records (line, reason); the file is then refused
    # whole. Kept on the scan, not raised, so the sha256 still reaches the refusal's record.
    unparsable: tuple[int, str] | None = None

    def data_rows(self, header: bool) -> int:
        """Records less blank lines and the header: what the reader should account for."""
        if self.record_lines is None:
            return max(0, self.lines - int(header))
        return max(0, len(self.record_lines) - len(self.blank_records) - int(header))


def scan_file(path: Path | RemoteFile, fmt: SourceFormat | None = None) -> FileScan:
    """sha256, size and line counts in one streaming pass (bounded memory for any file size).

    With the file's `fmt`, a delimited file where a quoted field spans lines is also parsed
    with Python's csv module (see `_csv_records`): records, not lines, are then what DuckDB
    reads and what must be accounted.

    A listed remote file is not read: its identity stands for the sha256 (no lines: Parquet)."""
    if isinstance(path, RemoteFile):
        return remote_scan(path)
    digest = hashlib.sha256()
    size = lines = 0
    blank: list[int] = []
    carry = b""
    quote = _quote_byte(fmt)
    spans, parity = False, 0
    with path.open("rb") as handle:
        while block := handle.read(SCAN_BLOCK_BYTES):
            digest.update(block)
            size += len(block)
            block = carry + block
            cut = block.rfind(b"\n") + 1
            whole, carry = block[:cut], block[cut:]
            if quote is not None and not spans and quote in whole:
                spans, parity = _quote_open_at_a_newline(whole, quote, parity)
            if b"\n\n" in whole or b"\n\r\n" in whole or whole.startswith((b"\n", b"\r\n")):
                for match in _BLANK_LINE.finditer(whole):
                    blank.append(lines + whole.count(b"\n", 0, match.start()) + 1)
            lines += whole.count(b"\n")
    if carry.strip(b"\r"):
        lines += 1  # a last line without a trailing newline still is a line
    scan = FileScan(digest.hexdigest(), size, lines - len(blank), tuple(blank))
    if spans:
        try:
            starts, blank_records = _csv_records(path, fmt)
        except _Unparsable as err:
            return replace(scan, unparsable=(err.line, err.reason))
        scan = replace(scan, record_lines=starts, blank_records=blank_records)
    return scan


class _Unparsable(Exception):
    def __init__(self, line: int, reason: str):
        super().__init__(f"line {line}: {reason}")
        self.line, self.reason = line, reason


def _quote_open_at_a_newline(lines: bytes, quote: bytes, parity: int) -> tuple[bool, int]:
    """Whether some newline of `lines` (whole lines) falls inside a quoted field, given the
    parity of the quote characters before them; and the parity after them.

    A doubled quote inside a field adds two, so a newline sits inside quotes exactly when an odd
    number of quote characters precede it. Vectorised: ids are quoted in many exports, and this
    runs over every byte of them."""
    data = np.frombuffer(lines, np.uint8)
    quotes = np.flatnonzero(data == quote[0])
    newlines = np.flatnonzero(data == ord("\n"))
    inside = (np.searchsorted(quotes, newlines) + parity) % 2 == 1
    return bool(inside.any()), (parity + len(quotes)) % 2


def _quote_byte(fmt: SourceFormat | None) -> bytes | None:
    """The quote character, when Python's csv module can parse the format (one-character
    delimiter, a quote character, a one-byte newline); None otherwise, and then a quoted field
    spanning lines does not add up and its file is refused whole."""
    if fmt is None or fmt.file_type == "parquet" or len(fmt.delimiter) != 1 or not fmt.quote:
        return None
    if fmt.encoding.lower().replace("-", "").startswith("utf16"):
        return None  # its newlines are two bytes: `_csv_records` splits lines on b"\n"
    quote = fmt.quote.encode(fmt.encoding)
    return quote if len(quote) == 1 else None


def _csv_records(path: Path, fmt: SourceFormat) -> tuple[tuple[int, ...], frozenset[int]]:
    """The physical line each record starts on, and the ordinals of blank records.

    Python's csv module, not DuckDB: the count of records is then an independent check of what
    DuckDB read, as the line count is for files without quotes. Both skip blank lines but
    number them, so the ordinals match DuckDB's reject line numbers."""
    starts, blank = [], set()
    with path.open("rb") as handle:
        # Lines split on b"\n" only, as the byte scan and DuckDB count them (a text-mode file
        # would also split on a lone \r inside a quoted field).
        lines = (raw.decode(fmt.encoding, errors="replace") for raw in handle)
        reader = csv.reader(lines, delimiter=fmt.delimiter, quotechar=fmt.quote, strict=False)
        previous_end, ordinal = 0, 0
        try:
            for ordinal, record in enumerate(reader, start=1):
                starts.append(previous_end + 1)
                if not record:
                    blank.add(ordinal)
                previous_end = reader.line_num
        except csv.Error as err:  # a stray \r or a NUL outside quotes: not one CSV dialect
            raise _Unparsable(
                previous_end + 1,
                f"not readable as CSV with delimiter {fmt.delimiter!r} and quote {fmt.quote!r}"
                f" ({err}); fix the quoting or the line endings and deliver it again",
            ) from None
    return tuple(starts), frozenset(blank)


def remote_scan(remote: RemoteFile) -> FileScan:
    return FileScan(remote.identity, remote.size_bytes, 0, (), remote.mtime)
