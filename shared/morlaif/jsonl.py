"""Reading JSONL input files: one JSON object a line, errors naming the file and the line."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from morlaif.errors import MorlaifError

__all__ = ["JsonlError", "iter_objects", "open_text"]


class JsonlError(MorlaifError):
    """A bad input line; the message starts with `file:line:`."""


def open_text(path: Path) -> IO[str]:
    """A .jsonl (or .jsonl.gz) file opened for reading text."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def iter_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a .jsonl (or .jsonl.gz) file."""
    with open_text(path) as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise JsonlError(f"{path}:{n}: invalid JSON: {e.msg}") from e
            if not isinstance(obj, dict):
                raise JsonlError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
            yield n, obj
