"""`morlaif score`: bulk-score a JSONL file of (prompt, response) records through the HTTP API.

Each output line is the input record plus `scores` (per principle), `reward` (when a scalarizer is
given) and `versions`. Resumable: records whose `id` (or line number, without ids) is already in the
output are skipped, and every finished batch is flushed, so an interrupted run loses at most one batch.

A record that cannot be scored (a line that is not UTF-8 or not JSON, a missing field, text that is not valid
Unicode or longer than the server's max_text_chars) does not stop the others: it is written to
``<output>.rejected.jsonl`` with its line and the reason, and `score_file` returns it, so the command can name
each one (``file:line: reason``) and exit non-zero.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from morlaif.client import MorlaifClient
from morlaif.jsonl import JsonlError, iter_lines
from morlaif.protocol import ScalarizerSpec, ScoreItem, ScoreRequest, error_field, first_error

__all__ = ["InputError", "Rejected", "read_records", "rejected_path", "score_file"]


class InputError(JsonlError):
    """A bad input line; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class _Record:
    key: str
    line: int
    data: dict[str, Any]
    item: ScoreItem


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that cannot be scored: where it is and why (`message` starts with ``file:line:``)."""

    line: int
    message: str
    raw: str


def rejected_path(out: Path) -> Path:
    """Where `score_file` writes the records it cannot score: ``<output>.rejected.jsonl``."""
    return out.with_name(out.name + ".rejected.jsonl")


def _record(path: Path, n: int, data: dict[str, Any]) -> _Record:
    from morlaif.store.importers import split_hh

    fields = {k: data[k] for k in ("prompt", "response", "messages") if k in data}
    if not fields and isinstance(data.get("chosen"), str) and isinstance(data.get("rejected"), str):
        parts = split_hh(data["chosen"], data["rejected"])  # an HH transcript: its chosen response
        if parts is None:
            raise InputError(f"{path}:{n}: chosen and rejected share no prompt ending in 'Assistant:'")
        fields = {"prompt": parts[0], "response": parts[1].strip()}
        data = {**data, **fields}
    try:
        item = ScoreItem.model_validate(fields)
    except ValidationError as e:
        first = first_error(e)
        loc = error_field(first)
        msg = str(first["msg"]).removeprefix("Value error, ")
        raise InputError(f"{path}:{n}: {loc + ': ' if loc else ''}{msg}") from e
    key = str(data["id"]) if "id" in data else f"line:{n}"
    return _Record(key=key, line=n, data=data, item=item)


def read_records(path: Path) -> Iterator[_Record | Rejected]:
    """Records with `prompt` and `response` (or `messages`, or an HH transcript pair: its chosen response), and
    a `Rejected` (naming file:line and the reason) for each line that is not one. An unreadable file raises."""
    for n, raw, data in iter_lines(path):
        if isinstance(data, JsonlError):
            yield Rejected(n, str(data), raw)
            continue
        try:
            yield _record(path, n, data)
        except InputError as e:
            yield Rejected(n, str(e), raw)


def _done_keys(out: Path) -> set[str]:
    """Keys already in the output; a torn last line (killed mid-write) is cut off so it is redone."""
    if not out.exists():
        return set()
    keys: set[str] = set()
    good_bytes = 0
    with out.open("rb") as f:
        for raw in f:
            try:
                rec = json.loads(raw)
                keys.add(str(rec["_key"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                break
            good_bytes += len(raw)
    if good_bytes < out.stat().st_size:
        with out.open("r+b") as f:
            f.truncate(good_bytes)
    return keys


def score_file(
    client: MorlaifClient,
    src: Path,
    out: Path,
    *,
    principles: list[str] | None = None,
    scalarizer: str | None = None,
    weights: Mapping[str, float] | None = None,
    params: Mapping[str, Any] | None = None,
    normalize: bool = True,
    batch_size: int = 64,
    progress: bool = True,
) -> tuple[int, int, list[Rejected]]:
    """Score `src` into `out`; returns (records scored now, records skipped as already done, records rejected).

    The rejected ones are written to `rejected_path(out)` (replaced on every run), one JSON object each:
    ``{"line", "error", "raw"}``; every other record is scored.
    """
    from tqdm import tqdm

    records: list[_Record] = []
    rejected: list[Rejected] = []
    for r in read_records(src):  # read (and check) the whole file before the first request
        (rejected if isinstance(r, Rejected) else records).append(r)  # type: ignore[arg-type]
    limit = client.limits().max_text_chars  # what the server would refuse, the whole batch with it
    for r in list(records):
        for name, text in zip(("prompt", "response"), r.item.as_pair(), strict=True):
            if len(text) > limit:
                rejected.append(
                    Rejected(r.line, f"{src}:{r.line}: {name} has {len(text)} characters; the server takes {limit}", "")
                )
                records.remove(r)
                break
    rejected.sort(key=lambda r: r.line)
    bad_file = rejected_path(out)
    if rejected:
        with bad_file.open("w", encoding="utf-8") as f:
            for r in rejected:
                f.write(json.dumps({"line": r.line, "error": r.message, "raw": r.raw}) + "\n")
    elif bad_file.exists():
        bad_file.unlink()
    done = _done_keys(out)
    todo = [r for r in records if r.key not in done]
    spec = None
    if scalarizer is not None or weights is not None:
        spec = ScalarizerSpec(
            name=scalarizer or "linear", weights=dict(weights) if weights else None, params=dict(params or {})
        )
    scored = 0
    if not todo:
        return 0, len(records), rejected
    with (
        out.open("a", encoding="utf-8") as f,
        tqdm(
            total=len(records),
            initial=len(records) - len(todo),
            unit="rec",
            disable=not progress,
            desc="scoring",
        ) as bar,
    ):
        for i in range(0, len(todo), batch_size):
            chunk = todo[i : i + batch_size]
            res = client.score_request(
                ScoreRequest(items=[r.item for r in chunk], principles=principles, scalarizer=spec, normalize=normalize)
            )
            for rec, result in zip(chunk, res.results, strict=True):
                row = dict(rec.data)
                row.update(
                    _key=rec.key,
                    scores=result.scores,
                    raw_scores=result.raw_scores,
                    versions=res.versions,
                    truncated=result.truncated,
                )
                if result.reward is not None:
                    row["reward"] = result.reward
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            scored += len(chunk)
            bar.update(len(chunk))
    return scored, len(records) - len(todo), rejected
