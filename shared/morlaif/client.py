"""HTTP client of the PM server: sync and async, one pooled connection set per instance.

Retries (with exponential backoff and jitter, honouring Retry-After) only on transport errors, 429 and
503; any other error status raises `APIStatusError` at once; when retries run out, `RetriesExhaustedError`.
A reward is never returned missing: every call returns one value per item or raises.

Usage::

    from morlaif.client import MorlaifClient
    with MorlaifClient("http://127.0.0.1:8000", api_key="...") as c:
        rewards = c.rewards(["What is 2+2?"], ["4."], scalarizer="soft_max_min",
                            weights={"helpfulness": 1, "factuality": 2})

Batches of any size: a request larger than the server's limits (items and bytes, from ``/v1/principles``) is
split, every part scored on the adapter versions of the first, and the results merged in order. Text that is not
valid Unicode is refused before sending (`InvalidInputError`, naming the item), and a reward or score that is
not finite never leaves the client (`APIStatusError` with ``error_type="protocol_error"``).

For TRL's GRPO/RLOO trainers: ``reward_funcs=[RemoteReward(url, weights_file="adapters/weights.json")]``
(every TRL version; `SyncRemoteReward` for trainers that only call plain functions).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from morlaif import envvars
from morlaif.errors import APIStatusError, InvalidInputError, RetriesExhaustedError
from morlaif.pinned import AsyncPinnedScorer, PinnedScorer
from morlaif.protocol import (
    AdapterAction,
    CompareRequest,
    CompareResponse,
    Limits,
    LoadAdapterRequest,
    OpenRLHFRewardResponse,
    PrinciplesResponse,
    ScalarizerSpec,
    ScalarizersResponse,
    ScoreItem,
    ScoreRequest,
    ScoreResponse,
    Usage,
    error_field,
    first_error,
    replace_invalid_text,
)

__all__ = [
    "AsyncMorlaifClient",
    "DEFAULT_LIMITS",
    "MorlaifClient",
    "RemoteReward",
    "RetryPolicy",
    "SyncRemoteReward",
    "make_trl_reward_func",
    "trl_item",
]

logger = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
_RETRY_STATUS = {429, 503}
#: what a server that does not advertise its limits (an older one) is assumed to take: its defaults
DEFAULT_LIMITS = Limits(max_items=512, max_request_bytes=4 * 1024 * 1024, max_text_chars=65536)
#: share of the server's byte limit a split request may fill (headroom for JSON escaping differences)
_BYTES_HEADROOM = 0.9
#: how often a split batch is rescored from the start when the adapters change between its parts
_MAX_RESCORES = 3


class RetryPolicy:
    """Exponential backoff with full jitter, capped; Retry-After (seconds) from the server wins."""

    def __init__(
        self,
        *,
        max_retries: int = 6,
        backoff_s: float = 0.25,
        max_backoff_s: float = 10.0,
        max_retry_after_s: float = 60.0,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_retry_after_s = max_retry_after_s

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        if retry_after is not None:
            try:
                return min(max(float(retry_after), 0.0), self.max_retry_after_s)
            except ValueError:
                pass  # an HTTP date; fall back to our own backoff
        cap = min(self.max_backoff_s, self.backoff_s * 2**attempt)
        return random.uniform(cap / 2, cap)

    def __repr__(self) -> str:
        return f"RetryPolicy(max_retries={self.max_retries}, backoff_s={self.backoff_s})"


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _raise_for(resp: httpx.Response) -> None:
    param = None
    try:
        err = resp.json()["error"]
        message, type_, code = str(err.get("message", "")), str(err.get("type", "")), str(err.get("code", ""))
        param = err.get("param") if isinstance(err.get("param"), str) else None
    except Exception:
        message, type_, code = resp.text[:500] or resp.reason_phrase, "", ""
    raise APIStatusError(message, status_code=resp.status_code, error_type=type_, code=code, param=param)


def _invalid_input(e: ValidationError, where: str | None = None) -> InvalidInputError:
    """A pydantic error (on the item at `where`, e.g. ``items[3]``) as the typed error naming the field, as the
    server would name it."""
    first = first_error(e)
    msg = str(first.get("msg", e)).removeprefix("Value error, ")
    return InvalidInputError(msg, field=".".join(x for x in (where, error_field(first)) if x) or None)


def _protocol_error(message: str) -> APIStatusError:
    return APIStatusError(message, status_code=200, error_type="protocol_error", code="protocol_error")


def _check_finite(res: ScoreResponse) -> ScoreResponse:
    """A reward or score that is NaN or infinite never reaches a trainer."""
    for i, r in enumerate(res.results):
        if r.reward is not None and not math.isfinite(r.reward):
            raise _protocol_error(f"the server returned a non-finite reward ({r.reward}) for item {i}")
        for name, v in r.scores.items():
            if not math.isfinite(v):
                raise _protocol_error(f"the server returned a non-finite {name} score ({v}) for item {i}")
    return res


def _item_bytes(item: ScoreItem) -> int:
    return len(json.dumps(item.model_dump(mode="json", exclude_none=True), ensure_ascii=False).encode()) + 1


def _split(req: ScoreRequest, limits: Limits) -> list[list[ScoreItem]]:
    """`req.items` in parts that each fit the server's item and byte limits, in order."""
    envelope = len(req.model_copy(update={"items": []}).model_dump_json(exclude_none=True).encode()) + 16
    budget = int(limits.max_request_bytes * _BYTES_HEADROOM) - envelope
    parts: list[list[ScoreItem]] = [[]]
    used = 0
    for i, item in enumerate(req.items):
        size = _item_bytes(item)
        if size > budget:
            raise InvalidInputError(
                f"is {size} bytes as JSON; the server takes at most {limits.max_request_bytes} bytes per request",
                field=f"items[{i}]",
            )
        if parts[-1] and (len(parts[-1]) >= limits.max_items or used + size > budget):
            parts.append([])
            used = 0
        parts[-1].append(item)
        used += size
    return parts


def _merge(responses: Sequence[ScoreResponse]) -> ScoreResponse:
    first = responses[0]
    return ScoreResponse(
        principles=first.principles,
        results=[r for res in responses for r in res.results],
        versions=first.versions,
        scalarizer=first.scalarizer,
        usage=Usage(
            items=sum(r.usage.items for r in responses),
            input_tokens=sum(r.usage.input_tokens for r in responses),
            forward_rows=sum(r.usage.forward_rows for r in responses),
        ),
    )


def _pair_items(prompts: Sequence[str], responses: Sequence[str]) -> list[ScoreItem]:
    """(prompt, response) strings as score items; `InvalidInputError` naming the item that is not valid text."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    items = []
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        try:
            items.append(ScoreItem(prompt=p, response=r))
        except ValidationError as e:
            raise _invalid_input(e, f"items[{i}]") from None
    return items


def _score_request(
    items: list[ScoreItem],
    *,
    principles: Sequence[str] | None,
    scalarizer: str | ScalarizerSpec | None,
    weights: Mapping[str, float] | None,
    params: Mapping[str, Any] | None,
    normalize: bool,
    expected_versions: Mapping[str, str] | None,
) -> ScoreRequest:
    try:
        if isinstance(scalarizer, str):
            spec: ScalarizerSpec | None = ScalarizerSpec(
                name=scalarizer, weights=dict(weights) if weights else None, params=dict(params or {})
            )
        elif scalarizer is None and weights is not None:
            spec = ScalarizerSpec(name="linear", weights=dict(weights), params=dict(params or {}))
        else:
            spec = scalarizer
    except ValidationError as e:
        raise _invalid_input(e, "scalarizer") from None
    try:
        return ScoreRequest(
            items=items,
            principles=list(principles) if principles is not None else None,
            scalarizer=spec,
            normalize=normalize,
            expected_versions=dict(expected_versions) if expected_versions else None,
        )
    except ValidationError as e:
        raise _invalid_input(e) from None


def _rewards_of(res: ScoreResponse, n: int) -> list[float]:
    rewards = [r.reward for r in res.results]
    if len(rewards) != n or any(r is None for r in rewards):
        raise _protocol_error(f"server returned {len(rewards)} results, some without a reward, for {n} items")
    bad = [i for i, r in enumerate(rewards) if r is None or not math.isfinite(r)]
    if bad:
        raise _protocol_error(f"server returned a non-finite reward ({rewards[bad[0]]}) for item {bad[0]}")
    return [float(r) for r in rewards if r is not None]


class _Batch:
    """One logical score request split into parts by the server's limits, scored on one set of versions.

    A driver (sync or async) asks `next_request()` for each part's request and hands back its response through
    `take()`; after a 409 on a part that the caller did not pin itself, `restart()` starts over unpinned.
    """

    def __init__(self, req: ScoreRequest, limits: Limits) -> None:
        self.req = req
        self.parts = _split(req, limits)
        self.responses: list[ScoreResponse] = []
        self.restarts = 0

    @property
    def done(self) -> bool:
        return len(self.responses) == len(self.parts)

    def next_request(self) -> ScoreRequest:
        if len(self.parts) == 1:
            return self.req
        pinned = self.responses[0].versions if self.responses else self.req.expected_versions
        return self.req.model_copy(update={"items": self.parts[len(self.responses)], "expected_versions": pinned})

    def take(self, res: ScoreResponse) -> None:
        self.responses.append(_check_finite(res))

    def restart(self, e: APIStatusError) -> bool:
        """After `e`: True to score the batch again from its first part (adapters changed between parts)."""
        if e.status_code != 409 or not self.responses or self.restarts >= _MAX_RESCORES:
            return False
        self.restarts += 1
        logger.warning("adapters changed between the parts of a split batch (%s); rescoring it", e)
        self.responses = []
        return True

    def result(self) -> ScoreResponse:
        return self.responses[0] if len(self.responses) == 1 else _merge(self.responses)


def _encode(payload: Any) -> bytes | None:
    """The JSON body; text that is not valid Unicode is an `InvalidInputError`, never a bare UnicodeEncodeError."""
    if payload is None:
        return None
    try:
        return json.dumps(payload, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidInputError(
            f"contains a lone UTF-16 surrogate (U+{ord(e.object[e.start]):04X}), which is not valid Unicode text",
            field=_where_invalid(payload) or "body",
        ) from None
    except ValueError as e:  # NaN or infinity in a number
        raise InvalidInputError(f"cannot be sent as JSON: {e}", field="body") from None


def _where_invalid(v: Any, where: str = "") -> str | None:
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            return where or None
        return None
    items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
    for k, x in items:
        found = _where_invalid(x, f"{where}[{k}]" if isinstance(k, int) else f"{where}.{k}" if where else str(k))
        if found:
            return found
    return None


def _json_headers(content: bytes | None) -> dict[str, str] | None:
    return None if content is None else {"content-type": "application/json"}


def _parse(model: type[M], resp: httpx.Response) -> M:
    try:
        return model.model_validate_json(resp.content)
    except ValidationError as e:
        raise _protocol_error(f"the server's answer is not a {model.__name__}: {e.errors()[0]['msg']}") from None


def _get_reward_body(
    queries: Sequence[str], prompts: Sequence[str] | None, labels: Sequence[Any] | None
) -> tuple[dict[str, Any], list[int]]:
    """/get_reward's body, lone surrogates replaced as the route does (they could not be sent as UTF-8), and the
    indices of the queries that had any."""
    qs = [replace_invalid_text(q) for q in queries]
    ps = None if prompts is None else [replace_invalid_text(p) for p in prompts]
    body: dict[str, Any] = {"query": [q for q, _ in qs]}
    if ps is not None:
        body["prompts"] = [p for p, _ in ps]
    if labels is not None:
        body["labels"] = [replace_invalid_text(x)[0] if isinstance(x, str) else x for x in labels]
    replaced = [i for i, (_, r) in enumerate(qs) if r or (ps is not None and i < len(ps) and ps[i][1])]
    return body, replaced


def _check_rewards(res: OpenRLHFRewardResponse, n: int, replaced: Sequence[int] = ()) -> OpenRLHFRewardResponse:
    for i in replaced:
        if i < len(res.info):
            res.info[i].replaced_text = True
    if len(res.rewards) != n:
        raise _protocol_error(f"server returned {len(res.rewards)} rewards for {n} queries")
    bad = [i for i, r in enumerate(res.rewards) if not math.isfinite(r)]
    if bad:
        raise _protocol_error(f"server returned a non-finite reward ({res.rewards[bad[0]]}) for query {bad[0]}")
    return res


class _Base:
    def __init__(self, base_url: str, *, api_key: str | None, timeout: float, retry: RetryPolicy | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        self._limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
        self._auth = _headers(api_key)
        self.server_limits: Limits | None = None  # from /v1/principles at the first score request
        self._default_spec: ScalarizerSpec | None = None

    def _limits_from(self, res: PrinciplesResponse | None) -> Limits:
        self.server_limits = (res.limits if res is not None else None) or DEFAULT_LIMITS
        return self.server_limits

    def __repr__(self) -> str:  # never shows the key
        return f"{type(self).__name__}(base_url={self.base_url!r}, retry={self.retry!r})"

    def _next_wait(
        self, method: str, path: str, attempt: int, resp: httpx.Response | None, error: BaseException | None
    ) -> float | None:
        """After one try: None when `resp` is the final, good answer; else seconds to wait before the next.

        Raises `APIStatusError` on an error status that retrying will not fix, and `RetriesExhaustedError`
        when the last try failed with a transport error, 429 or 503.
        """
        if resp is not None and resp.status_code < 400:
            return None
        if resp is not None and resp.status_code not in _RETRY_STATUS:
            _raise_for(resp)
        if attempt >= self.retry.max_retries:
            last = error if resp is None else APIStatusError(resp.text[:200], status_code=resp.status_code)
            raise RetriesExhaustedError(
                f"{method} {path} failed after {attempt + 1} attempts: {last!r}", attempts=attempt + 1, last_error=last
            )
        wait = self.retry.delay(attempt, None if resp is None else resp.headers.get("retry-after"))
        why = type(error).__name__ if resp is None else f"HTTP {resp.status_code}"
        logger.warning("%s %s: %s; retrying in %.2fs", method, path, why, wait)
        return wait

    @staticmethod
    def _payload(body: BaseModel | None) -> Any:
        return body.model_dump(mode="json", exclude_none=True) if body is not None else None


class MorlaifClient(_Base):
    """Synchronous client; thread-safe, reuse one per process."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key=api_key, timeout=timeout, retry=retry)
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=self._timeout,
            limits=self._limits,
            headers=self._auth,
            transport=transport,
        )

    def __enter__(self) -> MorlaifClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, model: type[M], body: BaseModel | None = None) -> M:
        return self._request_json(method, path, model, self._payload(body))

    def _request_json(self, method: str, path: str, model: type[M], payload: Any) -> M:
        content = _encode(payload)
        attempt = 0
        while True:
            resp, error = None, None
            try:
                resp = self._http.request(method, path, content=content, headers=_json_headers(content))
            except httpx.TransportError as e:
                error = e
            wait = self._next_wait(method, path, attempt, resp, error)
            if wait is None:
                assert resp is not None
                return _parse(model, resp)
            time.sleep(wait)
            attempt += 1

    def limits(self) -> Limits:
        """The server's request limits (asked once; a server that does not say is assumed to take its defaults)."""
        if self.server_limits is None:
            try:
                return self._limits_from(self.principles())
            except APIStatusError:
                return self._limits_from(None)
        return self.server_limits

    def score_request(self, req: ScoreRequest) -> ScoreResponse:
        """Score `req`, split into as many requests as the server's limits need (module docstring)."""
        batch = _Batch(req, self.limits())
        while not batch.done:
            try:
                batch.take(self._request("POST", "/v1/score", ScoreResponse, batch.next_request()))
            except APIStatusError as e:
                if not batch.restart(e):
                    raise
        return batch.result()

    def get_reward(
        self, queries: Sequence[str], prompts: Sequence[str] | None = None, labels: Sequence[Any] | None = None
    ) -> OpenRLHFRewardResponse:
        """OpenRLHF's ``/get_reward``: the server reads each query (chat template, prompt split) and scalarizes
        with its default scalarizer. `labels` are passed on and not used. Rewards are checked finite. As the route
        itself, it never refuses text: lone surrogates become U+FFFD (``info[i].replaced_text``)."""
        body, replaced = _get_reward_body(queries, prompts, labels)
        res = self._request_json("POST", "/get_reward", OpenRLHFRewardResponse, body)
        return _check_rewards(res, len(queries), replaced)

    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        *,
        principles: Sequence[str] | None = None,
        scalarizer: str | ScalarizerSpec | None = None,
        weights: Mapping[str, float] | None = None,
        params: Mapping[str, Any] | None = None,
        normalize: bool = True,
        expected_versions: Mapping[str, str] | None = None,
    ) -> ScoreResponse:
        return self.score_request(
            _score_request(
                _pair_items(prompts, responses),
                principles=principles,
                scalarizer=scalarizer,
                weights=weights,
                params=params,
                normalize=normalize,
                expected_versions=expected_versions,
            )
        )

    def rewards(
        self, prompts: Sequence[str], responses: Sequence[str], *, scalarizer: str = "linear", **kwargs: Any
    ) -> list[float]:
        """One scalarized reward per (prompt, response), or an exception: never a missing value."""
        return _rewards_of(self.score(prompts, responses, scalarizer=scalarizer, **kwargs), len(prompts))

    def compare(self, req: CompareRequest) -> CompareResponse:
        return self._request("POST", "/v1/compare", CompareResponse, req)

    def principles(self) -> PrinciplesResponse:
        return self._request("GET", "/v1/principles", PrinciplesResponse)

    def default_scalarizer(self) -> ScalarizerSpec:
        """The server's default scalarizer (the one /get_reward uses), asked once."""
        if self._default_spec is None:
            self._default_spec = self._request("GET", "/v1/scalarizers", ScalarizersResponse).default
        return self._default_spec

    def load_adapter(self, name: str, *, version: str | None = None) -> AdapterAction:
        """Admin: load (or hot-swap to) a package version from the server's adapter root.

        Needs a client made with the admin key. Requests in flight finish on the version they started with.
        """
        return self._request("POST", "/v1/adapters", AdapterAction, LoadAdapterRequest(name=name, version=version))


class AsyncMorlaifClient(_Base):
    """Asynchronous client for event loops (TRL reward functions, async trainers)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key=api_key, timeout=timeout, retry=retry)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=self._timeout,
            limits=self._limits,
            headers=self._auth,
            transport=transport,
        )

    async def __aenter__(self) -> AsyncMorlaifClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, model: type[M], body: BaseModel | None = None) -> M:
        return await self._request_json(method, path, model, self._payload(body))

    async def _request_json(self, method: str, path: str, model: type[M], payload: Any) -> M:
        content = _encode(payload)
        attempt = 0
        while True:
            resp, error = None, None
            try:
                resp = await self._http.request(method, path, content=content, headers=_json_headers(content))
            except httpx.TransportError as e:
                error = e
            wait = self._next_wait(method, path, attempt, resp, error)
            if wait is None:
                assert resp is not None
                return _parse(model, resp)
            await asyncio.sleep(wait)
            attempt += 1

    async def limits(self) -> Limits:
        """The server's request limits (asked once; a server that does not say is assumed to take its defaults)."""
        if self.server_limits is None:
            try:
                return self._limits_from(await self.principles())
            except APIStatusError:
                return self._limits_from(None)
        return self.server_limits

    async def score_request(self, req: ScoreRequest) -> ScoreResponse:
        """Score `req`, split into as many requests as the server's limits need (module docstring)."""
        batch = _Batch(req, await self.limits())
        while not batch.done:
            try:
                batch.take(await self._request("POST", "/v1/score", ScoreResponse, batch.next_request()))
            except APIStatusError as e:
                if not batch.restart(e):
                    raise
        return batch.result()

    async def get_reward(
        self, queries: Sequence[str], prompts: Sequence[str] | None = None, labels: Sequence[Any] | None = None
    ) -> OpenRLHFRewardResponse:
        """`MorlaifClient.get_reward`, awaited."""
        body, replaced = _get_reward_body(queries, prompts, labels)
        res = await self._request_json("POST", "/get_reward", OpenRLHFRewardResponse, body)
        return _check_rewards(res, len(queries), replaced)

    async def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        *,
        principles: Sequence[str] | None = None,
        scalarizer: str | ScalarizerSpec | None = None,
        weights: Mapping[str, float] | None = None,
        params: Mapping[str, Any] | None = None,
        normalize: bool = True,
        expected_versions: Mapping[str, str] | None = None,
    ) -> ScoreResponse:
        return await self.score_request(
            _score_request(
                _pair_items(prompts, responses),
                principles=principles,
                scalarizer=scalarizer,
                weights=weights,
                params=params,
                normalize=normalize,
                expected_versions=expected_versions,
            )
        )

    async def rewards(
        self, prompts: Sequence[str], responses: Sequence[str], *, scalarizer: str = "linear", **kwargs: Any
    ) -> list[float]:
        return _rewards_of(await self.score(prompts, responses, scalarizer=scalarizer, **kwargs), len(prompts))

    async def compare(self, req: CompareRequest) -> CompareResponse:
        return await self._request("POST", "/v1/compare", CompareResponse, req)

    async def principles(self) -> PrinciplesResponse:
        return await self._request("GET", "/v1/principles", PrinciplesResponse)

    async def default_scalarizer(self) -> ScalarizerSpec:
        """The server's default scalarizer (the one /get_reward uses), asked once."""
        if self._default_spec is None:
            self._default_spec = (await self._request("GET", "/v1/scalarizers", ScalarizersResponse)).default
        return self._default_spec


def _turns(x: Any, role: str, where: str) -> list[Any]:
    if isinstance(x, str):
        return [{"role": role, "content": x}]
    if isinstance(x, list):
        return list(x)
    if isinstance(x, dict) and "role" in x:  # one message
        return [x]
    raise InvalidInputError(f"expected a string or a list of chat messages, got {type(x).__name__}", field=where)


def trl_item(prompt: Any, completion: Any, i: int = 0) -> ScoreItem:
    """One TRL (prompt, completion) as a score item: plain strings as a prompt/response pair; conversational
    ones (lists of messages) as the conversation ``prompt + completion``, which the server renders exactly as a
    ``/v1/score`` ``messages`` item (`morlaif.conversation`). Raises `InvalidInputError` naming the item."""
    try:
        if isinstance(prompt, str) and isinstance(completion, str):
            return ScoreItem(prompt=prompt, response=completion)
        messages = _turns(prompt, "user", f"prompts[{i}]") + _turns(completion, "assistant", f"completions[{i}]")
        return ScoreItem(messages=messages)
    except ValidationError as e:
        raise _invalid_input(e, f"items[{i}]") from None


async def _reward_signature(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """What `RemoteReward` looks like to `inspect`: an async function of TRL's reward signature."""
    raise NotImplementedError


def _sync_reward_signature(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """What `SyncRemoteReward` looks like to `inspect`: a function of TRL's reward signature."""
    raise NotImplementedError


class RemoteReward:
    """An async reward function for TRL's GRPOTrainer and RLOOTrainer that scores through a PM server.

    TRL calls it as ``await reward(prompts=..., completions=..., **kwargs)`` with plain or conversational
    (message list) prompts and completions; it returns one scalarized reward per completion, never a missing
    or non-finite one (the client retries, then raises). A conversation is scored as the conversation
    ``prompt + completion`` (system and earlier turns, content parts, tool calls), exactly as ``/v1/score``
    scores it given as ``messages``. A batch larger than the server's limits is split; all its parts, and with
    ``pin_versions`` later calls too, are scored on one set of adapter versions (`morlaif.pinned`); when the
    server's adapters change, the batch is rescored on the new ones and the change is logged. `versions` is the
    pin. Each principle's mean score goes to TRL's logs through its ``log_metric`` hook (``morlaif/<principle>``).

    Works unchanged in every TRL: `inspect.iscoroutinefunction` is True for an instance (TRL before 1.16 checks
    the instance, 1.16 its ``__call__``), it pickles before and after its first call (TRL's async GRPO pickles
    reward functions into a worker; the connection pool is made again there), and ``__name__``, the metric
    name TRL logs under, differs per configuration (``morlaif_linear`` with no weights, else
    ``morlaif_<scalarizer>_<hash of principles, weights and params>``; ``name=`` to choose it).

    Usage::

        reward = RemoteReward("http://pm:8000", weights_file="adapters/weights.json")
        trainer = GRPOTrainer(model=..., reward_funcs=[reward], ...)
    """

    # function-like to `inspect` (its protocol for function objects that are not Python functions): TRL's
    # `inspect.iscoroutinefunction(reward)` is then True, and `inspect.signature` gives TRL's signature
    __code__ = _reward_signature.__code__
    __defaults__ = None
    __kwdefaults__ = None

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        api_key_env: str | None = envvars.API_KEY,
        principles: Sequence[str] | None = None,
        scalarizer: str = "linear",
        weights: Mapping[str, float] | None = None,
        params: Mapping[str, Any] | None = None,
        weights_file: str | os.PathLike[str] | None = None,
        normalize: bool = True,
        pin_versions: bool = True,
        timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        name: str | None = None,
    ) -> None:
        if weights_file is not None:
            if weights is not None:
                raise ValueError("give weights or weights_file, not both")
            spec = ScalarizerSpec.from_file(os.fspath(weights_file))
            scalarizer, weights, params = spec.name, spec.weights, dict(spec.params)
        if api_key is None and api_key_env:
            api_key = os.environ.get(api_key_env) or None
        self.base_url = base_url
        self.principles = list(principles) if principles is not None else None
        self.scalarizer, self.weights, self.params = scalarizer, dict(weights) if weights else None, dict(params or {})
        self.normalize, self.pin_versions = normalize, pin_versions
        self.__name__ = name or self._default_name()  # TRL names the reward column after it
        self.__qualname__ = self.__name__
        self.__annotations__: dict[str, Any] = {}
        self._client_args: dict[str, Any] = {"api_key": api_key, "timeout": timeout, "retry": retry}
        # the pinned scorer on a connection pool, made at the first call (and again on another event loop)
        self._scorer: Any = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._versions: dict[str, str] | None = None  # the pin while no scorer holds it

    @property
    def versions(self) -> dict[str, str] | None:
        """The adapter versions (principle -> version) the next batch is scored on; None before the first batch
        and with ``pin_versions=False``."""
        return self._scorer.versions if self._scorer is not None else self._versions

    @versions.setter
    def versions(self, versions: Mapping[str, str] | None) -> None:
        self._versions = None if versions is None else dict(versions)
        if self._scorer is not None:
            self._scorer.versions = self._versions

    def _pinned_scorer(self, client: Any) -> Any:
        """A pinned scorer on `client` that carries the pin on (a new pool keeps the versions of the old)."""
        scorer = PinnedScorer if isinstance(client, MorlaifClient) else AsyncPinnedScorer
        return scorer(client, versions=self.versions, pin=self.pin_versions, logger=logger)

    def _drop_scorer(self) -> Any:
        """The scorer's client, for closing; the pin stays."""
        scorer, self._versions, self._scorer = self._scorer, self.versions, None
        return scorer.client

    def _default_name(self) -> str:
        config = {"principles": self.principles, "weights": self.weights, "params": self.params}
        if not any(config.values()):
            return f"morlaif_{self.scalarizer}"
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
        return f"morlaif_{self.scalarizer}_{digest}"

    def __repr__(self) -> str:  # never shows the key
        return f"{type(self).__name__}({self.base_url!r}, scalarizer={self.scalarizer!r}, weights={self.weights!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_versions"] = self.versions
        state["_scorer"] = state["_client_loop"] = None  # a connection pool does not travel: the copy makes its own
        return state

    def _request(self, prompts: Sequence[Any], completions: Sequence[Any]) -> ScoreRequest:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        return _score_request(
            [trl_item(p, c, i) for i, (p, c) in enumerate(zip(prompts, completions, strict=True))],
            principles=self.principles,
            scalarizer=self.scalarizer,
            weights=self.weights,
            params=self.params,
            normalize=self.normalize,
            expected_versions=None,  # the pinned scorer's
        )

    def _log(self, res: ScoreResponse, kwargs: Mapping[str, Any]) -> None:
        log_metric = kwargs.get("log_metric")
        if callable(log_metric) and res.results:
            for p in res.principles:
                log_metric(f"morlaif/{p}", sum(r.scores[p] for r in res.results) / len(res.results))

    async def score(self, prompts: Sequence[Any], completions: Sequence[Any]) -> ScoreResponse:
        """The server's full answer (per-principle scores and rewards) for one batch, on pinned versions."""
        loop = asyncio.get_running_loop()
        if self._scorer is None or self._client_loop is not loop:  # one pool per event loop, reused on it
            client = AsyncMorlaifClient(self.base_url, **self._client_args)
            self._scorer, self._client_loop = self._pinned_scorer(client), loop
        return await self._scorer.score_request(self._request(prompts, completions))

    async def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        res = await self.score(prompts, completions)
        rewards = _rewards_of(res, len(prompts))
        self._log(res, kwargs)
        return rewards

    async def aclose(self) -> None:
        """Close the pooled connections (call on the loop that ran the reward function)."""
        if self._scorer is not None:
            await self._drop_scorer().aclose()


class SyncRemoteReward(RemoteReward):
    """`RemoteReward` as a plain (blocking) function, for trainers and TRL versions that call reward functions
    synchronously (TRL before async reward functions, custom loops). Same arguments, rewards and metric names."""

    __code__ = _sync_reward_signature.__code__

    def score(self, prompts: Sequence[Any], completions: Sequence[Any]) -> ScoreResponse:  # type: ignore[override]
        """The server's full answer for one batch, on pinned versions (blocking)."""
        if self._scorer is None:
            self._scorer = self._pinned_scorer(MorlaifClient(self.base_url, **self._client_args))
        return self._scorer.score_request(self._request(prompts, completions))

    def __call__(  # type: ignore[override]
        self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> list[float]:
        res = self.score(prompts, completions)
        rewards = _rewards_of(res, len(prompts))
        self._log(res, kwargs)
        return rewards

    def close(self) -> None:
        if self._scorer is not None:
            self._drop_scorer().close()


def make_trl_reward_func(base_url: str, **kwargs: Any) -> RemoteReward:
    """``RemoteReward(base_url, **kwargs)``: kept for code written against the first client."""
    return RemoteReward(base_url, **kwargs)
