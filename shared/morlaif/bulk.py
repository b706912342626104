"""`morlaif score`: bulk-score a JSONL file of (prompt, response) records through the HTTP API.

Each output line is the input record plus `scores` (per principle), `reward` (when a scalarizer is
given) and `versions`. Resumable: records whose `id` (or line number, without ids) is already in the
output are skipped, and every finished batch is flushed, so an interrupted run loses at most one batch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from morlaif.client import MorlaifClient
from morlaif.jsonl import JsonlError, iter_objects
from morlaif.protocol import ScalarizerSpec, ScoreItem, ScoreRequest

__all__ = ["InputError", "read_records", "score_file"]


class InputError(JsonlError):
    """A bad input line; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class _Record:
    key: str
    line: int
    data: dict[str, Any]
    item: ScoreItem


def read_records(path: Path) -> Iterator[_Record]:
    """Records with `prompt` and `response` (or `messages`, or an HH transcript pair: its chosen response); a
    `JsonlError` naming file:line otherwise."""
    from morlaif.store.importers import split_hh

    for n, data in iter_objects(path):
        fields = {k: data[k] for k in ("prompt", "response", "messages") if k in data}
        if not fields and isinstance(data.get("chosen"), str) and isinstance(data.get("rejected"), str):
            parts = split_hh(data["chosen"], data["rejected"])  # an HH transcript: its chosen response
            if parts is None:
                raise InputError(f"{path}:{n}: chosen and rejected share no prompt ending in 'Assistant:'")
            fields = {"prompt": parts[0], "response": parts[1].strip()}
            data = {**data, **fields}
        try:
            item = ScoreItem.model_validate(fields)
        except Exception as e:
            msg = e.errors()[0]["msg"] if hasattr(e, "errors") else str(e)
            raise InputError(f"{path}:{n}: {msg}") from e
        key = str(data["id"]) if "id" in data else f"line:{n}"
        yield _Record(key=key, line=n, data=data, item=item)


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
) -> tuple[int, int]:
    """Score `src` into `out`; returns (records scored now, records skipped as already done)."""
    from tqdm import tqdm

    records = list(read_records(src))  # validate the whole file before the first request
    done = _done_keys(out)
    todo = [r for r in records if r.key not in done]
    spec = None
    if scalarizer is not None or weights is not None:
        spec = ScalarizerSpec(
            name=scalarizer or "linear", weights=dict(weights) if weights else None, params=dict(params or {})
        )
    scored = 0
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
    return scored, len(records) - len(todo)
