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


ROOT = Path(__file__).resolve().parents[1]
CPU_CONFIG = ROOT / "configs" / "accelerate" / "cpu.yaml"


def accelerate_launch(n: int, *args: str | os.PathLike[str]) -> list[str]:
    """The argv of `accelerate launch --config_file configs/accelerate/cpu.yaml --num_processes n -m morlaif ARGS`:
    torchrun's launcher starting n ranks on this CPU that find each other on a free loopback port (gloo)."""
    launcher = Path(sys.executable).parent / "accelerate"
    return [
        str(launcher), "launch", "--config_file", str(CPU_CONFIG), f"--num_processes={n}",
        f"--main_process_port={_free_port()}", "-m", "morlaif", *map(str, args),
    ]  # fmt: skip


def launch_env() -> dict[str, str]:
    """The environment of a launched run in a test: one thread per rank (two ranks share these two cores)."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}
