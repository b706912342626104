"""veRL's custom reward function, scoring through a morlaif PM server; and its prompt parquet.

veRL's reward managers call ``compute_score(data_source=..., solution_str=..., ground_truth=...,
extra_info=..., **reward_kwargs)`` once per sample (``verl/workers/reward_manager/naive.py``: synchronously;
``verl/experimental/reward_loop/reward_manager/naive.py``, veRL 0.9's default: awaited when it is a coroutine
function, else in a thread). `solution_str` is the response alone: the prompt reaches the reward through
``extra_info["prompt"]`` (chat messages, or a string), which `prepare_dataset` writes into every row. A dict
return goes to veRL's ``reward_extra_info``: ``{"score": reward, "<principle>": normalised score, ...}``.

Configuration (veRL 0.7+; before, the same keys under a top-level ``custom_reward_function``)::

    reward:
      custom_reward_function:
        path: examples/verl_reward.py        # or the installed module's file
        name: compute_score                  # compute_score_async under the async reward loop
        reward_kwargs:
          url: http://pm:8000                  # default: $MORLAIF_URL, else http://127.0.0.1:8000
          weights_file: adapters/weights.json  # default: $MORLAIF_SCALARIZER_FILE, else the server's default
                                               # scalarizer (the one /get_reward uses)

The key comes from ``MORLAIF_API_KEY`` in the environment of veRL's reward workers, never from the config.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from morlaif import envvars
from morlaif.client import AsyncMorlaifClient, MorlaifClient, _check_finite, trl_item
from morlaif.conversation import hh_messages
from morlaif.errors import InvalidInputError
from morlaif.protocol import ScalarizerSpec, ScoreRequest, ScoreResponse

__all__ = ["aclose", "close", "compute_score", "compute_score_async", "prepare_dataset", "prompt_messages"]

_lock = threading.Lock()
_clients: dict[tuple[str, str | None], MorlaifClient] = {}
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str | None], AsyncMorlaifClient]]
_async_clients = weakref.WeakKeyDictionary()
_specs: dict[str, ScalarizerSpec] = {}


def _config(url: str | None, weights_file: str | None) -> tuple[str, str | None, ScalarizerSpec | None]:
    """(url, key, scalarizer); None for the server's default scalarizer."""
    url = url or os.environ.get(envvars.URL) or "http://127.0.0.1:8000"
    weights_file = weights_file or os.environ.get(envvars.SCALARIZER_FILE) or None
    key = os.environ.get(envvars.API_KEY) or None
    if weights_file is None:
        return url, key, None
    with _lock:
        spec = _specs.get(weights_file)
        if spec is None:
            spec = _specs[weights_file] = ScalarizerSpec.from_file(weights_file)
    return url, key, spec


def prompt_messages(extra_info: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The prompt of a veRL sample as chat messages, from ``extra_info["prompt"]`` (messages, an HH transcript
    or plain text). Raises `InvalidInputError` naming ``extra_info.prompt`` when there is none."""
    prompt: Any = (extra_info or {}).get("prompt")
    if hasattr(prompt, "tolist"):  # a numpy array, as veRL's batches hold object columns
        prompt = prompt.tolist()
    if isinstance(prompt, str):
        return hh_messages(prompt) or [{"role": "user", "content": prompt}]
    if isinstance(prompt, Sequence) and prompt and all(isinstance(m, Mapping) for m in prompt):
        return [dict(m) for m in prompt]
    raise InvalidInputError(
        "veRL passes only the response to a reward function: put the prompt (chat messages or text) in each row's "
        "extra_info (morlaif.integrations.verl.prepare_dataset does)",
        field="extra_info.prompt",
    )


def _request(solution_str: str, extra_info: Mapping[str, Any] | None, spec: ScalarizerSpec) -> ScoreRequest:
    item = trl_item(prompt_messages(extra_info), [{"role": "assistant", "content": solution_str}])
    return ScoreRequest(items=[item], scalarizer=spec)


def _result(res: ScoreResponse) -> dict[str, float]:
    r = _check_finite(res).results[0]
    assert r.reward is not None
    return {"score": float(r.reward), **{k: float(v) for k, v in r.scores.items()}}


def compute_score(
    data_source: str | None = None,
    solution_str: str = "",
    ground_truth: Any = None,
    extra_info: Mapping[str, Any] | None = None,
    *,
    url: str | None = None,
    weights_file: str | None = None,
    **kwargs: Any,
) -> dict[str, float]:
    """veRL's reward for one sample: ``{"score": the scalarized reward, "<principle>": its normalised score}``.

    `solution_str` is the response; the prompt comes from ``extra_info["prompt"]``. `data_source` and
    `ground_truth` are not used (a preference model needs no reference answer). Blocking; raises the client's
    typed errors after its retries, never returns a missing or non-finite reward.
    """
    url, key, spec = _config(url, weights_file)
    with _lock:
        client = _clients.get((url, key))
        if client is None:
            client = _clients[(url, key)] = MorlaifClient(url, api_key=key, timeout=180.0)
    spec = spec or client.default_scalarizer()
    return _result(client.score_request(_request(solution_str, extra_info, spec)))


async def compute_score_async(
    data_source: str | None = None,
    solution_str: str = "",
    ground_truth: Any = None,
    extra_info: Mapping[str, Any] | None = None,
    *,
    url: str | None = None,
    weights_file: str | None = None,
    **kwargs: Any,
) -> dict[str, float]:
    """`compute_score` as a coroutine, for veRL's async reward loop (one pooled client per event loop)."""
    url, key, spec = _config(url, weights_file)
    per_loop = _async_clients.setdefault(asyncio.get_running_loop(), {})
    client = per_loop.get((url, key))
    if client is None:
        client = per_loop[(url, key)] = AsyncMorlaifClient(url, api_key=key, timeout=180.0)
    spec = spec or await client.default_scalarizer()
    return _result(await client.score_request(_request(solution_str, extra_info, spec)))


def close() -> None:
    """Close the pooled connections `compute_score` opened (all of this process's)."""
    with _lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        client.close()


async def aclose() -> None:
    """Close the pooled connections `compute_score_async` opened on the running event loop."""
    for client in _async_clients.pop(asyncio.get_running_loop(), {}).values():
        await client.aclose()


def _prompt_of(obj: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    from morlaif.jsonl import JsonlError
    from morlaif.store.importers import split_hh

    if isinstance(obj.get("messages"), list):
        msgs: list[dict[str, Any]] | None = [dict(m) for m in obj["messages"]]
        if msgs and msgs[-1].get("role") == "assistant":
            msgs = msgs[:-1]  # a scored conversation: its prompt
        if not msgs:
            raise JsonlError(f"{where}: 'messages' holds no prompt")
        return msgs
    if isinstance(obj.get("prompt"), str):
        return hh_messages(obj["prompt"]) or [{"role": "user", "content": obj["prompt"]}]
    if isinstance(obj.get("chosen"), str) and isinstance(obj.get("rejected"), str):
        parts = split_hh(obj["chosen"], obj["rejected"])
        if parts is None:
            raise JsonlError(f"{where}: chosen and rejected share no prompt ending in 'Assistant:'")
        msgs = hh_messages(parts[0])
        if msgs is None:
            raise JsonlError(f"{where}: the shared prompt is not an HH transcript")
        return msgs
    raise JsonlError(f"{where}: expected 'prompt', chat 'messages' or HH-RLHF 'chosen'/'rejected'")


def prepare_dataset(
    sources: Iterable[str | Path], out: str | Path, *, data_source: str = "morlaif", limit: int | None = None
) -> int:
    """Write veRL's prompt parquet from prompt files; returns the number of rows (distinct prompts).

    `sources`: JSONL (or .jsonl.gz) of ``{"prompt"}`` (HH transcripts become chat turns), ``{"messages"}`` or
    HH-RLHF ``{"chosen", "rejected"}``. Each row is ``{"data_source", "prompt": messages, "ability":
    "alignment", "reward_model": {"style": "model", "ground_truth": ""}, "extra_info": {"index", "prompt":
    messages}}``. Raises `morlaif.jsonl.JsonlError` naming the file and line of a bad record.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from morlaif.jsonl import iter_objects

    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for src in sources:
        path = Path(src)
        for n, obj in iter_objects(path):
            msgs = _prompt_of(obj, f"{path}:{n}")
            key = json.dumps(msgs, sort_keys=True, ensure_ascii=False)
            if key in seen:
                continue
            seen.add(key)
            # role and content strings only: parquet keeps one schema for every row
            prompt = [{"role": str(m.get("role")), "content": str(m.get("content") or "")} for m in msgs]
            rows.append(
                {
                    "data_source": data_source,
                    "prompt": prompt,
                    "ability": "alignment",
                    "reward_model": {"style": "model", "ground_truth": ""},
                    "extra_info": {"index": len(rows), "prompt": prompt},
                }
            )
            if limit is not None and len(rows) >= limit:
                break
        if limit is not None and len(rows) >= limit:
            break
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out)
    return len(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m morlaif.integrations.verl OUT.parquet PROMPTS...``: `prepare_dataset` from the command line."""
    import argparse

    from morlaif.jsonl import JsonlError

    ap = argparse.ArgumentParser(
        prog="python -m morlaif.integrations.verl",
        description="Write veRL's prompt parquet (prompt messages, and the prompt again in extra_info for "
        "morlaif's compute_score) from prompt JSONL, chat messages or HH-RLHF transcripts.",
    )
    ap.add_argument("out", help="the parquet file to write (e.g. data/train.parquet)")
    ap.add_argument("sources", nargs="+", help="prompt files: .jsonl or .jsonl.gz")
    ap.add_argument("--data-source", default="morlaif", help="the rows' data_source (default: morlaif)")
    ap.add_argument("--limit", type=int, default=None, help="at most this many prompts")
    args = ap.parse_args(argv)
    try:
        n = prepare_dataset(args.sources, args.out, data_source=args.data_source, limit=args.limit)
    except (JsonlError, OSError) as e:
        print(f"error: {e}", flush=True)
        return 2
    print(f"wrote {n} prompts to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
