"""Several network hosts on one Linux machine, for tests: one network namespace per host, on a bridge.

Each host gets its own namespace (its own loopback, interfaces and ports) and a veth pair whose other end
sits on a bridge in the root namespace, which holds the .254 address of the subnet: hosts reach each other
and the root namespace (where PostgreSQL runs) only over those links, as separate machines would.
Needs root (CAP_NET_ADMIN) and the `ip` tool; `NetLab.unavailable()` says why not where it cannot run.

    with NetLab() as lab:
        server, trainer = lab.add_host("server"), lab.add_host("trainer")
        proc = server.popen(["morlaif", "serve", "--host", server.ip])
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["NetLab", "Host"]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@dataclass
class Host:
    """One simulated host: a network namespace with one address on the lab's subnet."""

    name: str
    netns: str
    ip: str
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    def command(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]

    def popen(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, log: Path | None = None, **kw: Any
    ) -> subprocess.Popen[Any]:
        """Start argv inside this host; stdout and stderr go to `log` (default: discarded)."""
        out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115 (the process owns it)
        try:
            proc = subprocess.Popen(
                self.command(argv), env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT, **kw
            )
        finally:
            if log is not None:
                out.close()  # type: ignore[union-attr]
        self.procs.append(proc)
        return proc

    def run(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 600, **kw: Any):
        """Run argv inside this host to completion; a CompletedProcess with text output."""
        return subprocess.run(
            self.command(argv),
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            **kw,
        )

    def stop(self, timeout: float = 15) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


class NetLab:
    """A bridge in the root namespace and one namespace per host; everything is removed on exit."""

    def __init__(self, tag: str | None = None) -> None:
        pid = os.getpid()
        self.tag = tag or f"ml{pid % 100000}"
        self.subnet = f"10.213.{pid % 250}"
        self.bridge = f"{self.tag}br"[:15]
        self.gateway = f"{self.subnet}.254"  # the root namespace's address on the lab
        self.hosts: list[Host] = []

    @staticmethod
    def unavailable() -> str | None:
        """None where namespaces can be made here, else the reason they cannot."""
        if shutil.which("ip") is None:
            return "the `ip` tool (iproute2) is not installed"
        probe = f"mlprobe{os.getpid() % 100000}"
        try:
            _ip("netns", "add", probe)
        except subprocess.CalledProcessError as e:
            return f"cannot create a network namespace here: {e.stderr.strip() or e}"
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"cannot create a network namespace here: {e}"
        with contextlib.suppress(subprocess.CalledProcessError, OSError, subprocess.TimeoutExpired):
            _ip("netns", "del", probe)
        return None

    def __enter__(self) -> NetLab:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        return self

    def add_host(self, name: str) -> Host:
        i = len(self.hosts) + 1
        ns, outer, inner = f"{self.tag}-{name}", f"{self.tag}h{i}"[:15], f"{self.tag}n{i}"[:15]
        _ip("netns", "add", ns)
        host = Host(name=name, netns=ns, ip=f"{self.subnet}.{i}")
        self.hosts.append(host)
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", ns)
        _ip("link", "set", outer, "master", self.bridge)
        _ip("link", "set", outer, "up")
        _ip("-n", ns, "addr", "add", f"{host.ip}/24", "dev", inner)
        _ip("-n", ns, "link", "set", inner, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        return host

    def __exit__(self, *exc: object) -> None:
        for h in self.hosts:
            h.stop()
        for h in self.hosts:
            with contextlib.suppress(subprocess.CalledProcessError, OSError, subprocess.TimeoutExpired):
                _ip("netns", "del", h.netns)  # takes its veth pair with it
        with contextlib.suppress(subprocess.CalledProcessError, OSError, subprocess.TimeoutExpired):
            _ip("link", "del", self.bridge)
