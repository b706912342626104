"""docker-compose.yml, validated by a real Compose (Debian's docker-compose), and checked against the CLI."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from rigs.cli_args import CliMismatch, check_cli_args, cli_env_vars

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = shutil.which("docker-compose")
pytestmark = pytest.mark.skipif(
    COMPOSE is None, reason="docker-compose is not installed (apt-get install docker-compose; `make test` does)"
)
FILLED = {"MORLAIF_API_KEY": "k" * 32, "MORLAIF_ADMIN_KEY": "a" * 32, "POSTGRES_PASSWORD": "pw-from-env-file"}


def _env_file(tmp_path, fill: dict[str, str]):
    text = (ROOT / ".env.example").read_text()
    for k, v in fill.items():
        text = re.sub(rf"^{k}=.*$", f"{k}={v}", text, flags=re.M)
    path = tmp_path / "env"
    path.write_text(text)
    return path


def _config(tmp_path, fill: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env_file = _env_file(tmp_path, fill)
    argv = [COMPOSE, "-f", str(ROOT / "docker-compose.yml"), "--project-directory", str(ROOT), "--env-file",
            str(env_file), "--profile", "train", "--profile", "gpu", "config"]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    res = _config(tmp_path_factory.mktemp("compose"), FILLED)
    assert res.returncode == 0, res.stderr
    return yaml.safe_load(res.stdout)


def test_compose_file_validates_with_every_profile(rendered):
    services = rendered["services"]
    assert set(services) == {"postgres", "pm_server", "feedback_worker", "policy_trainer", "judge"}
    assert services["policy_trainer"]["profiles"] == ["train"] and services["judge"]["profiles"] == ["gpu"]
    for name in ("postgres", "pm_server", "feedback_worker", "judge"):
        assert services[name]["healthcheck"]["test"], name
    assert "readyz" in " ".join(services["pm_server"]["healthcheck"]["test"])
    assert services["feedback_worker"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "pgdata" in rendered["volumes"]
    # the store DSN carries the password from the env file, nowhere else
    dsn = services["feedback_worker"]["environment"]["MORLAIF_STORE_URL"]
    assert dsn == "postgresql+psycopg://morlaif:pw-from-env-file@postgres:5432/morlaif"
    # the worker is scalable: no fixed container name or host port
    assert "container_name" not in services["feedback_worker"] and "ports" not in services["feedback_worker"]


def test_no_secret_in_the_compose_file_and_missing_secrets_are_refused(tmp_path):
    text = (ROOT / "docker-compose.yml").read_text()
    for key in ("MORLAIF_API_KEY", "MORLAIF_ADMIN_KEY", "POSTGRES_PASSWORD"):
        assert re.search(rf"{key}: \$\{{{key}:\?", text), f"{key} must come from .env, required"
    res = _config(tmp_path, {})  # .env.example as shipped: the secrets are empty
    assert res.returncode != 0 and "set POSTGRES_PASSWORD in .env" in res.stderr


def test_every_service_command_parses_in_our_cli_and_every_env_var_is_read(rendered):
    known = cli_env_vars()
    ours = {n: s for n, s in rendered["services"].items() if "build" in s}
    assert set(ours) == {"pm_server", "feedback_worker", "policy_trainer"}
    for name, svc in ours.items():
        env = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
        try:
            check_cli_args(svc["command"], env)
        except CliMismatch as e:
            pytest.fail(f"{name}: {e}")
        unread = sorted(k for k in env if k not in known)
        assert not unread, f"{name} sets variables nothing reads: {unread}"
    dockerfile_env = re.findall(r"\b(MORLAIF_[A-Z_]+)=", (ROOT / "docker" / "Dockerfile").read_text())
    assert dockerfile_env and not [k for k in dockerfile_env if k not in known]
    example = re.findall(r"^(MORLAIF_[A-Z_]+)=", (ROOT / ".env.example").read_text(), flags=re.M)
    compose_only = {
        "MORLAIF_IMAGE",
        "MORLAIF_SERVE_IMAGE",
        "MORLAIF_ADAPTERS_DIR",
        "MORLAIF_MODELS_DIR",
        "MORLAIF_PUBLISH",
        "MORLAIF_JUDGE_MODEL",
        "MORLAIF_DATA_DIR",
        "MORLAIF_PYTHON_IMAGE",
        "MORLAIF_POSTGRES_IMAGE",
        "MORLAIF_TORCH_INDEX",
    }  # fmt: skip  (interpolated by compose itself)
    assert not [k for k in example if k not in known | compose_only]
    text = (ROOT / "docker-compose.yml").read_text()
    for k in compose_only & set(example):
        assert "${" + k in text, f"{k} in .env.example is not used by docker-compose.yml"


def test_the_checker_catches_a_wrong_command_and_an_unread_variable():
    with pytest.raises(CliMismatch, match="no sub-command 'serv'"):
        check_cli_args(["serv"])
    with pytest.raises(CliMismatch, match="--folow"):
        check_cli_args(["feedback", "run", "--judge", "x", "--folow"])
    with pytest.raises(CliMismatch, match="--steps"):
        check_cli_args(["ppo", "train", "--steps", "zero"])
    assert "MORLAIF_STORE_URL" in cli_env_vars() and "MORLAIF_NOT_A_SETTING" not in cli_env_vars()
