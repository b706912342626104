"""Helpers of long training runs shared by `morlaif pm train` and `morlaif ppo train`.

* `defer_sigint`: the first Ctrl-C only sets a flag, so the loop stops at a step boundary and its
  checkpoint is consistent; a second Ctrl-C stops at once.
* `progress`: the tqdm bar of a run, resumable from a step.
* `git_commit`: the commit of the code, for provenance.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["defer_sigint", "git_commit", "progress"]


@contextlib.contextmanager
def defer_sigint(flag: threading.Event) -> Iterator[None]:
    """The first Ctrl-C sets `flag` (the loop stops after the current step); a second one stops at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def progress(total: int, initial: int, desc: str, enabled: bool, unit: str = "step") -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True)


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None
