"""Dynamic batching (after text-embeddings-inference): bounded admission, one model thread.

Requests submit rows (one sequence x one adapter each) and get a `concurrent.futures.Future` of their
scores. A request's rows are queued in units the engine computes together: one input under several principles
(its shared trunk), or on a decoder that shares prompts, every response to one prompt under every principle.
One thread owns the engine: it waits up to `max_wait_s` for a micro-batch to fill, cuts it by a budget of
computed tokens and a row cap from the queue of units sorted by length (anchored on the oldest unit, so
nothing starves, and grown by whole units, least padding first), and runs it. Only a unit larger than the
budget is split, principle by principle. Control calls (adapter load/delete) run on the same thread between
batches, so the engine is never touched concurrently. Rows of requests whose future was cancelled (client
gone) are dropped.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from pm_server.model.engine import Row, ScoringEngine
from pm_server.serving.errors import Overloaded, TooLarge
from pm_server.serving.metrics import Metrics

__all__ = ["Batcher"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


def _settle(fut: concurrent.futures.Future[Any], *, result: Any = None, error: BaseException | None = None) -> None:
    """Resolve `fut` unless its owner cancelled it meanwhile (from another thread, at any moment)."""
    try:
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass


@dataclass(eq=False)
class _Job:
    rows: Sequence[Row]
    future: concurrent.futures.Future[list[float]]
    results: list[float] = field(default_factory=list)
    remaining: int = 0


class _Slot(NamedTuple):
    job: _Job
    row: int  # row of the job
    length: int


@dataclass(eq=False)
class _Unit:
    """Rows of one job computed together; `prefix` > 0: they share that many prompt tokens (once per adapter)."""

    seq: int
    job: _Job
    rows: list[int]  # indexes into job.rows, principle-major
    prefix: int
    enqueued: float
    width: int = 0
    real: int = 0
    saved: int = 0

    def measure(self) -> None:
        lengths = [len(self.job.rows[i].input_ids) for i in self.rows]
        self.width, self.real = max(lengths), sum(lengths)
        self.saved = _saved(self.job, self.rows, self.prefix)

    def cost(self, width: int) -> int:
        """Tokens computed for this unit in a batch `width` tokens wide."""
        return len(self.rows) * width - self.saved


def _saved(job: _Job, rows: Sequence[int], prefix: int) -> int:
    """Prompt tokens not recomputed: each adapter computes a shared prompt once."""
    return prefix * (len(rows) - len({job.rows[i].adapter for i in rows})) if prefix else 0


def _units(job: _Job, seq: Callable[[], int], shares_prefixes: bool, now: float) -> list[_Unit]:
    """`job`'s rows cut into units: equal inputs (all engines) or, where the engine shares prompts, equal
    prompts; each unit's rows ordered principle by principle (adapters in order of first appearance)."""
    keyed: dict[tuple[Any, ...], list[int]] = {}
    prefix: dict[tuple[Any, ...], int] = {}
    for i, r in enumerate(job.rows):
        k = min(r.prefix, len(r.input_ids) - 1)
        if shares_prefixes and k >= 1:
            key: tuple[Any, ...] = ("prompt", tuple(r.input_ids[:k]))
        else:
            key, k = ("input", tuple(r.input_ids), tuple(r.token_type_ids or ())), 0
        keyed.setdefault(key, []).append(i)
        prefix[key] = k
    rank: dict[str, int] = {}
    for r in job.rows:
        rank.setdefault(r.adapter, len(rank))
    units = []
    for key, rows in keyed.items():
        rows.sort(key=lambda i: (rank[job.rows[i].adapter], i))
        u = _Unit(seq=seq(), job=job, rows=rows, prefix=prefix[key], enqueued=now)
        u.measure()
        units.append(u)
    return units


class Batcher:
    def __init__(
        self,
        engine: ScoringEngine,
        *,
        max_batch_tokens: int,
        max_batch_rows: int,
        max_wait_s: float,
        max_queued_rows: int,
        pad_slack: float = 0.1,
        metrics: Metrics | None = None,
    ) -> None:
        self._engine = engine
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_rows = max_batch_rows
        self.max_wait_s = max_wait_s
        self.max_queued_rows = max_queued_rows
        self.pad_slack = pad_slack
        self._metrics = metrics
        self._cond = threading.Condition()
        self._sorted: list[tuple[int, int, _Unit]] = []  # (width, seq, unit): length order
        self._by_age: dict[int, _Unit] = {}  # seq -> unit, insertion (= age) order
        self._queued_rows = 0
        self._queued_tokens = 0
        self._controls: list[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = []
        self._seq = itertools.count()
        self._running = False
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.padded_tokens = 0  # rows x width, padding included (for the padding ratio)
        self.real_tokens = 0

    # ------------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="morlaif-model", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            for _, _, u in self._sorted:
                if not u.job.future.done():
                    _settle(u.job.future, error=RuntimeError("server is shutting down"))
            self._sorted.clear()
            self._by_age.clear()
            self._queued_rows = self._queued_tokens = 0

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    # ---------------------------------------------------------------------------------------- submit
    def submit(self, rows: Sequence[Row]) -> concurrent.futures.Future[list[float]]:
        fut: concurrent.futures.Future[list[float]] = concurrent.futures.Future()
        if not rows:
            fut.set_result([])
            return fut
        if len(rows) > self.max_queued_rows:
            raise TooLarge(
                f"request needs {len(rows)} rows (items x learned principles); the server admits at most "
                f"{self.max_queued_rows} at once: split it",
                field="items",
            )
        longest = max(len(r.input_ids) for r in rows)
        if longest > self.max_batch_tokens:
            raise TooLarge(
                f"an item of {longest} tokens exceeds the micro-batch budget of {self.max_batch_tokens}",
                field="items",
            )
        job = _Job(rows=rows, future=fut, results=[0.0] * len(rows), remaining=len(rows))
        shares_prefixes = bool(getattr(self._engine, "shares_prefixes", False))
        units = _units(job, self._seq.__next__, shares_prefixes, time.monotonic())  # outside the lock
        with self._cond:
            if not self._running:
                raise RuntimeError("batcher is not running")
            if self._queued_rows + len(rows) > self.max_queued_rows:
                raise Overloaded(
                    f"the scoring queue is full ({self._queued_rows} rows waiting); retry later",
                    retry_after_s=max(1.0, self.max_wait_s * 10),
                )
            for u in units:
                self._enqueue(u)
            self._set_queue_gauge()
            self._cond.notify_all()
        return fut

    def call(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run `fn` on the model thread between micro-batches."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._cond:
            if not self._running:
                raise RuntimeError("batcher is not running")
            self._controls.append((fn, fut))
            self._cond.notify_all()
        return fut

    # ------------------------------------------------------------------------------------ model loop
    def _set_queue_gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.queue_rows.set(self._queued_rows)

    def _enqueue(self, u: _Unit) -> None:
        bisect.insort(self._sorted, (u.width, u.seq, u))
        self._by_age[u.seq] = u
        self._queued_rows += len(u.rows)
        self._queued_tokens += u.real

    def _dequeue(self, u: _Unit) -> None:
        del self._sorted[bisect.bisect_left(self._sorted, (u.width, u.seq))]
        del self._by_age[u.seq]
        self._queued_rows -= len(u.rows)
        self._queued_tokens -= u.real

    def _drop_cancelled(self) -> None:
        dead = [u for u in self._by_age.values() if u.job.future.done()]  # cancelled, or failed
        for u in dead:
            self._dequeue(u)
        if dead:
            self._set_queue_gauge()
            if self._metrics is not None:
                self._metrics.dropped_rows.inc(sum(len(u.rows) for u in dead))

    def _full(self) -> bool:
        return self._queued_rows >= self.max_batch_rows or self._queued_tokens >= self.max_batch_tokens

    def _fits(self, rows: int, cost: int) -> bool:
        return rows <= self.max_batch_rows and cost <= self.max_batch_tokens

    def _take_batch(self) -> list[_Slot]:
        """Whole units from a window of the length-sorted queue around the oldest unit, least padding first.

        Each step adds the shorter or the longer neighbouring unit, whichever pads less (a longer unit widens
        every row already in), while the computed tokens (rows x width, less the prompt tokens shared) and the
        rows stay within budget, and stops before padding would exceed `pad_slack` of the real tokens: the
        units left out form the next micro-batch. An oldest unit over the budget alone gives its leading rows.
        """
        s = self._sorted
        anchor = next(iter(self._by_age.values()))
        if not self._fits(len(anchor.rows), anchor.cost(anchor.width)):
            return self._split(anchor)
        k = bisect.bisect_left(s, (anchor.width, anchor.seq))
        lo, hi = k, k + 1  # window [lo, hi)
        rows, width, real, saved = len(anchor.rows), anchor.width, anchor.real, anchor.saved
        while True:
            options: list[tuple[int, int, _Unit]] = []
            if lo > 0:
                u = s[lo - 1][2]  # narrower: pads to the window's width
                if self._fits(rows + len(u.rows), (rows + len(u.rows)) * width - saved - u.saved):
                    options.append((len(u.rows) * width - u.real, -1, u))
            if hi < len(s):
                u = s[hi][2]  # wider: widens the window
                if self._fits(rows + len(u.rows), (rows + len(u.rows)) * u.width - saved - u.saved):
                    options.append(((u.width - width) * rows + len(u.rows) * u.width - u.real, +1, u))
            if not options:
                break
            _, side, u = min(options, key=lambda o: (o[0], o[1]))
            new_width = max(width, u.width)
            if (rows + len(u.rows)) * new_width > (real + u.real) * (1 + self.pad_slack):
                break
            if side < 0:
                lo -= 1
            else:
                hi += 1
            rows, width, real, saved = rows + len(u.rows), new_width, real + u.real, saved + u.saved
        units = [x[2] for x in s[lo:hi]]
        for u in units:
            self._dequeue(u)
        self._set_queue_gauge()
        return [_Slot(u.job, i, len(u.job.rows[i].input_ids)) for u in units for i in u.rows]

    def _split(self, u: _Unit) -> list[_Slot]:
        """The leading rows of a unit too large for one micro-batch (whole principles first, as its rows are
        ordered); the rest stays queued with the unit's age."""
        take = 1
        while take < len(u.rows) and self._fits(
            take + 1, (take + 1) * u.width - _saved(u.job, u.rows[: take + 1], u.prefix)
        ):
            take += 1
        del self._sorted[bisect.bisect_left(self._sorted, (u.width, u.seq))]
        head, u.rows = u.rows[:take], u.rows[take:]
        real = u.real
        u.measure()  # the rest keeps its seq, so its place in age order
        bisect.insort(self._sorted, (u.width, u.seq, u))
        self._queued_rows -= take
        self._queued_tokens -= real - u.real
        self._set_queue_gauge()
        return [_Slot(u.job, i, len(u.job.rows[i].input_ids)) for i in head]

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._running and not self._by_age and not self._controls:
                    self._cond.wait()
                if not self._running:
                    return
                controls, self._controls = self._controls, []
                batch: list[_Slot] = []
                if not controls:
                    self._drop_cancelled()
                    if self._by_age:
                        deadline = next(iter(self._by_age.values())).enqueued + self.max_wait_s
                        while self._running and not self._full() and not self._controls:
                            left = deadline - time.monotonic()
                            if left <= 0:
                                break
                            self._cond.wait(left)
                        self._drop_cancelled()
                        if self._by_age:
                            batch = self._take_batch()
            for fn, fut in controls:
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn())
                    except BaseException as e:  # handed to the caller, who decides
                        fut.set_exception(e)
            if batch:
                self._run(batch)

    def _run(self, batch: list[_Slot]) -> None:
        rows = [p.job.rows[p.row] for p in batch]
        width = max(p.length for p in batch)
        real = sum(p.length for p in batch)
        t0 = time.perf_counter()
        try:
            scores = self._engine.score(rows)
        except Exception as e:
            logger.exception("micro-batch of %d rows failed", len(rows))
            for job in {id(p.job): p.job for p in batch}.values():
                if not job.future.done():
                    _settle(job.future, error=e)
            return
        self.batches += 1
        self.padded_tokens += width * len(rows)
        self.real_tokens += real
        if self._metrics is not None:
            self._metrics.forward_seconds.observe(time.perf_counter() - t0)
            self._metrics.batch_rows.observe(len(rows))
            self._metrics.batch_tokens.observe(real)
            self._metrics.batch_padded_tokens.observe(width * len(rows))
            self._metrics.prompt_tokens_shared.inc(self._engine.last_prefix_tokens_saved)
        for p, s in zip(batch, scores, strict=True):
            job = p.job
            if job.future.done():
                continue
            job.results[p.row] = s
            job.remaining -= 1
            if job.remaining == 0:
                _settle(job.future, result=job.results)
