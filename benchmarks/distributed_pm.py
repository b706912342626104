"""`morlaif pm train` with 1 process against N data-parallel processes (`accelerate launch`) at the same global batch.

Trains the factuality PM (MiniLM + LoRA, ../shared/data/factuality_truthfulqa.jsonl) as a plain command and under
`accelerate launch --config_file configs/accelerate/cpu.yaml --num_processes N`, with LoRA dropout off (with it,
each rank draws its own masks), and prints each epoch's validation loss and accuracy side by side, the final
validation accuracy with its interval, and the wall time of each run (threads split fairly: cores/N a rank).
The base's own dropout stays on, as in real training, so runs differ as two seeds do; the tests hold the exact
match on a base without dropout. Writes JSON; asserts nothing.

    python benchmarks/distributed_pm.py                      # 1 and 2 processes, 2 epochs, 1,200 pairs
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from launched import ROOT, run_morlaif

DATA = ROOT.parent / "shared" / "data" / "factuality_truthfulqa.jsonl"


def run(n: int, tmp: Path, args: argparse.Namespace) -> dict:
    train = ["pm", "train", "--principle", "factuality", "--data", str(DATA), "--limit", str(args.limit),
             "--epochs", str(args.epochs), "--patience", str(args.epochs), "--lora-dropout", "0",
             "--max-length", "128", "--device", "cpu", "--quiet", "--version", "bench",
             "--out-root", str(tmp / f"adapters-{n}"), "--run-dir", str(tmp / f"run-{n}")]  # fmt: skip
    wall, threads = run_morlaif(n, train, args.cores)
    manifest = json.loads((tmp / f"adapters-{n}" / "factuality" / "bench" / "principle.json").read_text())
    m = manifest["metrics"]
    return {"processes": n, "threads_per_process": threads, "wall_seconds": round(wall, 1),
            "train_seconds": m["train_seconds"], "history": m["history"], "val_accuracy": m["val_accuracy"],
            "val_accuracy_ci95": m["val_accuracy_ci95"], "val_pairs": m["val_pairs"]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--limit", type=int, default=1200, help="Pairs (a seeded sample).")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/distributed_pm.json"))
    args = ap.parse_args()
    if not DATA.is_file():
        raise SystemExit(f"{DATA} is absent (../shared/data beside the project)")
    with tempfile.TemporaryDirectory(prefix="dp-pm-") as tmp:
        runs = [run(n, Path(tmp), args) for n in args.processes]
    print(f"factuality PM, MiniLM + LoRA, {args.limit} pairs, global batch 16, {args.cores} cores")
    print("epoch  " + "  ".join(f"val loss x{r['processes']}  val acc x{r['processes']}" for r in runs))
    for i in range(len(runs[0]["history"])):
        cells = [f"{r['history'][i]['val_loss']:>12.5f}  {r['history'][i]['val_accuracy']:>10.4f}" for r in runs]
        print(f"{i + 1:>5}  " + "  ".join(cells))
    for r in runs:
        lo, hi = r["val_accuracy_ci95"]
        print(f"{r['processes']} process(es) x {r['threads_per_process']} threads: "
              f"val accuracy {r['val_accuracy']:.3f} [{lo:.3f}, {hi:.3f}] on {r['val_pairs']} pairs; "
              f"{r['wall_seconds']} s wall, "
              f"{r['train_seconds']} s training")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"limit": args.limit, "epochs": args.epochs, "cores": args.cores, "runs": runs},
                                   indent=2))  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
