"""End to end over HTTP against the in-process engine: throughput and latency with 1, 8 and 32 clients.

A real `morlaif serve` process (the base with random adapters on the upper third of its layers, in a
temporary adapter root, the server's default batching settings and `--dtype`) is driven by concurrent asyncio clients,
each sending /v1/score requests of `--items` (prompt, response) pairs for every principle, one after the
other, for `--seconds`. The same requests then go, from as many threads, straight to an in-process
Batcher over a ScoringEngine with the same adapters and settings (encoding included, HTTP and JSON not).
Prints principle-scores per second, p50 and p99 request latency and the HTTP / in-process ratio; writes
JSON. Client and server share this machine's cores, as they would on one node.

    python benchmarks/http_throughput.py                  # MiniLM, 4 principles, 1/8/32 clients
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import _rigs_path  # noqa: F401  (tests/ on sys.path: the rigs)
import httpx
from score_throughput import WORDS  # the same vocabulary as the engine benchmark (this folder)

from pm_server.model.base import DTYPES, load_base
from pm_server.model.engine import Row, ScoringEngine
from pm_server.model.template import TemplateEncoder
from pm_server.serving.batcher import Batcher
from pm_server.serving.config import ServerSettings
from rigs.pm_packages import make_random_package

PRINCIPLES = ["helpfulness", "harmlessness", "factuality", "sycophancy", "toxicity", "empathy", "relevance"]


def items(n: int, seed: int) -> list[tuple[str, str]]:
    import random

    rng = random.Random(seed)
    return [
        (" ".join(rng.choices(WORDS, k=rng.randint(20, 60))), " ".join(rng.choices(WORDS, k=rng.randint(10, 80))))
        for _ in range(n)
    ]


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def http_run(url: str, clients: int, seconds: float, batches: list[list[tuple[str, str]]], principles):
    latencies: list[float] = []
    scores = 0
    stop = time.monotonic() + seconds

    async def client(c: int, http: httpx.AsyncClient) -> None:
        nonlocal scores
        k = c
        while time.monotonic() < stop:
            body = {"items": [{"prompt": p, "response": r} for p, r in batches[k % len(batches)]],
                    "principles": principles}  # fmt: skip
            t0 = time.perf_counter()
            res = await http.post(url + "/v1/score", json=body)
            res.raise_for_status()
            latencies.append(time.perf_counter() - t0)
            scores += len(body["items"]) * len(principles)
            k += clients

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c, http) for c in range(clients)))
        wall = time.perf_counter() - t0
    return scores / wall, latencies


def inprocess_run(batcher: Batcher, enc: TemplateEncoder, clients: int, seconds: float, batches, principles):
    latencies: list[float] = []
    scores = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(c: int) -> None:
        k = c
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            encoded = [enc.encode(p, r) for p, r in batches[k % len(batches)]]
            rows = [Row(e.input_ids, e.token_type_ids, n) for e in encoded for n in principles]
            batcher.submit(rows).result()
            with lock:
                latencies.append(time.perf_counter() - t0)
                scores[0] += len(rows)
            k += clients

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return scores[0] / (time.perf_counter() - t0), latencies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="minilm")
    ap.add_argument("--principles", type=int, default=4)
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--items", type=int, default=8, help="items per request")
    ap.add_argument("--seconds", type=float, default=20.0, help="duration of each measurement")
    ap.add_argument("--port", type=int, default=8791)
    ap.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPES,
        help="server and in-process (`serve --dtype`)",
    )
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/http_throughput.json"))
    args = ap.parse_args()
    principles = PRINCIPLES[: args.principles]
    counts = [int(x) for x in args.clients.split(",")]
    batches = [items(args.items, seed=s) for s in range(64)]
    base = load_base(args.base)  # float32, as packages are trained
    n_layers = base.model.config.num_hidden_layers
    upper = list(range(n_layers - max(1, n_layers // 3), n_layers))
    settings = ServerSettings(insecure_dev=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i, n in enumerate(principles):
            make_random_package(root, base, n, "v1", seed=i, scale=0.05, layers_to_transform=upper)
        env = {**os.environ, "MORLAIF_ADAPTER_ROOT": str(root), "MORLAIF_BASE_MODEL": args.base,
               "MORLAIF_DTYPE": args.dtype}  # fmt: skip
        server = subprocess.Popen(
            [sys.executable, "-m", "morlaif", "serve", "--insecure-dev", "--port", str(args.port),
             "--log-level", "warning"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        url = f"http://127.0.0.1:{args.port}"
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                try:
                    if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None:
                    raise SystemExit(f"the server exited with {server.returncode}")
                time.sleep(0.5)
            for clients in counts:
                asyncio.run(http_run(url, clients, 2.0, batches, principles))  # warm-up
                rate, lat = asyncio.run(http_run(url, clients, args.seconds, batches, principles))
                results.append({"clients": clients, "path": "http", "scores_per_s": rate,
                                "p50_s": statistics.median(lat), "p99_s": percentile(lat, 0.99),
                                "requests": len(lat)})  # fmt: skip
        finally:
            server.terminate()
            server.wait(30)

        engine = ScoringEngine(load_base(args.base, dtype=args.dtype))
        for n in principles:
            engine.load_adapter(root / n / "v1", n)
        enc = TemplateEncoder(base.tokenizer, base.default_template)
        batcher = Batcher(
            engine,
            max_batch_tokens=settings.max_batch_tokens,
            max_batch_rows=settings.max_batch_rows,
            max_wait_s=settings.max_wait_ms / 1000,
            max_queued_rows=settings.max_queued_rows,
        )
        batcher.start()
        try:
            for clients in counts:
                inprocess_run(batcher, enc, clients, 2.0, batches, principles)  # warm-up
                rate, lat = inprocess_run(batcher, enc, clients, args.seconds, batches, principles)
                results.append({"clients": clients, "path": "in-process", "scores_per_s": rate,
                                "p50_s": statistics.median(lat), "p99_s": percentile(lat, 0.99),
                                "requests": len(lat)})  # fmt: skip
        finally:
            batcher.stop()

    dtype = str(engine.base.dtype).removeprefix("torch.")
    print(f"base={args.base} ({dtype}), {args.principles} principles on the upper third, {args.items} items a request")
    print(f"{'clients':>7} {'path':>10} {'scores/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'HTTP/in-process':>15}")
    by = {(r["clients"], r["path"]): r for r in results}
    for c in counts:
        for path in ("http", "in-process"):
            r = by[(c, path)]
            ratio = by[(c, "http")]["scores_per_s"] / by[(c, "in-process")]["scores_per_s"]
            print(
                f"{c:>7} {path:>10} {r['scores_per_s']:>9.1f} {1000 * r['p50_s']:>8.0f} {1000 * r['p99_s']:>8.0f} "
                f"{(f'{ratio:.2f}x' if path == 'http' else ''):>15}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"base": args.base, "dtype": dtype, "principles": principles, "results": results}, indent=2)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
