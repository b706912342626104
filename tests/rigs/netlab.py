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
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["NetLab", "Host", "TcpRelay", "wait_http_ok"]


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
        self._forward("-I")
        return self

    def _forward_rule(self) -> list[str]:
        return ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]

    def _forward(self, action: str) -> None:
        """Let traffic between the lab's hosts through the root namespace's FORWARD chain. A running Docker
        engine loads br_netfilter (bridged frames pass iptables) and sets FORWARD's policy to DROP, which
        would cut the hosts off from each other; without iptables there is nothing to open."""
        iptables = shutil.which("iptables")
        if iptables is None:
            return
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run([iptables, "-w", action, *self._forward_rule()], capture_output=True, timeout=30)

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
        self._forward("-D")
        with contextlib.suppress(subprocess.CalledProcessError, OSError, subprocess.TimeoutExpired):
            _ip("link", "del", self.bridge)


class TcpRelay:
    """Forwards connections made to (host, port) to (target_host, target_port), in a thread of its own.

    Lets namespaced hosts reach a service of the root namespace that listens on loopback only (the
    machine's PostgreSQL): they connect to the lab's gateway address, the relay connects to loopback.
    """

    def __init__(self, host: str, target: tuple[str, int], port: int = 0) -> None:
        import asyncio

        self.host, self.target, self.port = host, target, port
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TcpRelay:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the relay did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _pipe(self, reader: Any, writer: Any) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: Any, writer: Any) -> None:
        import asyncio

        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def _run(self) -> None:
        import asyncio

        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, self.host, self.port))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()


def wait_http_ok(url: str, proc: subprocess.Popen[Any], timeout_s: float = 120) -> str | None:
    """Poll url until it answers 200; None then, else why not (the process exited, or the time ran out)."""
    from morlaif_cli import up

    def why_not() -> str | None:
        return f"the process exited with {proc.returncode}" if proc.poll() is not None else None

    return up.wait_http_ok(url, timeout_s, why_not)
