"""A longer soak of the PM server under load: `morlaif serve` on the default adapters (or any base and
adapter root), N concurrent clients for as long as you like, then a table and JSON of what came back.

    .venv/bin/python scripts/soak.py --minutes 10 --clients 64
    .venv/bin/python scripts/soak.py --base smollm2 --adapter-root var/adapters-smollm2 --minutes 30

Every answered request is checked against the items scored one at a time before the load; overload must
show as 429 with Retry-After; the server's resident memory is sampled (a leak shows as growth over the
soak, not as a high start). The same load generator runs for 8 seconds in tests/pm_server/test_load.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import _rigs_path  # noqa: F401  (tests/ on sys.path: the rigs)

from morlaif_cli.up import wait_http_ok
from rigs.loadgen import drive, expected_scores, median_latency

ITEMS = [
    {
        "prompt": f"Question {i}: how should I {verb} a {noun}?",
        "response": f"Carefully {verb} the {noun}. " * (1 + i % 5),
    }
    for i, (verb, noun) in enumerate(
        [(v, n) for v in ("boil", "fix", "paint", "sell", "clean") for n in ("egg", "bike", "fence", "boat", "desk")]
    )
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="minilm")
    ap.add_argument("--adapter-root", type=Path, default=Path("adapters"))
    ap.add_argument("--principles", default="helpfulness,harmlessness,factuality,toxicity,bias")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--items-per-request", type=int, default=4)
    ap.add_argument("--max-queued-rows", type=int, default=None, help="the server's admission bound (default its own)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/soak.json"))
    args = ap.parse_args()
    principles = args.principles.split(",")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key = "soak-score-key-0123456789"
    env = {**os.environ, "MORLAIF_API_KEY": key, "MORLAIF_ADMIN_KEY": "soak-admin-key-0123456789"}
    if args.max_queued_rows:
        env["MORLAIF_MAX_QUEUED_ROWS"] = str(args.max_queued_rows)
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "morlaif", "serve", "--base", args.base, "--adapter-root", str(args.adapter_root)]
    proc = subprocess.Popen([*cmd, "--port", str(port)], env=env, stdout=subprocess.DEVNULL)
    try:
        err = wait_http_ok(url + "/readyz", 300, lambda: None if proc.poll() is None else "the server exited")
        if err:
            raise SystemExit(f"error: {err}")
        auth = {"Authorization": f"Bearer {key}"}
        expected = expected_scores(url, ITEMS, auth, principles)
        probe = {"items": ITEMS[:2], "principles": principles}
        idle = median_latency(url, probe, auth)
        report = asyncio.run(
            drive(url, ITEMS, expected, principles=principles, headers=auth, clients=args.clients,
                  seconds=args.minutes * 60, items_per_request=args.items_per_request, pid=proc.pid)
        )  # fmt: skip
        after = median_latency(url, probe, auth)
    finally:
        proc.terminate()
        proc.wait(30)
    summary = {**report.summary(), "idle_latency_before_s": round(idle, 3), "idle_latency_after_s": round(after, 3)}
    for k, v in summary.items():
        print(f"{k:<28} {v}")
    if report.examples:
        print("first failures:", *report.examples, sep="\n  ")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")
    bad = report.wrong + report.server_errors + report.transport_errors + report.throttled_without_retry_after
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
