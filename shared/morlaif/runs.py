"""Helpers of long runs shared by `morlaif pm train`, `ppo train`, `sft` and `sample`.

* `defer_stop_signals`: the first Ctrl-C (SIGINT) or SIGTERM (`docker stop`, a Kubernetes pod's end) only
  sets a `StopRequest`, so the loop stops at a step boundary, saves a consistent checkpoint and exits with
  128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM); a second signal stops at once.
* `exit_on_sigterm`: outside such a loop, SIGTERM unwinds the command (its ``finally`` blocks run) and exits
  with 143, also as PID 1 in a container, where the kernel would otherwise ignore SIGTERM.
* `progress`: the tqdm bar of a run, resumable from a step.
* `git_commit`: the commit of the code, for provenance.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "STOP_SIGNALS",
    "StopRequest",
    "Stopped",
    "defer_stop_signals",
    "exit_on_sigterm",
    "git_commit",
    "interrupt_exit_code",
    "progress",
    "quiet_libraries",
    "signal_exit_code",
]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def signal_exit_code(signum: int) -> int:
    """The shell's status of a command stopped by `signum`: 128 + its number (130 SIGINT, 143 SIGTERM)."""
    return 128 + int(signum)


def interrupt_exit_code(e: KeyboardInterrupt) -> int:
    """The exit status of a command stopped by `e`: a `Stopped`'s own (130 or 143), 130 for a plain Ctrl-C."""
    return int(getattr(e, "exit_code", signal_exit_code(signal.SIGINT)))


class Stopped(KeyboardInterrupt):
    """A run stopped by a signal after saving what it must; `exit_code` is 128 + the signal's number.

    A KeyboardInterrupt, so code that handles Ctrl-C handles SIGTERM the same way."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)
        self.exit_code = signal_exit_code(signum)


class StopRequest(threading.Event):
    """Set by the first SIGINT or SIGTERM inside `defer_stop_signals`; `signum` says which one."""

    def __init__(self) -> None:
        super().__init__()
        self.signum: int | None = None

    def request(self, signum: int) -> None:
        self.signum = int(signum)
        self.set()

    @property
    def exit_code(self) -> int:
        """130 after Ctrl-C, 143 after SIGTERM (0 when no stop was asked)."""
        return 0 if self.signum is None else signal_exit_code(self.signum)

    def raise_stopped(self) -> None:
        """Raise `Stopped` for the signal that set this request (after the caller saved its state)."""
        raise Stopped(self.signum if self.signum is not None else signal.SIGINT)


# A repeat within this many seconds is the same request delivered twice: Ctrl-C reaches every process of the
# terminal's group, and a launcher (torchrun, under `accelerate launch`) then passes the signal on again.
SAME_REQUEST_SECONDS = 1.0


@contextlib.contextmanager
def defer_stop_signals(stop: StopRequest) -> Iterator[StopRequest]:
    """The first SIGINT or SIGTERM sets `stop` (the loop stops after the current step); a second one raises
    `Stopped` at once, unless it comes within `SAME_REQUEST_SECONDS` of the first (the same request, passed on
    by a launcher). Outside the main thread signals cannot be caught: the context does nothing there."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    first = [0.0]

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            if time.monotonic() - first[0] < SAME_REQUEST_SECONDS:
                return
            raise Stopped(signum)
        first[0] = time.monotonic()
        stop.request(signum)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(signal_exit_code(signum))


def exit_on_sigterm() -> None:
    """SIGTERM raises SystemExit(143) in the main thread: the command unwinds and exits at once.

    Python's default leaves SIGTERM to the kernel, which kills the process without running ``finally``
    blocks, and ignores it altogether in PID 1 (a container without an init), so `docker stop` waited out
    its grace period and killed the process. Loops that can stop at a safe point override this with
    `defer_stop_signals`; servers (uvicorn, the feedback worker) install their own handlers."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)


def progress(total: int, initial: int, desc: str, enabled: bool, unit: str = "step") -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True)


def quiet_libraries() -> None:
    """No progress bars from transformers, huggingface_hub and plain tqdm (loading weights, dequantising a
    GGUF): what `--quiet` promises, so a service's log under Docker or Kubernetes holds log lines only."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # the default of every tqdm bar that does not choose for itself (transformers' GGUF dequantisation)
    os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        from huggingface_hub.utils import disable_progress_bars
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - both come with transformers
        return
    disable_progress_bars()
    hf_logging.disable_progress_bar()


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
