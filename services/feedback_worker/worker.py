"""The labelling loop: claim jobs under a lease, ask the judge both orders, write one label per job.

Blocking store calls run in threads; up to `concurrency` jobs are in flight, a new one claimed as soon as
one finishes (the judge applies its own rate limit to each request). A failed attempt is recorded with
its reason and the job goes back to the queue until it has used its attempts; a worker killed mid-run
leaves its jobs to come back when their leases end.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import anyio

from morlaif.judges.remote import PROMPT_VERSION, JudgeError, Judgement
from morlaif.principles import get_principle
from morlaif.store import ClaimedJob, LabelIn, LeaseLost, Store

T = TypeVar("T")

__all__ = ["Judge", "RunSummary", "run_worker", "default_worker_id"]

logger = logging.getLogger(__name__)


class Judge(Protocol):
    model: str

    async def judge(self, principle_phrase: str, conversation: str, a: str, b: str) -> Judgement: ...


@dataclass(kw_only=True)
class RunSummary:
    labels: int = 0
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    lost_leases: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0

    def __str__(self) -> str:
        fails = ", ".join(f"{k}: {v}" for k, v in sorted(self.failures.items())) or "none"
        return (
            f"labels written: {self.labels}; failed attempts: {fails}; lost leases: {self.lost_leases}; "
            f"tokens: {self.prompt_tokens} prompt + {self.completion_tokens} completion; cost: ${self.cost:.4f}"
        )


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _transient(e: BaseException) -> bool:
    """A database error that waiting and reconnecting can cure (the server restarting, a dropped
    connection, a locked SQLite file), not one that would only repeat (a full disk, a read-only store)."""
    import sqlite3

    from sqlalchemy.exc import DBAPIError

    if not isinstance(e, DBAPIError):
        return False
    if e.connection_invalidated:
        return True
    orig = e.orig
    try:
        import psycopg

        if isinstance(orig, psycopg.errors.DiskFull | psycopg.errors.OutOfMemory):
            return False
        if isinstance(orig, psycopg.OperationalError):
            return True  # cannot connect, admin shutdown, server starting up
    except ImportError:  # psycopg is a dependency, but SQLite alone needs none of it
        pass
    return isinstance(orig, sqlite3.OperationalError) and "locked" in str(orig)


def _log_db_retry(state: Any) -> None:
    e = state.outcome.exception() if state.outcome is not None else None
    # the exception's class only: a driver message may carry the connection string
    logger.warning("label store unreachable (%s); retrying in %.1f s", type(e).__name__, state.upcoming_sleep)


async def _db(fn: Callable[..., T], *args: Any, patience_s: float = 120.0, **kwargs: Any) -> T:
    """`fn(*args)` in a thread, retried with jittered backoff while the database is unreachable (a
    PostgreSQL restart), for up to `patience_s`; then the last error is raised."""
    from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

    async for attempt in AsyncRetrying(
        retry=retry_if_exception(_transient),
        wait=wait_exponential_jitter(multiplier=0.2, max=5.0, jitter=0.5),
        stop=stop_after_delay(patience_s),
        before_sleep=_log_db_retry,
        reraise=True,
    ):
        with attempt:
            return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
    raise AssertionError("unreachable")  # AsyncRetrying either returns or raises


async def run_worker(
    store: Store,
    judge: Judge,
    *,
    worker_id: str | None = None,
    concurrency: int = 8,
    lease_s: float = 300.0,
    cost_per_1k_tokens: tuple[float, float] = (0.0, 0.0),
    on_done: Callable[[int], None] | None = None,
    poll_s: float = 0.5,
    follow: bool = False,
    stop: asyncio.Event | None = None,
    heartbeat: Callable[[], None] | None = None,
) -> RunSummary:
    """Label this judge's jobs until none is pending or leased to anyone; returns what this worker did.

    With `follow` the worker keeps polling for new jobs (a service). Setting `stop` makes it claim no more
    and return once the jobs in flight are written. `heartbeat()` is called at least every few seconds
    while the loop is alive (a container health check watches the file it touches).
    """
    worker = worker_id or default_worker_id()
    summary = RunSummary()

    async def one(job: ClaimedJob) -> None:
        try:
            phrase = get_principle(job.principle).judge_phrase
        except KeyError:
            await _db(store.fail, job.id, worker, f"unknown principle {job.principle!r}")
            summary.failures["unknown_principle"] += 1
            return
        try:
            j = await judge.judge(phrase, job.prompt, job.response_a, job.response_b)
        except JudgeError as e:
            summary.failures[e.reason] += 1
            try:
                await _db(store.fail, job.id, worker, f"{e.reason}: {e.message}")
            except LeaseLost:
                summary.lost_leases += 1
            return
        cost = (j.prompt_tokens * cost_per_1k_tokens[0] + j.completion_tokens * cost_per_1k_tokens[1]) / 1000
        label = LabelIn(
            p_a=j.p_a,
            hard=j.hard,
            per_order=j.per_order,
            judge_model=judge.model,
            prompt_version=PROMPT_VERSION,
            prompt_tokens=j.prompt_tokens,
            completion_tokens=j.completion_tokens,
            cost=cost,
            seconds=j.seconds,
        )
        try:
            await _db(store.complete, job.id, worker, label)
        except LeaseLost:
            summary.lost_leases += 1  # another worker owns it now; its label will be the one
            return
        summary.labels += 1
        summary.prompt_tokens += j.prompt_tokens
        summary.completion_tokens += j.completion_tokens
        summary.cost += cost
        if on_done is not None:
            on_done(1)

    inflight: set[asyncio.Task[None]] = set()
    try:
        while True:
            if heartbeat is not None:
                heartbeat()
            if stop is not None and stop.is_set():
                if inflight:
                    await asyncio.wait(inflight)
                    for t in inflight:
                        t.result()
                    inflight = set()
                break
            room = concurrency - len(inflight)
            if room > 0:  # keep `concurrency` jobs in flight: claim as soon as one finishes
                jobs = await _db(store.claim, worker, judge=judge.model, limit=room, lease_s=lease_s)
                inflight.update(asyncio.create_task(one(j)) for j in jobs)
            if inflight:
                waiters = set(inflight) | ({asyncio.create_task(stop.wait())} if stop is not None else set())
                done, _ = await asyncio.wait(waiters, timeout=5.0, return_when=asyncio.FIRST_COMPLETED)
                for w in waiters - inflight:
                    w.cancel()
                done &= inflight
                inflight -= done
                for t in done:
                    t.result()  # a bug in `one` stops the worker loudly rather than silently
                continue
            # Nothing in flight and nothing to claim: done, unless other workers hold leases; if one of
            # them died, its jobs come back to us when the lease runs out.
            if not follow:
                counts = await _db(store.status, judge.model)
                if not any(c["running"] or c["pending"] for c in counts.values()):
                    break
            if stop is None:
                await asyncio.sleep(poll_s)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), poll_s)
    finally:
        for t in inflight:
            t.cancel()
    logger.info("worker %s done: %s", worker, summary)
    return summary
