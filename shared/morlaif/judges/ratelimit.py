"""Requests-per-minute and tokens-per-minute limits, as evenly spaced admissions (a GCRA / leaky bucket).

Spacing rather than a refilling bucket keeps the measured rate at the setting over any window longer than
a few requests, with no burst at the start.
"""

from __future__ import annotations

import asyncio
import time

__all__ = ["RateLimiter"]


class RateLimiter:
    def __init__(self, *, requests_per_minute: float | None = None, tokens_per_minute: float | None = None) -> None:
        for name, v in (("requests_per_minute", requests_per_minute), ("tokens_per_minute", tokens_per_minute)):
            if v is not None and v <= 0:
                raise ValueError(f"{name} must be > 0")
        self.rpm = requests_per_minute
        self.tpm = tokens_per_minute
        self._next = 0.0  # monotonic time the next request may start
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"RateLimiter(requests_per_minute={self.rpm}, tokens_per_minute={self.tpm})"

    async def acquire(self, tokens: int = 0) -> None:
        """Wait for this request's turn; it then holds the limiter for 60/rpm s and tokens*60/tpm s."""
        if self.rpm is None and self.tpm is None:
            return
        async with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            gap = 0.0
            if self.rpm is not None:
                gap = max(gap, 60.0 / self.rpm)
            if self.tpm is not None:
                gap = max(gap, tokens * 60.0 / self.tpm)
            self._next = start + gap
        if start > now:
            await asyncio.sleep(start - now)
