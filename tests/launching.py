"""Runs started the way a user starts a multi-process run: `accelerate launch` on this CPU."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:  # conftest's free_port; a module beside the conftests cannot import them by name
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accelerate_launch(n: int, *args: str | os.PathLike[str]) -> list[str]:
    """The argv of `accelerate launch --multi_gpu --num_processes n -m morlaif ARGS` on this CPU: torchrun's
    launcher starting n ranks that find each other on a free loopback port (gloo; no GPU is needed)."""
    launcher = Path(sys.executable).parent / "accelerate"
    return [
        str(launcher), "launch", "--multi_gpu", f"--num_processes={n}", "--num_machines=1",
        "--mixed_precision=no", "--dynamo_backend=no", f"--main_process_port={_free_port()}",
        "-m", "morlaif", *map(str, args),
    ]  # fmt: skip


def launch_env() -> dict[str, str]:
    """The environment of a launched run in a test: one thread per rank (two ranks share these two cores)."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}
