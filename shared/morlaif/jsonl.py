"""Reading JSONL input files: one JSON object a line, errors naming the file and the line."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from morlaif.errors import MorlaifError

__all__ = ["JsonlError", "iter_lines", "iter_objects"]


class JsonlError(MorlaifError):
    """A bad input line; the message starts with `file:line:`."""


def iter_lines(path: Path) -> Iterator[tuple[int, str, dict[str, Any] | JsonlError]]:
    """(line number, raw line, object) for every non-blank line; a line that is not UTF-8 or not a JSON object
    gives, in the object's place, the `JsonlError` naming it (not raised: the caller decides whether it stops the
    file)."""
    with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as f:
        for n, data in enumerate(f, start=1):
            try:
                line = data.decode("utf-8")
            except UnicodeDecodeError as e:
                why = f"not UTF-8 text (byte 0x{data[e.start]:02x} at byte {e.start + 1} of the line)"
                yield n, data.decode("utf-8", "replace").rstrip("\n"), JsonlError(f"{path}:{n}: {why}")
                continue
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
