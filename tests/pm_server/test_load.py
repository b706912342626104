"""Load: 64 concurrent clients against a real `morlaif serve` process for a fixed time (tiny model, a
small admission bound so that overload happens). Every answered request is right, overload is a 429 with
Retry-After (no timeouts, no 5xx), resident memory stays bounded, and the idle latency comes back after."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from morlaif_cli.up import wait_http_ok
from rigs.loadgen import drive, expected_scores, median_latency, rss_mb

API_KEY = "load-score-key-0123456789"
PRINCIPLES = ["factuality", "harmlessness", "helpfulness"]
ITEMS = [
    {
        "prompt": f"Question {i}: how do I {verb} a {noun}?",
        "response": f"To {verb} a {noun}, start slowly. " * (1 + i % 4),
    }
    for i, (verb, noun) in enumerate(
        [(v, n) for v in ("boil", "fix", "paint", "sell") for n in ("egg", "bike", "fence", "boat")]
    )
]


@pytest.fixture
def served(tiny_encoder_dir, encoder_root, unused_port):
    env = {
        **os.environ,
        "MORLAIF_API_KEY": API_KEY,
        "MORLAIF_ADMIN_KEY": "load-admin-key-0123456789",
        "MORLAIF_MAX_QUEUED_ROWS": "96",  # 8 requests' rows: 64 clients overload it
        "MORLAIF_MAX_WAIT_MS": "5",
    }
    url = f"http://127.0.0.1:{unused_port}"
    cmd = [sys.executable, "-m", "morlaif", "serve", "--base", str(tiny_encoder_dir)]
    cmd += ["--adapter-root", str(encoder_root), "--port", str(unused_port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        err = wait_http_ok(url + "/readyz", 120, lambda: None if proc.poll() is None else "the server exited")
        assert err is None, err
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(30)


def test_64_clients_get_right_answers_or_429_and_the_server_recovers(served):
    url, proc = served
    auth = {"Authorization": f"Bearer {API_KEY}"}
    expected = expected_scores(url, ITEMS, auth, PRINCIPLES)
    probe = {"items": ITEMS[:2], "principles": PRINCIPLES}
    idle = median_latency(url, probe, auth)
    report = asyncio.run(
        drive(url, ITEMS, expected, principles=PRINCIPLES, headers=auth, clients=64, seconds=8.0, pid=proc.pid)
    )
    s = report.summary()
    print("load:", s)
    assert report.wrong == 0 and report.server_errors == 0 and report.transport_errors == 0, report.examples
    assert report.client_errors == 0 and report.throttled_without_retry_after == 0, report.examples
    assert report.ok > 50 and report.throttled > 0, s  # both answered and refused requests happened
    assert s["rss_growth_mb"] < 400, s  # a leak would grow with every request; the model is ~10 MB
    afters = [median_latency(url, probe, auth) for _ in range(3)]
    print("idle latency before", idle, "after", afters)
    assert min(afters) < max(3 * idle, idle + 0.2), (idle, afters)
    assert proc.poll() is None and rss_mb(proc.pid)[0] > 0
