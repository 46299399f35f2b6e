"""The one JSON Lines reader: every dataset, problem file and request body goes through it, so
every bad line is reported the same way, as ``<file>:<line>: <what is wrong>``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class DatasetFormatError(ValueError):
    """A line or row that cannot be read; the message names the file, the line and the field."""


def read_jsonl(source: Path | bytes, where: str = "") -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) for each non-blank line of a file or of bytes (named ``where``).

    A line that is not UTF-8, not JSON, or not a JSON object raises DatasetFormatError."""
    raw = source if isinstance(source, bytes) else Path(source).read_bytes()
    where = where or str(source)
    for lineno, line in enumerate(raw.splitlines(), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DatasetFormatError(f"{where}:{lineno}: not UTF-8 (byte {exc.start})") from None
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetFormatError(
                f"{where}:{lineno}: not JSON: {exc.msg} at column {exc.colno}"
            ) from None
        if not isinstance(row, dict):
            raise DatasetFormatError(
                f"{where}:{lineno}: expected a JSON object, got {type(row).__name__}"
            )
        yield lineno, row
