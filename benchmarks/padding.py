"""Padding: computed tokens over real tokens, for the batcher's length-sorted micro-batches on HH-RLHF lengths.

Real (prompt, response) pairs from ../shared/data/hh-rlhf (both responses of each pair), encoded with the
base's template as the server does, are sent by concurrent clients as PPO-like requests (items x principles
rows) to a real Batcher over a real engine (the base with random adapters on the upper third of its
layers). For each scenario it reports the ratio the batcher achieved and the ratio of cutting the same
requests into micro-batches in arrival order (what a batcher without length sorting pays). Prints a table
and writes JSON; it asserts nothing.

    python benchmarks/padding.py                    # MiniLM, 1/4/16 clients x 64 items x 4 principles
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
from pathlib import Path

import _rigs_path  # noqa: F401  (tests/ on sys.path: the rigs)

from morlaif.jsonl import iter_objects
from morlaif.store.importers import split_hh
from pm_server.model.base import load_base
from pm_server.model.engine import Row, ScoringEngine
from pm_server.model.template import TemplateEncoder
from pm_server.serving.batcher import Batcher
from pm_server.serving.config import ServerSettings
from rigs.pm_packages import make_random_package

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf" / "harmless-base-dev.jsonl.gz"


def hh_pairs(path: Path, n: int, seed: int) -> list[tuple[str, str]]:
    """n (prompt, response) pairs: both responses of randomly drawn HH comparisons."""
    out = []
    for _, obj in iter_objects(path):
        parts = split_hh(obj["chosen"], obj["rejected"])
        if parts is not None:
            out += [(parts[0], parts[1]), (parts[0], parts[2])]
    random.Random(seed).shuffle(out)
    return out[:n]


def arrival_order_ratio(requests: list[list[Row]], max_tokens: int, max_rows: int) -> float:
    """Padded over real tokens when each request's rows are cut in order into budget-sized micro-batches."""
    padded = real = 0
    for rows in requests:
        batch: list[int] = []
        for r in rows + [None]:  # type: ignore[list-item]
            n = len(r.input_ids) if r is not None else 0
            width = max([*batch, n])
            if r is None or len(batch) + 1 > max_rows or width * (len(batch) + 1) > max_tokens:
                if batch:
                    padded += max(batch) * len(batch)
                    real += sum(batch)
                batch = []
            if r is not None:
                batch.append(n)
    return padded / real


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="minilm")
    ap.add_argument("--clients", default="1,4,16", help="comma-separated numbers of concurrent clients")
    ap.add_argument("--items", type=int, default=64, help="items per request (a PPO batch)")
    ap.add_argument("--principles", type=int, default=4)
    ap.add_argument("--requests", type=int, default=2, help="requests per client")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/padding.json"))
    args = ap.parse_args()
    if not DATA.is_file():
        raise SystemExit(f"{DATA} is absent (the preference data beside the project)")
    settings = ServerSettings(insecure_dev=True)  # the server's default budgets
    base = load_base(args.base)
    enc = TemplateEncoder(base.tokenizer, base.default_template)
    counts = [int(x) for x in args.clients.split(",")]
    pairs = hh_pairs(DATA, max(counts) * args.requests * args.items, seed=0)
    names = [f"p{i}" for i in range(args.principles)]
    n_layers = base.model.config.num_hidden_layers
    upper = list(range(n_layers - max(1, n_layers // 3), n_layers))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        engine = ScoringEngine(base)
        for i, n in enumerate(names):
            make_random_package(Path(tmp), base, n, "v1", seed=i, scale=0.05, layers_to_transform=upper)
            engine.load_adapter(Path(tmp) / n / "v1", n)
        encoded = [enc.encode(p, r) for p, r in pairs]
        for clients in counts:
            requests = [
                [
                    Row(e.input_ids, e.token_type_ids, n)
                    for e in encoded[k * args.items : (k + 1) * args.items]
                    for n in names
                ]
                for k in range(clients * args.requests)
            ]
            batcher = Batcher(
                engine,
                max_batch_tokens=settings.max_batch_tokens,
                max_batch_rows=settings.max_batch_rows,
                max_wait_s=settings.max_wait_ms / 1000,
                max_queued_rows=sum(len(r) for r in requests) + 1,
            )
            batcher.start()
            t0 = time.perf_counter()

            def client(c: int, b: Batcher = batcher, reqs: list[list[Row]] = requests, n: int = clients) -> None:
                for k in range(c, len(reqs), n):
                    b.submit(reqs[k]).result()

            threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seconds = time.perf_counter() - t0
            batcher.stop()
            real_tokens = sum(len(r.input_ids) for rows in requests for r in rows)
            assert batcher.real_tokens == real_tokens
            results.append(
                {
                    "clients": clients,
                    "requests": len(requests),
                    "rows": sum(len(r) for r in requests),
                    "batches": batcher.batches,
                    "mean_real_tokens_per_row": real_tokens / sum(len(r) for r in requests),
                    "sorted_ratio": batcher.padded_tokens / batcher.real_tokens,
                    "arrival_order_ratio": arrival_order_ratio(
                        requests, settings.max_batch_tokens, settings.max_batch_rows
                    ),
                    "seconds": seconds,
                }
            )
    print(f"base={args.base}, HH-RLHF harmless-base pairs, {args.items} items x {args.principles} principles a request")
    print(f"{'clients':>7} {'rows':>6} {'batches':>7} {'tokens/row':>10} {'sorted':>7} {'arrival order':>13}")
    for r in results:
        print(
            f"{r['clients']:>7} {r['rows']:>6} {r['batches']:>7} {r['mean_real_tokens_per_row']:>10.1f} "
            f"{r['sorted_ratio']:>7.3f} {r['arrival_order_ratio']:>13.3f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"base": args.base, "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
