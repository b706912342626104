"""How much context, and how much length bias: one principle's PM trained at several context lengths and with
several length treatments, on the same pairs, split, settings and seed (`morlaif pm train`'s code).

For every (max_length, variant) it prints and writes: validation accuracy with its 95% interval, accuracy on
the pairs whose chosen reply is the shorter one, the share of pairs where the PM prefers the longer reply,
the correlation of score with length, per data source, the training time and the scoring speed; and, per
max_length, the share of pairs the window cuts. Variants:

* ``plain``: the Bradley-Terry loss alone;
* ``balance``: length-balanced pair weights (`TrainConfig.length_balance`);
* ``balance+penalty``: also the ODIN-style decorrelation term (`TrainConfig.length_penalty`, --penalty).

    python benchmarks/pm_length_context.py --principle helpfulness --limit 1600 \
        --data helpfulness=../shared/data/hh-rlhf/helpful-base-dev.jsonl.gz \
        --data ../shared/data/helpfulness_qafeedback.jsonl --lengths 128,256 --variants plain,balance

Run it on an otherwise idle machine: the times are wall-clock. No assertions; JSON in --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pm_server.model.base import load_base
from pm_server.model.template import TemplateEncoder
from pm_server.training.evaluation import PackageScorer, fmt, principle_report
from pm_server.training.pairs import load_pairs, select_pairs, split_by_prompt
from pm_server.training.trainer import TrainConfig, train_pm

VARIANTS = {
    "plain": {"length_balance": False},
    "balance": {"length_balance": True},
    "balance+penalty": {"length_balance": True, "length_penalty": None},  # None: --penalty
}


def cut_share(base_name: str, pairs: list, length: int) -> float:
    """Share of responses (with their prompts) longer than `length` tokens."""
    base = load_base(base_name, max_length=length, device="cpu")
    enc = TemplateEncoder(base.tokenizer, base.default_template.model_copy(update={"max_length": length}))
    cut = sum(enc.encode(p.prompt, r).truncated for p in pairs for r in (p.chosen, p.rejected))
    return cut / (2 * len(pairs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--principle", required=True)
    ap.add_argument("--data", action="append", required=True, help="Data spec (PATH or PRINCIPLE=PATH), repeatable.")
    ap.add_argument("--base", default="minilm")
    ap.add_argument("--lengths", default="128,256,512")
    ap.add_argument("--variants", default="plain,balance,balance+penalty")
    ap.add_argument("--penalty", type=float, default=1.0, help="length_penalty of the balance+penalty variant.")
    ap.add_argument("--limit", type=int, default=None, help="Pairs used (a seeded sample).")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast in training.")
    ap.add_argument("--cut-only", action="store_true", help="Only measure the share of pairs each length cuts.")
    ap.add_argument("--out", default="benchmarks/results/pm_length_context.json")
    args = ap.parse_args()
    pairs, sources = load_pairs(args.data, None, None, [args.principle])
    pairs = select_pairs(pairs, args.principle, limit=args.limit)
    rows, cuts = [], {}
    for length in [int(x) for x in args.lengths.split(",")]:
        cuts[length] = round(cut_share(args.base, pairs, length), 4)
        print(f"max_length {length}: {cuts[length]:.1%} of the responses (with their prompts) are cut")
        for variant in [] if args.cut_only else args.variants.split(","):
            extra = {k: (args.penalty if v is None else v) for k, v in VARIANTS[variant].items()}
            cfg = TrainConfig(
                base=args.base, max_length=length, epochs=args.epochs, device="cpu", bf16=args.bf16, **extra
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
                    base=load_base(args.base, max_length=length, device="cpu"),
                    progress=False,
                )
                train_s = time.perf_counter() - t0
                scorer = PackageScorer(load_base(args.base, max_length=length, device="cpu"), Path(tmp) / "adapters")
                scorer.load(args.principle)
                _, val = split_by_prompt(pairs, cfg.val_fraction, salt=f"val{cfg.seed}")
                t0 = time.perf_counter()
                report = principle_report(scorer, args.principle, val)
                score_s = (time.perf_counter() - t0) / 2  # the PM and the untrained head: two passes
            row = {
                "max_length": length,
                "variant": variant,
                **extra,
                "val_pairs": len(val),
                "train_pairs": res.metrics["train_pairs"],
                "pm": report["pm"],
                "longer_wins": report["longer_wins"],
                "length": report["length"],
                "per_source": report["per_source"],
                "train_s": round(train_s, 1),
                "train_pairs_per_s": round(res.metrics["train_pairs"] * res.metrics["epochs_run"] / train_s, 2),
                "score_seqs_per_s": round(2 * len(val) / score_s, 1),
            }
            rows.append(row)
            print(
                f"  {variant:16s} PM {fmt(row['pm'])}  shorter chosen {fmt(row['length']['shorter_chosen'])}  "
                f"prefers longer {row['length']['prefers_longer']}  corr {row['length']['score_length_corr']}  "
                f"train {row['train_s']} s  score {row['score_seqs_per_s']} seq/s",
                flush=True,
            )
            for source, r in row["per_source"].items():
                print(f"    {source}: {fmt(r['pm'])}  shorter chosen {fmt(r['length']['shorter_chosen'])}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": platform.platform(),
        "threads": torch.get_num_threads(),
        "args": vars(args),
        "data": sources,
        "pairs": len(pairs),
        "median_chars": statistics.median(len(p.prompt) + len(p.chosen) for p in pairs),
    }
    out.write_text(json.dumps({"meta": meta, "cut_share": cuts, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
