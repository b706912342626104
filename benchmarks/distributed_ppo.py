"""`morlaif ppo train` with 1 process against N data-parallel processes (`accelerate launch`) at the same global batch.

Starts a PM server on loopback (the default adapters, scalarized by adapters/weights.json), runs the same PPO
configuration as a plain command and under `accelerate launch --config_file configs/accelerate/cpu.yaml
--num_processes N`, and prints each step's reward, KL and losses side by side with the largest difference, and
the wall time of each run (model loading included) and of its steps. Threads are split fairly: the plain run
gets every core, each of N ranks cores/N. Writes JSON; asserts nothing.

    python benchmarks/distributed_ppo.py                          # SmolLM2-135M + LoRA, 3 steps of 8 prompts
    python benchmarks/distributed_ppo.py --processes 1 2 4 --steps 5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml
from launched import ROOT, free_port, run_morlaif

PROMPTS = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-dev.jsonl.gz"
KEYS = ("reward", "kl", "policy_loss", "value_loss", "entropy", "approx_kl")


def start_server(port: int, log: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "morlaif", "serve", "--insecure-dev", "--adapter-root", str(ROOT / "adapters"),
            "--scalarizer-file", str(ROOT / "adapters" / "weights.json"), "--port", str(port),
            "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT)
    for _ in range(240):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"the PM server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    raise SystemExit("the PM server did not become ready in 120 s")


def run(n: int, config: Path, out: Path, steps: int, cores: int) -> dict:
    args = ["ppo", "train", "-c", str(config), "--out", str(out), "--steps", str(steps), "--quiet"]
    wall, threads = run_morlaif(n, args, cores)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"processes": n, "threads_per_process": threads, "wall_seconds": round(wall, 1),
            "step_seconds": [round(r["seconds"], 2) for r in rows], "steps": rows}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2", help="Policy: smollm2, a folder or a hub id.")
    ap.add_argument(
        "--processes", type=int, nargs="+", default=[1, 2], help="Process counts; the first is the reference."
    )
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8, help="Global prompts per step.")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/distributed_ppo.json"))
    args = ap.parse_args()
    if not PROMPTS.is_file():
        raise SystemExit(f"{PROMPTS} is absent (../shared/data beside the project)")
    with tempfile.TemporaryDirectory(prefix="dp-bench-") as tmp:
        tmp_path = Path(tmp)
        port = free_port()
        server = start_server(port, tmp_path / "server.log")
        try:
            config = tmp_path / "ppo.yaml"
            config.write_text(yaml.safe_dump({
                "model": {"name_or_path": args.model, "lora": True, "device": "cpu"},
                "data": {"prompts": str(PROMPTS)},
                "ppo": {"batch_size": args.batch_size, "mini_batch_size": args.batch_size // 2,
                        "learning_rate": 1e-4},
                "generation": {"max_new_tokens": args.max_new_tokens},
                "reward": {"url": f"http://127.0.0.1:{port}",
                           "weights_file": str(ROOT / "adapters" / "weights.json")},
                "run": {"save_every": 1000},
            }))  # fmt: skip
            runs = [run(n, config, tmp_path / f"run-{n}", args.steps, args.cores) for n in args.processes]
        finally:
            server.terminate()
            server.wait(30)
    ref = runs[0]
    print(f"{args.model}, LoRA, global batch {args.batch_size}, {args.max_new_tokens} new tokens, {args.cores} cores")
    head = "step  " + "  ".join(f"{k:>12} x{r['processes']}" for k in KEYS[:3] for r in runs)
    print(head)
    for i in range(args.steps):
        cells = [f"{r['steps'][i][k]:>15.6f}" for k in KEYS[:3] for r in runs]
        print(f"{i + 1:>4}  " + "  ".join(cells))
    for r in runs[1:]:
        diff = max(abs(a[k] - b[k]) for a, b in zip(r["steps"], ref["steps"], strict=True) for k in KEYS)
        r["max_abs_difference_vs_first"] = diff
        print(
            f"{r['processes']} processes: largest difference from {ref['processes']} in {', '.join(KEYS)}: {diff:.2e}"
        )
    for r in runs:
        print(f"{r['processes']} process(es) x {r['threads_per_process']} threads: {r['wall_seconds']} s wall, "
              f"steps {r['step_seconds']} s")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": args.model, "batch_size": args.batch_size, "steps": args.steps,
                                    "max_new_tokens": args.max_new_tokens, "cores": args.cores, "runs": runs},
                                   indent=2))  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
