"""A bounded load generator for the PM server: N concurrent asyncio clients for a fixed time.

Every client loops until the deadline: one `/v1/score` request of a few items drawn from a fixed pool,
whose expected raw scores are known (scored one at a time before the load). It records what came back:
correct answers, wrong answers (any score off by more than `tolerance`), 429s with and without a
Retry-After header (honoured before the next request), other 4xx, 5xx and transport errors (timeouts,
resets). Meanwhile the server's resident memory is sampled from /proc when its pid is given.

Used by `tests/pm_server/test_load.py` (seconds) and `scripts/soak.py` (minutes to hours).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

__all__ = ["LoadReport", "drive", "expected_scores", "rss_mb"]


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size of process `pid` in MiB, from /proc/<pid>/status."""
    cur = peak = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            cur = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return cur, peak


@dataclass
class LoadReport:
    clients: int
    seconds: float
    ok: int = 0
    wrong: int = 0
    throttled: int = 0  # 429 with a Retry-After header
    throttled_without_retry_after: int = 0
    client_errors: int = 0  # other 4xx
    server_errors: int = 0  # 5xx
    transport_errors: int = 0  # timeouts, resets, refused
    latencies: list[float] = field(default_factory=list)  # of the answered (200) requests
    rss_start_mb: float = 0.0
    rss_peak_mb: float = 0.0
    examples: list[str] = field(default_factory=list)  # the first few failures, for the message

    @property
    def requests(self) -> int:
        return (
            self.ok
            + self.wrong
            + self.throttled
            + self.throttled_without_retry_after
            + self.client_errors
            + self.server_errors
            + self.transport_errors
        )

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(q * len(xs)))]

    def summary(self) -> dict[str, Any]:
        return {
            "clients": self.clients,
            "seconds": round(self.seconds, 1),
            "requests": self.requests,
            "answered_correctly": self.ok,
            "wrong": self.wrong,
            "429_with_retry_after": self.throttled,
            "429_without_retry_after": self.throttled_without_retry_after,
            "other_4xx": self.client_errors,
            "5xx": self.server_errors,
            "transport_errors": self.transport_errors,
            "p50_s": round(self.percentile(0.5), 3),
            "p99_s": round(self.percentile(0.99), 3),
            "answered_per_s": round(self.ok / self.seconds, 1) if self.seconds else 0.0,
            "rss_start_mb": round(self.rss_start_mb, 1),
            "rss_peak_mb": round(self.rss_peak_mb, 1),
            "rss_growth_mb": round(self.rss_peak_mb - self.rss_start_mb, 1),
        }


def expected_scores(
    url: str, items: Sequence[dict[str, str]], headers: dict[str, str], principles: Sequence[str]
) -> list[dict[str, float]]:
    """Each item's raw scores, asked one item at a time (the reference under load)."""
    out = []
    with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
        for it in items:
            r = c.post("/v1/score", json={"items": [it], "principles": list(principles)})
            r.raise_for_status()
            out.append(r.json()["results"][0]["raw_scores"])
    return out


async def drive(
    url: str,
    items: Sequence[dict[str, str]],
    expected: Sequence[dict[str, float]],
    *,
    principles: Sequence[str],
    headers: dict[str, str],
    clients: int = 64,
    seconds: float = 10.0,
    items_per_request: int = 4,
    timeout: float = 30.0,
    pid: int | None = None,
    tolerance: float = 1e-4,
    seed: int = 0,
) -> LoadReport:
    """Run `clients` concurrent clients against `url` for `seconds`; see the module docstring."""
    report = LoadReport(clients=clients, seconds=seconds)
    if pid is not None:
        report.rss_start_mb, _ = rss_mb(pid)
        report.rss_peak_mb = report.rss_start_mb
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    def note(msg: str) -> None:
        if len(report.examples) < 5:
            report.examples.append(msg)

    async def client(k: int, http: httpx.AsyncClient) -> None:
        rng = random.Random(seed * 1000 + k)
        while time.monotonic() < deadline:
            idx = [rng.randrange(len(items)) for _ in range(items_per_request)]
            body = {"items": [items[i] for i in idx], "principles": list(principles)}
            t0 = time.monotonic()
            try:
                r = await http.post("/v1/score", json=body)
            except httpx.HTTPError as e:
                report.transport_errors += 1
                note(f"{type(e).__name__}: {e}")
                continue
            if r.status_code == 200:
                got = [x["raw_scores"] for x in r.json()["results"]]
                bad = [
                    (i, p)
                    for i, g in zip(idx, got, strict=True)
                    for p in principles
                    if abs(g[p] - expected[i][p]) > tolerance
                ]
                if bad:
                    report.wrong += 1
                    note(f"wrong score for item {bad[0][0]} principle {bad[0][1]}")
                else:
                    report.ok += 1
                    report.latencies.append(time.monotonic() - t0)
            elif r.status_code == 429:
                after = r.headers.get("retry-after")
                if after is None:
                    report.throttled_without_retry_after += 1
                    await asyncio.sleep(0.1)
                else:
                    report.throttled += 1
                    await asyncio.sleep(min(float(after), max(0.0, deadline - time.monotonic())))
            elif r.status_code >= 500:
                report.server_errors += 1
                note(f"{r.status_code}: {r.text[:200]}")
            else:
                report.client_errors += 1
                note(f"{r.status_code}: {r.text[:200]}")

    async def sample_rss() -> None:
        assert pid is not None
        while time.monotonic() < deadline:
            cur, _ = rss_mb(pid)
            report.rss_peak_mb = max(report.rss_peak_mb, cur)
            await asyncio.sleep(0.25)

    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout, limits=limits) as http:
        tasks = [client(k, http) for k in range(clients)]
        if pid is not None:
            tasks.append(sample_rss())
        t0 = time.monotonic()
        await asyncio.gather(*tasks)
        report.seconds = time.monotonic() - t0
    return report


def median_latency(url: str, body: dict[str, Any], headers: dict[str, str], n: int = 5) -> float:
    """Median seconds of `n` sequential requests (the idle latency, before and after load)."""
    ts = []
    with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
        for _ in range(n):
            t0 = time.monotonic()
            c.post("/v1/score", json=body).raise_for_status()
            ts.append(time.monotonic() - t0)
    return statistics.median(ts)
