r"""Which base should the PMs share? MiniLM-L6 (encoder, 22M) against SmolLM2-135M (decoder, from its GGUF).

For each base: train one principle's PM with the same data, split, settings and seed (`morlaif pm train`'s
code), then measure validation accuracy (95% interval), training time, scoring throughput of the trained
package (sequences/s in eval mode, batches of 32) and parameter count. Run it on an otherwise idle machine:
the times are wall-clock. Prints a table and writes JSON (no assertions).

    python benchmarks/base_comparison.py                                  # factuality, 800 pairs, 1 epoch
    python benchmarks/base_comparison.py --data ../shared/data/sycophancy_anthropic.jsonl --principle sycophancy
    # HH-RLHF helpful at the default window, bfloat16 autocast as the default PMs are trained, scored on the
    # held-out split the served reward is tested on (scripts/train_default_adapters.sh makes var/default-data)
    python benchmarks/base_comparison.py --principle helpfulness --max-length 256 --bf16 --limit 1000 \
        --data var/default-data/hh-helpful-base/train.jsonl --data var/default-data/hh-helpful-rs/train.jsonl \
        --eval-data var/default-data/hh-helpful-base/eval.jsonl --eval-data var/default-data/hh-helpful-rs/eval.jsonl

With `--eval-data`, the held-out accuracy (95% Wilson interval) and the accuracy where the better reply is the
shorter one are measured on those pairs (their prompts must not be in `--data`), and scoring throughput on them.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from pm_server.model.base import load_base
from pm_server.training.evaluation import Accuracy, PackageScorer, labelled_margins, length_preference
from pm_server.training.pairs import Pair, read_pairs
from pm_server.training.trainer import TrainConfig, train_pm


def _cell(v: object) -> str:
    """A table cell: an accuracy dict as `0.571 [0.537, 0.605] (n=800)`."""
    if isinstance(v, dict) and "accuracy" in v:
        return f"{v['accuracy']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}] (n={v['n']})"
    return str(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data", action="append", help="Training pair file (repeatable; default: TruthfulQA in ../shared/data)."
    )
    ap.add_argument("--eval-data", action="append", default=[], help="Held-out pair file to score (repeatable).")
    ap.add_argument("--eval-limit", type=int, default=600, help="Held-out pairs scored (a seeded sample).")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast for training (pm train --bf16).")
    ap.add_argument("--principle", default="factuality")
    ap.add_argument("--bases", default="minilm,smollm2", help="Comma-separated bases to compare.")
    ap.add_argument("--limit", type=int, default=800, help="Pairs used (a seeded sample of the file).")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=96)
    ap.add_argument("--lr", type=float, default=None, help="Learning rate (default: TrainConfig's).")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's).")
    ap.add_argument("--out", default="benchmarks/results/base_comparison.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    files = args.data or ["../shared/data/factuality_truthfulqa.jsonl"]
    pairs = [p for f in files for p in read_pairs(f) if p.principle == args.principle]
    pairs = random.Random(0).sample(pairs, min(args.limit, len(pairs)))
    held: list[Pair] = [p for f in args.eval_data for p in read_pairs(f)]
    held = random.Random(1).sample(held, min(args.eval_limit, len(held)))
    if shared := {p.prompt for p in held} & {p.prompt for p in pairs}:
        why = "the held-out figures are not held out"
        print(f"warning: {len(shared)} --eval-data prompts are also in --data: {why}", file=sys.stderr)
    rows = []
    for name in args.bases.split(","):
        t0 = time.perf_counter()
        base = load_base(name, max_length=args.max_length, device="cpu")
        load_s = time.perf_counter() - t0
        n_params = sum(p.numel() for p in base.model.parameters())
        extra = {"learning_rate": args.lr} if args.lr else {}
        cfg = TrainConfig(
            base=name, max_length=args.max_length, epochs=args.epochs, device="cpu", bf16=args.bf16, **extra
        )
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            res = train_pm(
                pairs,
                principle=args.principle,
                config=cfg,
                out_root=Path(tmp) / "adapters",
                run_dir=Path(tmp) / "run",
                version="bench",
                base=base,
                progress=True,
            )
            train_s = time.perf_counter() - t0
            scorer = PackageScorer(load_base(name, max_length=args.max_length, device="cpu"), Path(tmp) / "adapters")
            scorer.load(args.principle)
            sample = (held or pairs)[:128]
            scorer.max_rows = 32
            t0 = time.perf_counter()
            scorer.raw(args.principle, [p.prompt for p in sample], [p.chosen for p in sample])
            score_s = time.perf_counter() - t0
            held_out: dict = {}
            if held:
                scores = scorer.pair_scores(args.principle, held)
                lp = length_preference(scores, held)
                held_out = {
                    "held_out": Accuracy.of(labelled_margins(scores, held)).to_dict(),
                    "held_out_shorter_chosen": lp["shorter_chosen"],
                    "held_out_score_length_corr": lp["score_length_corr"],
                }
        m = res.metrics
        rows.append(
            {
                "base": name,
                "params_m": round(n_params / 1e6, 1),
                "load_s": round(load_s, 1),
                "train_pairs": m["train_pairs"],
                "val_pairs": m["val_pairs"],
                "val_accuracy": m["val_accuracy"],
                "val_accuracy_ci95": m["val_accuracy_ci95"],
                "train_s": round(train_s, 1),
                "train_pairs_per_s": round(m["train_pairs"] * res.metrics["epochs_run"] / train_s, 2),
                "score_seqs_per_s": round(len(sample) / score_s, 1),
                **held_out,
            }
        )
    print(f"\n{args.principle}: {len(pairs)} pairs, {args.epochs} epoch(s), max_length {args.max_length}, CPU")
    cols = ["base", "params_m", "val_accuracy", "val_accuracy_ci95", "train_s", "train_pairs_per_s", "score_seqs_per_s"]
    if held:
        cols += ["held_out", "held_out_shorter_chosen"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(_cell(r[c]) for c in cols))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.platform(), "threads": torch.get_num_threads(), "args": vars(args)}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
