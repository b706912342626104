"""What the data-parallel benchmarks share: a morlaif command run by 1 process or N under `accelerate launch`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_morlaif(n: int, args: list[str], cores: int) -> tuple[float, int]:
    """Run `morlaif ARGS` as a plain command (n = 1) or under `accelerate launch --config_file
    configs/accelerate/cpu.yaml --num_processes n`, the cores split fairly (cores/n threads a process).

    Returns (wall seconds, threads per process); SystemExit with the end of stderr when it fails."""
    threads = max(1, cores // n)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = ["-m", "morlaif", *args]
    if n == 1:
        argv = [sys.executable, *command]
    else:
        launcher = Path(sys.executable).parent / "accelerate"
        argv = [str(launcher), "launch", "--config_file", str(ROOT / "configs" / "accelerate" / "cpu.yaml"),
                f"--num_processes={n}", f"--main_process_port={free_port()}", *command]  # fmt: skip
    t0 = time.perf_counter()
    res = subprocess.run(argv, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{n} process(es) failed:\n{res.stderr[-4000:]}")
    return wall, threads
