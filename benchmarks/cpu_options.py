"""What the CPU-side knobs are worth for a scoring forward, measured before any is kept in the engine.

Times one forward of the base (`--rows` x `--tokens`, the engine's micro-batch shape) under: torch.no_grad
vs torch.inference_mode (the engine's), eager vs SDPA attention (the engine's), 1 thread vs all threads,
int8 dynamic quantisation of the Linear layers, and torch.compile. Int8 changes the numbers, so with
`--adapter-root` it also scores a default adapter's validation pairs both ways: pair accuracy and the
largest score change. Prints a table, writes JSON.

    python benchmarks/cpu_options.py                        # MiniLM-L6
    python benchmarks/cpu_options.py --base smollm2 --rows 8 --no-compile
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch

from pm_server.model.base import load_base


def _time(fn, repeats: int) -> float:
    fn()  # warm-up (and compilation)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _int8(model: torch.nn.Module) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)


def accuracy_check(base_name: str, root: Path, principle: str, limit: int) -> dict:
    """Pair accuracy of `principle`'s package on its validation pairs, fp32 and int8."""
    from pm_server.training.evaluation import PackageScorer, accuracy
    from pm_server.training.pairs import package_pairs

    scorer = PackageScorer(load_base(base_name), root)
    pkg = scorer.load(principle)
    _, val = package_pairs(pkg.manifest.provenance, principle)  # as pm train read and split them
    val = val[:limit]
    fp32 = scorer.pair_scores(principle, val)
    scorer.engine._model = _int8(scorer.engine._model)  # the engine's PEFT model, every Linear in int8
    scorer.engine._regroup()
    q = scorer.pair_scores(principle, val)
    return {
        "principle": principle,
        "pairs": len(val),
        "fp32_accuracy": accuracy(fp32[:, 0], fp32[:, 1]).value,
        "int8_accuracy": accuracy(q[:, 0], q[:, 1]).value,
        "max_abs_score_change": float((fp32 - q).abs().max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="minilm")
    ap.add_argument("--rows", type=int, default=32, help="rows per forward (the engine's micro-batch)")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to compile)")
    ap.add_argument("--adapter-root", type=Path, default=None, help="with int8: check accuracy on this root")
    ap.add_argument("--principle", default="factuality")
    ap.add_argument("--pairs", type=int, default=200, help="validation pairs for the accuracy check")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu_options.json"))
    args = ap.parse_args()

    base = load_base(args.base)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 5000, (args.rows, args.tokens), generator=g)
    kw = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    ref = None

    def run(model, ctx=torch.inference_mode):
        def f():
            with ctx():
                return model(**kw).logits

        return f

    options: list[tuple[str, object]] = [("inference_mode, sdpa (the engine)", run(base.model))]
    options.append(("no_grad", run(base.model, torch.no_grad)))
    eager = copy.deepcopy(base.model)
    eager.config._attn_implementation = "eager"
    options.append(("eager attention", run(eager)))
    options.append(("int8 dynamic Linear", run(_int8(base.model))))
    if not args.no_compile:
        options.append(("torch.compile", run(torch.compile(copy.deepcopy(base.model), dynamic=False))))
    threads = torch.get_num_threads()
    rows = []
    for name, fn in options:
        t = _time(fn, args.repeats)
        out = fn()
        if ref is None:
            ref, t_ref = out, t
        rows.append(
            {"option": name, "seconds": t, "speedup": t_ref / t, "max_abs_diff": float((out - ref).abs().max())}
        )
    torch.set_num_threads(1)
    t1 = _time(options[0][1], args.repeats)
    torch.set_num_threads(threads)
    rows.append({"option": "1 thread", "seconds": t1, "speedup": t_ref / t1, "max_abs_diff": 0.0})

    print(f"base={args.base} {args.rows} rows x {args.tokens} tokens, torch={torch.__version__}, {threads} threads")
    print(f"{'option':<36} {'s/forward':>9} {'vs engine':>9} {'max |diff|':>11}")
    for r in rows:
        print(f"{r['option']:<36} {r['seconds']:>9.3f} {r['speedup']:>8.2f}x {r['max_abs_diff']:>11.2e}")
    result = {"meta": {"base": args.base, "rows": args.rows, "tokens": args.tokens, "threads": threads,
                       "torch": torch.__version__, "machine": platform.machine()}, "options": rows}  # fmt: skip
    if args.adapter_root is not None:
        acc = accuracy_check(args.base, args.adapter_root, args.principle, args.pairs)
        result["int8_accuracy"] = acc
        print(
            f"int8 on {acc['principle']}'s {acc['pairs']} validation pairs: accuracy {acc['fp32_accuracy']:.3f} "
            f"(fp32) -> {acc['int8_accuracy']:.3f} (int8), largest score change {acc['max_abs_score_change']:.3f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
