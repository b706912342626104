"""Reading JSONL input files: one JSON object a line, errors naming the file and the line."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from morlaif.errors import MorlaifError

__all__ = ["JsonlError", "iter_lines", "iter_objects", "open_text"]


class JsonlError(MorlaifError):
    """A bad input line; the message starts with `file:line:`."""


def open_text(path: Path) -> IO[str]:
    """A .jsonl (or .jsonl.gz) file opened for reading text."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def iter_lines(path: Path) -> Iterator[tuple[int, str, dict[str, Any] | JsonlError]]:
    """(line number, raw line, object) for every non-blank line; a line that is not a JSON object gives, in the
    object's place, the `JsonlError` naming it (not raised: the caller decides whether it stops the file)."""
    with open_text(path) as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            raw = line.rstrip("\n")
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield n, raw, JsonlError(f"{path}:{n}: invalid JSON: {e.msg}")
                continue
            if not isinstance(obj, dict):
                yield n, raw, JsonlError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
                continue
            yield n, raw, obj


def iter_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a .jsonl (or .jsonl.gz) file; `JsonlError` at the first
    line that is not a JSON object."""
    for n, _, obj in iter_lines(path):
        if isinstance(obj, JsonlError):
            raise obj
        yield n, obj
