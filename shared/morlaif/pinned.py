"""Scoring on pinned adapter versions: a trainer's rewards come from one set of adapter versions until it changes.

An admin can hot-swap a PM server's adapters while a trainer runs. Rewards from two versions mixed without
notice are a moving target, so a pinned scorer sends each request with ``expected_versions`` set to the
versions of its last answer. The server answers 409 when they are no longer loaded; the scorer then logs the
change, scores the same batch again on the server's current versions and pins those. Used by
`policy_trainer.ppo.PPOTrainer` (which also makes its data-parallel ranks agree on one set, and keeps the pin in
its checkpoints) and by `morlaif.client.RemoteReward` (TRL's GRPO/RLOO).

This is the contract *between* calls. Within one call the client itself holds the parts of a request it
splits by the server's limits to the versions of the first part (`morlaif.client._Batch`).

Usage::

    from morlaif.client import MorlaifClient
    from morlaif.pinned import PinnedScorer

    scorer = PinnedScorer(MorlaifClient("http://127.0.0.1:8000"))
    res = scorer.score(prompts, responses, weights={"helpfulness": 1.0})
    scorer.versions  # {"helpfulness": "v3"}: what the next call expects
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from morlaif.errors import APIStatusError
from morlaif.protocol import ScoreRequest, ScoreResponse

if TYPE_CHECKING:
    from morlaif.client import AsyncMorlaifClient, MorlaifClient

__all__ = ["AsyncPinnedScorer", "PinnedScorer"]

_logger = logging.getLogger(__name__)


class _Pinning:
    """The pin and what follows from an answer or a 409, for both scorers (they differ only in awaiting)."""

    def __init__(
        self,
        *,
        versions: Mapping[str, str] | None = None,
        pin: bool = True,
        logger: logging.Logger | None = None,
    ) -> None:
        self.versions: dict[str, str] | None = dict(versions) if versions else None
        self.pin_versions = pin
        self._log = logger or _logger

    def pin(self, versions: Mapping[str, str]) -> None:
        """Expect `versions` (principle -> adapter version) from the next call on; a change is logged."""
        if self.versions != versions:
            self._log.info("rewards pinned to adapter versions %s", versions)
            self.versions = dict(versions)

    def unpin(self) -> None:
        """Score the next call on whatever the server has loaded."""
        self.versions = None

    def _stale(self, e: APIStatusError) -> bool:
        """True when `e` is the server's 409 for versions this scorer pinned: score the batch again, unpinned."""
        if e.status_code != 409 or not self.versions:
            return False
        self._log.warning("the PM server's adapter versions changed (%s); rescoring the batch on the new ones", e)
        return True

    def _pinned(self, req: ScoreRequest, versions: Mapping[str, str] | None) -> ScoreRequest:
        return req.model_copy(update={"expected_versions": dict(versions) if versions else None})

    def _took(self, res: ScoreResponse, pin: bool) -> ScoreResponse:
        if pin and self.pin_versions:
            self.pin(res.versions)
        return res

    def __repr__(self) -> str:
        return f"{type(self).__name__}(versions={self.versions!r})"


class PinnedScorer(_Pinning):
    """A `MorlaifClient` that scores every call on the adapter versions of the call before.

    `versions` is the pin (None before the first answer, after `unpin`, and always with ``pin=False``).
    `logger` is the logger the pin changes and rescorings go to (default this module's). Raises what the client
    raises; a 409 is only absorbed when it is about versions this scorer pinned.
    """

    def __init__(
        self,
        client: MorlaifClient,
        *,
        versions: Mapping[str, str] | None = None,
        pin: bool = True,
        logger: logging.Logger | None = None,
    ) -> None:
        super().__init__(versions=versions, pin=pin, logger=logger)
        self.client = client

    def _call(self, send: Callable[[dict[str, str] | None], ScoreResponse], pin: bool) -> ScoreResponse:
        try:
            res = send(self.versions)
        except APIStatusError as e:
            if not self._stale(e):
                raise
            res = send(None)
        return self._took(res, pin)

    def score_request(self, req: ScoreRequest, *, pin: bool = True) -> ScoreResponse:
        """`req` scored on the pinned versions (its own ``expected_versions`` are replaced), or, when they were
        swapped out, on the server's current ones. With ``pin=False`` the answer's versions are not pinned (the
        caller decides, e.g. after its ranks agreed, through `pin`)."""
        return self._call(lambda v: self.client.score_request(self._pinned(req, v)), pin)

    def score(
        self, prompts: Sequence[str], responses: Sequence[str], *, pin: bool = True, **kwargs: Any
    ) -> ScoreResponse:
        """`MorlaifClient.score` on the pinned versions: its keyword arguments but ``expected_versions``, and
        ``pin`` as in `score_request`."""
        return self._call(lambda v: self.client.score(prompts, responses, expected_versions=v, **kwargs), pin)


class AsyncPinnedScorer(_Pinning):
    """`PinnedScorer` on an `AsyncMorlaifClient`: the same contract, awaited."""

    def __init__(
        self,
        client: AsyncMorlaifClient,
        *,
        versions: Mapping[str, str] | None = None,
        pin: bool = True,
        logger: logging.Logger | None = None,
    ) -> None:
        super().__init__(versions=versions, pin=pin, logger=logger)
        self.client = client

    async def _call(
        self, send: Callable[[dict[str, str] | None], Awaitable[ScoreResponse]], pin: bool
    ) -> ScoreResponse:
        try:
            res = await send(self.versions)
        except APIStatusError as e:
            if not self._stale(e):
                raise
            res = await send(None)
        return self._took(res, pin)

    async def score_request(self, req: ScoreRequest, *, pin: bool = True) -> ScoreResponse:
        """`PinnedScorer.score_request`, awaited."""
        return await self._call(lambda v: self.client.score_request(self._pinned(req, v)), pin)

    async def score(
        self, prompts: Sequence[str], responses: Sequence[str], *, pin: bool = True, **kwargs: Any
    ) -> ScoreResponse:
        """`PinnedScorer.score`, awaited."""
        return await self._call(lambda v: self.client.score(prompts, responses, expected_versions=v, **kwargs), pin)
