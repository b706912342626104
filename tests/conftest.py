"""Shared fixtures: tiny real models on disk, loaded bases, adapter roots, and a real server on loopback."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Served scores are compared with in-process float32 scores to 1e-5: servers here compute in float32 unless a
# test asks for another dtype (MORLAIF_DTYPE=auto serves in bfloat16 on a CPU with AVX512-BF16, as by default).
os.environ.setdefault("MORLAIF_DTYPE", "float32")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the project; the test skips, saying so, where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (../shared/data beside the project)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rigs.pm_packages import make_tiny_base

    return make_tiny_base(tmp_path_factory.mktemp("tiny-encoder"), "encoder")


@pytest.fixture(scope="session")
def tiny_decoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rigs.pm_packages import make_tiny_base

    return make_tiny_base(tmp_path_factory.mktemp("tiny-decoder"), "decoder")


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random causal LM over a 16-word vocabulary, saved as a model folder."""
    from rigs.tiny_lm import save_tiny_lm

    return save_tiny_lm(tmp_path_factory.mktemp("tiny-lm"))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LiveServer:
    """A real uvicorn server in a thread on a free port (of loopback unless another address is given)."""

    def __init__(self, app: object, host: str = "127.0.0.1", port: int | None = None) -> None:
        import uvicorn

        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        config = uvicorn.Config(app, host=host, port=self.port, log_level="warning", lifespan="on")  # type: ignore[arg-type]
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, *, ready_path: str | None = "/readyz", timeout: float = 60.0) -> LiveServer:
        import httpx

        self.thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server.started:
                if ready_path is None:
                    return self
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(self.url + ready_path, timeout=2).status_code == 200:
                        return self
            time.sleep(0.05)
        raise TimeoutError("server did not become ready")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on."""
    return free_port()


@pytest.fixture
def live_server() -> Iterator[type[LiveServer]]:
    yield from _tracked_servers()


@pytest.fixture(scope="module")
def module_live_server() -> Iterator[type[LiveServer]]:
    """`live_server` for servers a whole test module shares (stopped after its last test)."""
    yield from _tracked_servers()


def _tracked_servers() -> Iterator[type[LiveServer]]:
    started: list[LiveServer] = []

    class _Tracked(LiveServer):
        def start(self, **kw: object) -> LiveServer:  # type: ignore[override]
            started.append(self)
            return super().start(**kw)  # type: ignore[arg-type]

    yield _Tracked
    for s in started:
        s.stop()


@pytest.fixture
def netlab():
    """Simulated network hosts (network namespaces on a bridge); skips, saying why, where they cannot be made."""
    from rigs.netlab import NetLab

    reason = NetLab.unavailable()
    if reason is not None:
        pytest.skip(f"needs network namespaces: {reason}")
    with NetLab() as lab:
        yield lab
