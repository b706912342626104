"""HTTP client of the PM server: sync and async, one pooled connection set per instance.

Retries (with exponential backoff and jitter, honouring Retry-After) only on transport errors, 429 and
503; any other error status raises `APIStatusError` at once; when retries run out, `RetriesExhaustedError`.
A reward is never returned missing: every call returns one value per item or raises.

Usage::

    from morlaif.client import MorlaifClient
    with MorlaifClient("http://127.0.0.1:8000", api_key="...") as c:
        rewards = c.rewards(["What is 2+2?"], ["4."], scalarizer="soft_max_min",
                            weights={"helpfulness": 1, "factuality": 2})

For TRL's GRPO/RLOO trainers: ``reward_funcs=[RemoteReward(url, weights_file="adapters/weights.json")]``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from morlaif import envvars
from morlaif.errors import APIStatusError, RetriesExhaustedError
from morlaif.protocol import (
    AdapterAction,
    CompareRequest,
    CompareResponse,
    LoadAdapterRequest,
    PrinciplesResponse,
    ScalarizerSpec,
    ScoreItem,
    ScoreRequest,
    ScoreResponse,
)

__all__ = ["MorlaifClient", "AsyncMorlaifClient", "RemoteReward", "RetryPolicy", "make_trl_reward_func"]

logger = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
_RETRY_STATUS = {429, 503}


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
    try:
        err = resp.json()["error"]
        message, type_, code = str(err.get("message", "")), str(err.get("type", "")), str(err.get("code", ""))
    except Exception:
        message, type_, code = resp.text[:500] or resp.reason_phrase, "", ""
    raise APIStatusError(message, status_code=resp.status_code, error_type=type_, code=code)


def _score_request(
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    principles: Sequence[str] | None,
    scalarizer: str | ScalarizerSpec | None,
    weights: Mapping[str, float] | None,
    params: Mapping[str, Any] | None,
    normalize: bool,
    expected_versions: Mapping[str, str] | None,
) -> ScoreRequest:
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if isinstance(scalarizer, str):
        spec: ScalarizerSpec | None = ScalarizerSpec(
            name=scalarizer, weights=dict(weights) if weights else None, params=dict(params or {})
        )
    elif scalarizer is None and weights is not None:
        spec = ScalarizerSpec(name="linear", weights=dict(weights), params=dict(params or {}))
    else:
        spec = scalarizer
    return ScoreRequest(
        items=[ScoreItem(prompt=p, response=r) for p, r in zip(prompts, responses, strict=True)],
        principles=list(principles) if principles is not None else None,
        scalarizer=spec,
        normalize=normalize,
        expected_versions=dict(expected_versions) if expected_versions else None,
    )


def _rewards_of(res: ScoreResponse, n: int) -> list[float]:
    rewards = [r.reward for r in res.results]
    if len(rewards) != n or any(r is None for r in rewards):
        raise APIStatusError(
            f"server returned {len(rewards)} results, some without a reward, for {n} items",
            status_code=200,
            error_type="protocol_error",
        )
    return [float(r) for r in rewards if r is not None]


class _Base:
    def __init__(self, base_url: str, *, api_key: str | None, timeout: float, retry: RetryPolicy | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        self._limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
        self._auth = _headers(api_key)

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
        payload = self._payload(body)
        attempt = 0
        while True:
            resp, error = None, None
            try:
                resp = self._http.request(method, path, json=payload)
            except httpx.TransportError as e:
                error = e
            wait = self._next_wait(method, path, attempt, resp, error)
            if wait is None:
                assert resp is not None
                return model.model_validate_json(resp.content)
            time.sleep(wait)
            attempt += 1

    def score_request(self, req: ScoreRequest) -> ScoreResponse:
        return self._request("POST", "/v1/score", ScoreResponse, req)

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
                prompts,
                responses,
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
        payload = self._payload(body)
        attempt = 0
        while True:
            resp, error = None, None
            try:
                resp = await self._http.request(method, path, json=payload)
            except httpx.TransportError as e:
                error = e
            wait = self._next_wait(method, path, attempt, resp, error)
            if wait is None:
                assert resp is not None
                return model.model_validate_json(resp.content)
            await asyncio.sleep(wait)
            attempt += 1

    async def score_request(self, req: ScoreRequest) -> ScoreResponse:
        return await self._request("POST", "/v1/score", ScoreResponse, req)

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
                prompts,
                responses,
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


def _as_text(x: Any) -> str:
    """TRL passes strings, or (conversational) lists of {"role", "content"} messages."""
    if isinstance(x, str):
        return x
    if isinstance(x, list):
        return "\n\n".join(str(m.get("content", "")) for m in x if isinstance(m, dict))
    raise TypeError(f"cannot score a {type(x).__name__}")


class RemoteReward:
    """An async reward function for TRL's GRPOTrainer and RLOOTrainer that scores through a PM server.

    TRL calls it as ``await reward(prompts=..., completions=..., **kwargs)`` with plain or conversational
    (message list) prompts and completions; it returns one scalarized reward per completion, never a missing
    one (the client retries, then raises). All rewards of one call come from one request, hence one set of
    adapter versions; with ``pin_versions`` later calls also expect those versions, and when the server's
    adapters change the batch is rescored on the new ones and the change is logged. Each principle's mean
    score goes to TRL's logs through its ``log_metric`` hook (``morlaif/<principle>``).

    Usage::

        reward = RemoteReward("http://pm:8000", weights_file="adapters/weights.json")
        trainer = GRPOTrainer(model=..., reward_funcs=[reward], ...)
    """

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
    ) -> None:
        if weights_file is not None:
            if weights is not None:
                raise ValueError("give weights or weights_file, not both")
            spec = ScalarizerSpec.from_file(weights_file)
            scalarizer, weights, params = spec.name, spec.weights, dict(spec.params)
        if api_key is None and api_key_env:
            api_key = os.environ.get(api_key_env) or None
        self.base_url = base_url
        self.principles = list(principles) if principles is not None else None
        self.scalarizer, self.weights, self.params = scalarizer, dict(weights) if weights else None, dict(params or {})
        self.normalize, self.pin_versions = normalize, pin_versions
        self.versions: dict[str, str] | None = None
        self.__name__ = f"morlaif_{scalarizer}"  # TRL names the reward column after it
        self._client_args = {"api_key": api_key, "timeout": timeout, "retry": retry}
        self._client: AsyncMorlaifClient | None = None

    def __repr__(self) -> str:  # never shows the key
        return f"RemoteReward({self.base_url!r}, scalarizer={self.scalarizer!r}, weights={self.weights!r})"

    async def score(self, prompts: Sequence[Any], completions: Sequence[Any]) -> ScoreResponse:
        """The server's full answer (per-principle scores and rewards) for one batch, on pinned versions."""
        if self._client is None:  # made on the trainer's own event loop, then reused
            self._client = AsyncMorlaifClient(self.base_url, **self._client_args)
        ps, cs = [_as_text(p) for p in prompts], [_as_text(c) for c in completions]
        kwargs: dict[str, Any] = dict(
            principles=self.principles,
            scalarizer=self.scalarizer,
            weights=self.weights,
            params=self.params,
            normalize=self.normalize,
        )
        try:
            res = await self._client.score(ps, cs, expected_versions=self.versions, **kwargs)
        except APIStatusError as e:
            if e.status_code != 409:
                raise
            logger.warning("the PM server's adapter versions changed (%s); rescoring the batch on the new ones", e)
            res = await self._client.score(ps, cs, **kwargs)
        if self.pin_versions and self.versions != res.versions:
            logger.info("rewards pinned to adapter versions %s", res.versions)
            self.versions = dict(res.versions)
        return res

    async def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        res = await self.score(prompts, completions)
        rewards = _rewards_of(res, len(prompts))
        log_metric = kwargs.get("log_metric")
        if callable(log_metric) and res.results:
            for p in res.principles:
                log_metric(f"morlaif/{p}", sum(r.scores[p] for r in res.results) / len(res.results))
        return rewards

    async def aclose(self) -> None:
        """Close the pooled connections (call on the loop that ran the reward function)."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def make_trl_reward_func(base_url: str, **kwargs: Any) -> RemoteReward:
    """``RemoteReward(base_url, **kwargs)``: kept for code written against the first client."""
    return RemoteReward(base_url, **kwargs)
