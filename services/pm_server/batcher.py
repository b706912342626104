"""Dynamic batching (after text-embeddings-inference): bounded admission, one model thread.

Requests submit rows (one sequence x one adapter each) and get a `concurrent.futures.Future` of their
scores. One thread owns the engine: it waits up to `max_wait_s` for a micro-batch to fill, cuts it by a
token budget and a row cap from the length-sorted queue (anchored on the oldest row, so nothing starves, and
grown by least padding first),
and runs it. Control calls (adapter load/delete) run on the same thread between batches, so the engine is
never touched concurrently. Rows of requests whose future was cancelled (client gone) are dropped.
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
from typing import Any, TypeVar

from pm_server.engine import Row, ScoringEngine
from pm_server.errors import Overloaded, TooLarge
from pm_server.metrics import Metrics

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


@dataclass(eq=False)
class _Pending:
    seq: int
    job: _Job
    index: int
    length: int
    enqueued: float


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
        self._sorted: list[tuple[int, int, _Pending]] = []  # (length, seq, pending): length order
        self._by_age: dict[int, _Pending] = {}  # seq -> pending, insertion (= age) order
        self._queued_tokens = 0
        self._controls: list[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = []
        self._seq = itertools.count()
        self._running = False
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.padded_tokens = 0  # computed tokens, padding included (for the padding ratio)
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
            for _, _, p in self._sorted:
                if not p.job.future.done():
                    _settle(p.job.future, error=RuntimeError("server is shutting down"))
            self._sorted.clear()
            self._by_age.clear()
            self._queued_tokens = 0

    @property
    def queued_rows(self) -> int:
        return len(self._by_age)

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
        now = time.monotonic()
        with self._cond:
            if not self._running:
                raise RuntimeError("batcher is not running")
            if len(self._by_age) + len(rows) > self.max_queued_rows:
                raise Overloaded(
                    f"the scoring queue is full ({len(self._by_age)} rows waiting); retry later",
                    retry_after_s=max(1.0, self.max_wait_s * 10),
                )
            for i, r in enumerate(rows):
                p = _Pending(seq=next(self._seq), job=job, index=i, length=len(r.input_ids), enqueued=now)
                bisect.insort(self._sorted, (p.length, p.seq, p))
                self._by_age[p.seq] = p
                self._queued_tokens += p.length
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
            self._metrics.queue_rows.set(len(self._by_age))

    def _drop_cancelled(self) -> None:
        dead = [p for p in self._by_age.values() if p.job.future.done()]  # cancelled, or failed
        for p in dead:
            del self._by_age[p.seq]
            i = bisect.bisect_left(self._sorted, (p.length, p.seq))
            del self._sorted[i]
            self._queued_tokens -= p.length
        if dead:
            self._set_queue_gauge()
            if self._metrics is not None:
                self._metrics.dropped_rows.inc(len(dead))

    def _full(self) -> bool:
        return len(self._sorted) >= self.max_batch_rows or self._queued_tokens >= self.max_batch_tokens

    def _take_batch(self) -> list[_Pending]:
        """A window of the length-sorted queue around the oldest row, grown by least padding first.

        Each step adds the shorter or the longer neighbour, whichever pads less (a longer row widens every
        row already in), within the token and row budgets, and stops before padding would exceed
        `pad_slack` of the real tokens: the rows left out form the next micro-batch.
        """
        s = self._sorted
        oldest = next(iter(self._by_age.values()))
        k = bisect.bisect_left(s, (oldest.length, oldest.seq))
        lo, hi = k, k + 1  # window [lo, hi)
        width, real = oldest.length, oldest.length
        while hi - lo < self.max_batch_rows:
            n = hi - lo + 1
            options = []
            if lo > 0 and n * width <= self.max_batch_tokens:
                options.append((width - s[lo - 1][0], -1))
            if hi < len(s) and n * s[hi][0] <= self.max_batch_tokens:
                options.append(((s[hi][0] - width) * (n - 1), +1))
            if not options:
                break
            waste, side = min(options)
            length = s[lo - 1][0] if side < 0 else s[hi][0]
            new_width = max(width, length)
            if n * new_width > (real + length) * (1 + self.pad_slack):
                break
            if side < 0:
                lo -= 1
            else:
                hi += 1
            width, real = new_width, real + length
        batch = [x[2] for x in s[lo:hi]]
        del s[lo:hi]
        for p in batch:
            del self._by_age[p.seq]
            self._queued_tokens -= p.length
        self._set_queue_gauge()
        return batch

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._running and not self._by_age and not self._controls:
                    self._cond.wait()
                if not self._running:
                    return
                controls, self._controls = self._controls, []
                batch: list[_Pending] = []
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

    def _run(self, batch: list[_Pending]) -> None:
        rows = [p.job.rows[p.index] for p in batch]
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
            job.results[p.index] = s
            job.remaining -= 1
            if job.remaining == 0:
                _settle(job.future, result=job.results)
