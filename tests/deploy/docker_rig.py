"""The rig of the Docker smoke test (test_stack.py): a Docker engine, base images, a torch index, the image.

On a machine that reaches Docker Hub the base images are the compose file's defaults (python:3.11-slim,
postgres:16-alpine) when they are present locally. Where no registry answers, stand-ins are made from
Debian's packages (debootstrap, then `docker import`, then standin/*.Dockerfile) and kept as a cache
(`morlaif-standin/*`, tagged by a hash of their recipe). torch comes, through the Dockerfile's own
TORCH_INDEX, from a local PEP 503 index of what `pip download torch==<the Makefile's pin>` fetches on the host
(a CPU wheel here), served on loopback to a `--network host` build. Nothing of this rig goes into the
Dockerfile; the host's CA bundle goes into the stand-in python base only, so a test build reaches PyPI
through this machine's TLS proxy.

    python tests/deploy/docker_rig.py bases     # make (or find) the bases and print them
"""

from __future__ import annotations

import functools
import hashlib
import html
import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STANDIN = Path(__file__).resolve().parent / "standin"
CACHE = ROOT / "var" / "smoke"  # ignored by git and by .dockerignore
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
OFFICIAL = {"python": "python:3.11-slim", "postgres": "postgres:16-alpine"}
PACKAGES = {
    "python": ["python3", "python3-venv", "ca-certificates"],
    "postgres": ["postgresql-15", "postgresql-client-15"],
}
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def sh(argv: list[str], *, timeout: float = 600, check: bool = True, **kw) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise with its last output, never a secret (the rig passes none)."""
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])} ... exited {res.returncode}:\n{(res.stdout + res.stderr)[-4000:]}")
    return res


def docker_env() -> dict[str, str]:
    # Debian's engine has no buildx: the classic builder
    return {**os.environ, "DOCKER_BUILDKIT": "0", "COMPOSE_DOCKER_CLI_BUILD": "0"}


def engine_unavailable() -> str | None:
    """None when a Docker engine answers (started here if installed and not running), else why not."""
    docker = shutil.which("docker")
    if docker is None:
        return "no docker client (apt-get install docker.io; `make test` does as root)"
    if shutil.which("docker-compose") is None:
        return "no docker-compose (apt-get install docker-compose; `make test` does as root)"
    if sh([docker, "info"], check=False, timeout=60).returncode == 0:
        return None
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        return "the docker client answers but no engine runs and dockerd is not installed (apt-get install docker.io)"
    if os.geteuid() != 0:
        return "no Docker engine runs and starting dockerd needs root"
    log = Path(tempfile.gettempdir()) / "morlaif-dockerd.log"
    # Started through a shell that backgrounds it and exits, so the engine outlives the test run and no Popen
    # object of a still-running process is left for the garbage collector (a ResourceWarning, an error here).
    sh(["sh", "-c", 'exec "$0" >>"$1" 2>&1 </dev/null &', dockerd, str(log)], start_new_session=True, timeout=30)
    for _ in range(60):
        if sh([docker, "info"], check=False, timeout=30).returncode == 0:
            return None
        time.sleep(1)
    return f"dockerd did not start in 60 s (its log: {log})"


def image_exists(ref: str) -> bool:
    return sh(["docker", "image", "inspect", ref], check=False, timeout=60).returncode == 0


def _recipe_hash(kind: str) -> str:
    h = hashlib.sha256(f"{SUITE} {MIRROR} {PACKAGES[kind]}".encode())
    for path in sorted(STANDIN.glob(f"{kind}*")):
        h.update(path.name.encode() + path.read_bytes())
    if kind == "python" and HOST_CA.is_file():
        h.update(HOST_CA.read_bytes())
    return h.hexdigest()[:12]


def _rootfs(kind: str, tag: str) -> str:
    """A Debian root file system with `kind`'s packages, imported as an image (debootstrap: about 30 s)."""
    ref = f"morlaif-standin/rootfs-{kind}:{tag}"
    if image_exists(ref):
        return ref
    if shutil.which("debootstrap") is None:
        raise RuntimeError("no registry image and no debootstrap to make a stand-in (apt-get install debootstrap)")
    with tempfile.TemporaryDirectory(prefix=f"standin-{kind}-") as tmp:
        target = Path(tmp) / "rootfs"
        include = ",".join(PACKAGES[kind])
        sh(["debootstrap", "--variant=minbase", f"--include={include}", SUITE, str(target), MIRROR], timeout=900)
        shutil.rmtree(target / "var" / "cache" / "apt" / "archives", ignore_errors=True)
        with subprocess.Popen(["tar", "-C", str(target), "-c", "."], stdout=subprocess.PIPE) as tar:
            sh(["docker", "import", "-", ref], stdin=tar.stdout, timeout=600)
    return ref


def standin(kind: str) -> str:
    """The stand-in for OFFICIAL[kind], made once and kept (`morlaif-standin/<kind>:<recipe hash>`)."""
    tag = _recipe_hash(kind)
    ref = f"morlaif-standin/{kind}:{tag}"
    if image_exists(ref):
        return ref
    rootfs = _rootfs(kind, tag)
    with tempfile.TemporaryDirectory(prefix=f"standin-{kind}-ctx-") as ctx:
        for path in STANDIN.glob(f"{kind}*"):
            shutil.copy(path, ctx)
        if kind == "python":
            shutil.copy(HOST_CA, Path(ctx) / "ca-certificates.crt")
        sh(["docker", "build", "-q", "-f", f"{ctx}/{kind}.Dockerfile", "--build-arg", f"STANDIN_ROOTFS={rootfs}",
            "-t", ref, ctx], env=docker_env(), timeout=900)  # fmt: skip
    sh(["docker", "rmi", rootfs], check=False)  # its layers stay under the stand-in
    return ref


def base_images() -> dict[str, str]:
    """The base image per kind: the official one where it is present, else its stand-in."""
    return {kind: ref if image_exists(ref) else standin(kind) for kind, ref in OFFICIAL.items()}


# ----------------------------------------------------------------------------------------- torch
def torch_pin() -> str:
    m = re.search(r'"torch==([0-9.]+)"', (ROOT / "Makefile").read_text())
    assert m, "the Makefile pins torch"
    return m.group(1)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def torch_index() -> Path:
    """A PEP 503 index of torch==<pin> and its dependencies (as the host's pip resolves them), kept in CACHE."""
    root = CACHE / f"torch-{torch_pin()}"
    if (root / "simple" / "torch" / "index.html").is_file():
        return root
    files = root / "files"
    files.mkdir(parents=True, exist_ok=True)
    sh([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", f"torch=={torch_pin()}",
        "-d", str(files)], timeout=900)  # fmt: skip
    by_name: dict[str, list[str]] = {}
    for f in sorted(files.iterdir()):
        by_name.setdefault(_canonical(f.name.split("-")[0]), []).append(f.name)
    for name, names in by_name.items():
        page = root / "simple" / name / "index.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        links = "".join(f'<a href="../../files/{html.escape(n)}">{html.escape(n)}</a>\n' for n in names)
        page.write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
    return root


INDEX_PORT = 38517  # fixed: TORCH_INDEX is part of the build cache's key, a new port would rebuild every layer


@contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """Serve `folder` over HTTP on 127.0.0.1 (INDEX_PORT, or a free port if it is taken); yields its URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", INDEX_PORT), handler)
    except OSError:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the stdlib's name)
        pass


def build_image(tag: str, python_image: str, target: str | None = None) -> float:
    """docker/Dockerfile built as the user builds it (`target`: a stage, else the default, the last), with the
    bases and torch index of this rig; seconds."""
    started = time.monotonic()
    with serve_folder(torch_index()) as url:
        sh(["docker", "build", "-q", "--network", "host", "-f", str(ROOT / "docker" / "Dockerfile"),
            *(["--target", target] if target else []),
            "--build-arg", f"PYTHON_IMAGE={python_image}", "--build-arg", f"TORCH_INDEX={url}/simple",
            "-t", tag, str(ROOT)], env=docker_env(), timeout=1800)  # fmt: skip
    return time.monotonic() - started


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("bases", "index"):
        sys.exit(__doc__)
    why = engine_unavailable()
    if why:
        sys.exit(why)
    print(base_images() if sys.argv[1] == "bases" else torch_index())
