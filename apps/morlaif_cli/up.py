"""`morlaif up`: the one-machine stack (no Docker, no database server) as supervised child processes.

Each service runs as its own `morlaif` process; their output is streamed line by line with a
`name |` prefix. The first to exit takes the others down (a stack with a dead PM server is not up);
Ctrl-C or SIGTERM stops them all: SIGTERM first, SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

__all__ = ["Service", "Supervisor", "port_in_use", "wait_http_ok", "wait_ready"]


@dataclass
class Service:
    name: str
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)


def port_in_use(host: str, port: int) -> bool:
    """Whether binding host:port fails (something listens there, or the address is not ours)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


class Supervisor:
    """Starts services, prefixes and streams their output, and stops them all together."""

    def __init__(self, out: IO[str] | None = None, grace_s: float = 15.0) -> None:
        self.out = out or sys.stdout
        self.grace_s = grace_s
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._width = 0

    def say(self, name: str, text: str) -> None:
        with self._lock:
            for line in text.split("\n"):
                self.out.write(f"{name:<{self._width}} | {line}\n")
            self.out.flush()

    def start(self, services: Sequence[Service]) -> None:
        self._width = max([self._width, len("morlaif"), *(len(s.name) for s in services)])
        for svc in services:
            proc = subprocess.Popen(
                list(svc.argv),
                env={**os.environ, "PYTHONUNBUFFERED": "1", **svc.env},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches us only; we stop the children in order
            )
            self.procs[svc.name] = proc
            t = threading.Thread(target=self._pump, args=(svc.name, proc), daemon=True)
            t.start()
            self._threads.append(t)

    def _pump(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            self.say(name, raw.decode(errors="replace").rstrip("\r\n"))
        proc.stdout.close()

    def exited(self) -> tuple[str, int] | None:
        """(name, return code) of a service that has exited, if any."""
        for name, proc in self.procs.items():
            rc = proc.poll()
            if rc is not None:
                return name, rc
        return None

    def wait(self, until: Callable[[], bool] | None = None, poll_s: float = 0.2) -> tuple[str, int] | None:
        """Block until a service exits (its name and code) or `until()` is true (None)."""
        while True:
            gone = self.exited()
            if gone is not None:
                return gone
            if until is not None and until():
                return None
            time.sleep(poll_s)

    def stop(self) -> dict[str, int]:
        """SIGTERM every running service, SIGKILL what is left after the grace period; their return codes."""
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for name, proc in self.procs.items():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(name, f"did not stop within {self.grace_s:.0f} s: killed")
                proc.kill()
                proc.wait(5)
        for t in self._threads:
            t.join(5)
        return {name: int(proc.returncode) for name, proc in self.procs.items()}


def wait_http_ok(url: str, timeout_s: float, why_not: Callable[[], str | None], what: str = "") -> str | None:
    """Poll url until it answers 200: None then; else the first reason `why_not()` gives, or the timeout."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        why = why_not()
        if why is not None:
            return why
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return None
        time.sleep(0.3)
    return f"{what or url} was not ready after {timeout_s:.0f} s"


def wait_ready(url: str, sup: Supervisor, name: str, timeout_s: float, stop: threading.Event) -> str | None:
    """Poll url until it answers 200; None when ready, else why not (a service exited, timeout, stop)."""

    def why_not() -> str | None:
        if stop.is_set():
            return "interrupted"
        gone = sup.exited()
        return f"{gone[0]} exited with code {gone[1]} before it was ready" if gone is not None else None

    return wait_http_ok(url, timeout_s, why_not, name)


def install_stop_handlers(stop: threading.Event) -> Callable[[], None]:
    """SIGINT and SIGTERM set `stop`; returns a function that puts the old handlers back."""
    old: dict[int, Any] = {}

    def handler(signum: int, frame: object) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        old[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, h in old.items():
            signal.signal(sig, h)

    return restore
