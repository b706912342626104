"""docker/Dockerfile, read by a Dockerfile parser (there is no Docker engine here to build it)."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

import pytest

from morlaif.testing import check_cli_args

ROOT = Path(__file__).resolve().parents[2]
dfp = pytest.importorskip("dockerfile_parse", reason="dockerfile-parse is not installed (pip install -e .[dev])")


@pytest.fixture(scope="module")
def dockerfile():
    return dfp.DockerfileParser(path=str(ROOT / "docker" / "Dockerfile"))


def _instructions(d, name: str) -> list[str]:
    return [i["value"] for i in d.structure if i["instruction"] == name]


def test_runs_as_a_non_root_user_with_a_health_check(dockerfile):
    users = _instructions(dockerfile, "USER")
    assert users and users[-1] not in ("root", "0")
    (check,) = _instructions(dockerfile, "HEALTHCHECK")
    assert "/healthz" in check and "--start-period" in check


def test_cpu_by_default_cuda_by_build_argument_with_the_makefiles_torch(dockerfile):
    assert dockerfile.args["TORCH_INDEX"].endswith("/whl/cpu")
    pin = re.search(r'"torch==([0-9.]+)"', (ROOT / "Makefile").read_text())
    assert pin and dockerfile.args["TORCH_VERSION"] == pin.group(1)
    assert any("--index-url" in r and "${TORCH_INDEX}" in r for r in _instructions(dockerfile, "RUN"))


def test_copies_only_what_exists_and_is_not_ignored_and_bakes_in_no_adapters(dockerfile):
    ignored = [x.strip() for x in (ROOT / ".dockerignore").read_text().splitlines() if x.strip()]
    for value in _instructions(dockerfile, "COPY"):
        *sources, _dest = value.split()
        for src in sources:
            assert (ROOT / src).exists(), src
            assert not any(fnmatch.fnmatch(src, pat) for pat in ignored), f"{src} is in .dockerignore"
    assert "adapters" in ignored and "var" in ignored and ".env" in ignored  # mounted or secret, never baked in


def test_the_entrypoint_is_our_cli_and_its_default_command_parses(dockerfile):
    (entry,) = _instructions(dockerfile, "ENTRYPOINT")
    (cmd,) = _instructions(dockerfile, "CMD")
    assert json.loads(entry) == ["morlaif"]
    check_cli_args(json.loads(cmd))
