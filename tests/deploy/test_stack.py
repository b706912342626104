"""`docker compose up` for real: the image built, the stack up and healthy, a score with the key, a job labelled
by the local judge, PPO steps, `docker stop` of the trainer (a checkpoint, exit 143), two workers, `down -v`.

Runs where a Docker engine can (started if installed and stopped); skips, saying why, elsewhere. Base images
come from `docker_rig.base_images()`: the compose defaults when present, else stand-ins made from Debian's
packages. The stand-in bases, the dependency stages of the image and the torch index are kept as a cache
(`morlaif-standin/*`, var/smoke/); the images are removed at the end, down to those stages, so the next build
redoes the code layers only (about 10 s). The timings go to var/smoke/timings.json.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from conftest import free_port
from docker_rig import CACHE, ROOT, base_images, build_image, docker_env, engine_unavailable, sh

pytestmark = pytest.mark.timeout(1800)
IMAGE = "morlaif-smoke:test"  # the default target: every service but the PM server
SERVE_IMAGE = "morlaif-smoke-serve:test"  # the serve target: the PM server
CACHE_IMAGE, CACHE_STAGES = "morlaif-standin/cache", ("serve-deps", "full-deps")  # the dependency layers, kept
API_KEY = "smoke-api-key-0123456789abcdef"
ADMIN_KEY = "smoke-admin-key-0123456789abcdef"
HEALTH_TIMEOUT = 420


@dataclass
class Stack:
    project: str
    argv: list[str]
    url: str
    work: Path
    timings: dict[str, float] = field(default_factory=dict)

    def compose(self, *args: str, timeout: float = 600, check: bool = True, **kw) -> subprocess.CompletedProcess[str]:
        return sh([*self.argv, *args], timeout=timeout, check=check, env=docker_env(), **kw)

    def containers(self, service: str) -> list[str]:
        out = self.compose("ps", "-q", service).stdout.split()
        return [c for c in out if c]

    def state(self, container: str) -> dict:
        return json.loads(sh(["docker", "inspect", "-f", "{{json .State}}", container]).stdout)

    def wait_healthy(self, service: str, n: int = 1, timeout: float = HEALTH_TIMEOUT) -> float:
        started = time.monotonic()
        while True:
            ids = self.containers(service)
            states = [self.state(c) for c in ids]
            health = [s.get("Health", {}).get("Status") for s in states]
            if len(ids) == n and all(h == "healthy" for h in health):
                return time.monotonic() - started
            dead = [s for s in states if not s.get("Running")]
            if dead or time.monotonic() - started > timeout:
                logs = self.compose("logs", "--tail", "60", service, check=False).stdout
                pytest.fail(f"{service}: {len(ids)} containers, health {health}, states {dead}\n{logs[-4000:]}")
            time.sleep(2)

    def exec(self, service: str, *argv: str, input: str | None = None, timeout: float = 300) -> str:  # noqa: A002
        return self.compose("exec", "-T", service, *argv, input=input, timeout=timeout).stdout

    def volume_python(self, code: str) -> str:
        """Python in a fresh container of the image on the stack's cache volume (/var/lib/morlaif)."""
        volume = f"{self.project}_cache"
        return sh(["docker", "run", "--rm", "--entrypoint", "python", "-v", f"{volume}:/var/lib/morlaif", IMAGE,
                   "-c", code], timeout=300).stdout  # fmt: skip


def _env_file(path: Path, values: dict[str, str]) -> Path:
    text = (ROOT / ".env.example").read_text()
    for k, v in values.items():
        text, n = re.subn(rf"^{k}=.*$", f"{k}={v}", text, flags=re.M)
        if n == 0:
            text += f"{k}={v}\n"
    path.write_text(text)
    return path


def _leftovers(project: str) -> dict[str, list[str]]:
    label = f"label=com.docker.compose.project={project}"
    return {
        "containers": sh(["docker", "ps", "-aq", "--filter", label]).stdout.split(),
        "volumes": sh(["docker", "volume", "ls", "-q", "--filter", label]).stdout.split(),
        "networks": sh(["docker", "network", "ls", "-q", "--filter", label]).stdout.split(),
        "images": [i for ref in (IMAGE, SERVE_IMAGE) for i in sh(["docker", "images", "-q", ref]).stdout.split()],
    }


@pytest.fixture(scope="module")
def stack():
    why = engine_unavailable()
    if why:
        pytest.skip(f"no Docker engine: {why}")
    timings: dict[str, float] = {}
    t = time.monotonic()
    bases = base_images()
    timings["bases_s"] = time.monotonic() - t
    timings["build_s"] = build_image(IMAGE, bases["python"])
    timings["build_serve_s"] = build_image(SERVE_IMAGE, bases["python"], target="serve")
    for stage in CACHE_STAGES:  # tagged, so removing the images keeps them: the next build redoes the code only
        ref = f"{CACHE_IMAGE}:{stage}"
        before = sh(["docker", "images", "-q", ref]).stdout.strip()
        build_image(ref, bases["python"], target=stage)
        if before and before != sh(["docker", "images", "-q", ref]).stdout.strip():
            sh(["docker", "rmi", before], check=False)  # the dependencies changed: the old cache goes
    for name, ref in (("image_mb", IMAGE), ("serve_image_mb", SERVE_IMAGE)):
        timings[name] = int(sh(["docker", "image", "inspect", "-f", "{{.Size}}", ref]).stdout) / 2**20
    project = f"morlaifsmoke{os.getpid()}"
    # bind-mounted folders must be readable by the image's user (uid 10001): not pytest's private tmp
    work = CACHE / project
    shutil.rmtree(work, ignore_errors=True)
    (work / "data").mkdir(parents=True)
    (work / "models").mkdir()
    prompts = ["How do I boil an egg?", "Name a colour.", "What is the capital of France?", "Say something kind."]
    (work / "data" / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    # a small run: 4 prompts a step, 8 new tokens; save_every far away, so only SIGTERM can leave a checkpoint
    (work / "data" / "ppo.yaml").write_text(
        "ppo:\n  batch_size: 4\n  mini_batch_size: 2\n  ppo_epochs: 1\n"
        "generation:\n  max_new_tokens: 8\nrun:\n  steps: 1000\n  save_every: 1000\n"
    )
    for p in [work, *work.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    port = free_port()
    env = _env_file(work / "env", {
        "MORLAIF_API_KEY": API_KEY, "MORLAIF_ADMIN_KEY": ADMIN_KEY, "POSTGRES_PASSWORD": "smoke-pg-password",
        "MORLAIF_JUDGE_MODEL": "local", "MORLAIF_IMAGE": IMAGE, "MORLAIF_SERVE_IMAGE": SERVE_IMAGE,
        "MORLAIF_PYTHON_IMAGE": bases["python"],
        "MORLAIF_POSTGRES_IMAGE": bases["postgres"], "MORLAIF_PUBLISH": f"127.0.0.1:{port}",
        "MORLAIF_ADAPTERS_DIR": str(ROOT / "adapters"), "MORLAIF_MODELS_DIR": str(work / "models"),
        "MORLAIF_DATA_DIR": str(work / "data"), "MORLAIF_PPO_CONFIG": "/data/ppo.yaml",
    })  # fmt: skip
    argv = ["docker-compose", "-p", project, "-f", str(ROOT / "docker-compose.yml"), "--project-directory",
            str(ROOT), "--env-file", str(env)]  # fmt: skip
    s = Stack(project=project, argv=argv, url=f"http://127.0.0.1:{port}", work=work, timings=timings)
    try:
        t = time.monotonic()
        s.compose("up", "-d")  # here, not in a test: every test below needs the stack, whatever ran before
        s.timings["up_s"] = time.monotonic() - t
        for service in ("postgres", "pm_server", "feedback_worker"):
            s.timings[f"healthy_{service}_s"] = s.wait_healthy(service)
        yield s
    finally:
        s.compose("--profile", "train", "down", "-v", "--remove-orphans", check=False)
        sh(["docker", "rmi", IMAGE, SERVE_IMAGE], check=False)  # down to the tagged dependency stages
        shutil.rmtree(work, ignore_errors=True)
        (CACHE / "timings.json").write_text(json.dumps({k: round(v, 1) for k, v in s.timings.items()}, indent=2))


def test_1_up_every_service_healthy(stack):
    for service in ("postgres", "pm_server", "feedback_worker"):  # the fixture waited for each one's health
        (container,) = stack.containers(service)
        assert stack.state(container)["Health"]["Status"] == "healthy", service
    assert stack.timings["healthy_pm_server_s"] < HEALTH_TIMEOUT


def test_2_the_readmes_score_call_answers_with_the_key(stack):
    body = {
        "items": [{"prompt": "How do I boil an egg?", "response": "Simmer it for nine minutes, then cool it."},
                  {"prompt": "How do I boil an egg?", "response": "I am sorry, I cannot help with that."}],
        "scalarizer": {"name": "linear", "weights": {"helpfulness": 1, "harmlessness": 1, "no_refusal": 1}},
    }  # fmt: skip
    assert httpx.post(stack.url + "/v1/score", json=body, timeout=60).status_code == 401  # keys are mandatory here
    r = httpx.post(stack.url + "/v1/score", json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
    assert r.status_code == 200, r.text
    rewards = [item["reward"] for item in r.json()["results"]]
    assert len(rewards) == 2 and all(isinstance(x, float) for x in rewards) and rewards[0] > rewards[1]


def test_2b_the_pm_server_runs_the_smaller_serve_image(stack):
    (pm,) = stack.containers("pm_server")
    assert json.loads(sh(["docker", "inspect", "-f", "{{json .Config.Image}}", pm]).stdout) == SERVE_IMAGE
    res = sh(["docker", "exec", pm, "python", "-c", "import trl"], check=False)
    assert res.returncode == 1 and "No module named 'trl'" in res.stderr  # the trainer's dependencies stay out
    assert stack.timings["serve_image_mb"] < 0.8 * stack.timings["image_mb"]


def test_3_a_worker_labels_a_job_with_the_local_judge_in_postgresql(stack):
    pair = {"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "Berlin.",
            "principle": "factuality"}  # fmt: skip
    stack.exec("feedback_worker", "sh", "-c", "cat > /tmp/pairs.jsonl", input=json.dumps(pair) + "\n")
    stack.exec("feedback_worker", "morlaif", "feedback", "import", "/tmp/pairs.jsonl")
    stack.exec("feedback_worker", "morlaif", "feedback", "enqueue", "--principles", "factuality", "--judge", "local")
    t = time.monotonic()
    while time.monotonic() - t < 300:
        status = stack.exec("feedback_worker", "morlaif", "feedback", "status", "--judge", "local")
        row = next((ln.split() for ln in status.splitlines() if ln.startswith("factuality")), None)
        if row and row[3] == "1":
            break
        time.sleep(3)
    else:
        pytest.fail(f"the job was not labelled in 300 s:\n{status}")
    stack.timings["label_s"] = time.monotonic() - t
    assert "postgresql" in stack.exec("feedback_worker", "sh", "-c", "echo $MORLAIF_STORE_URL")


def test_4_ppo_steps_then_docker_stop_saves_a_checkpoint(stack):
    t = time.monotonic()
    stack.compose("--profile", "train", "up", "-d", "policy_trainer")
    (trainer,) = stack.containers("policy_trainer")
    metrics = "/var/lib/morlaif/runs/ppo/metrics.jsonl"
    while True:
        out = stack.compose("exec", "-T", "policy_trainer", "sh", "-c", f"cat {metrics} 2>/dev/null", check=False)
        if out.stdout.count("\n") >= 1:
            break
        state = stack.state(trainer)
        if not state["Running"] or time.monotonic() - t > 600:
            logs = stack.compose("logs", "--tail", "60", "policy_trainer", check=False).stdout
            pytest.fail(f"no PPO step in {time.monotonic() - t:.0f} s: {state}\n{logs[-4000:]}")
        time.sleep(3)
    stack.timings["first_ppo_step_s"] = time.monotonic() - t
    stack.wait_healthy("policy_trainer", timeout=120)  # its own check (before: the image's, unhealthy)
    t = time.monotonic()
    sh(["docker", "stop", trainer], timeout=600)  # SIGTERM, then SIGKILL after the service's grace period
    stack.timings["docker_stop_s"] = time.monotonic() - t
    state = stack.state(trainer)
    logs = stack.compose("logs", "--tail", "20", "policy_trainer", check=False).stdout
    assert state["ExitCode"] == 143 and not state["OOMKilled"], logs[-3000:]  # before: 137, killed
    assert "run the same command again to resume" in logs
    got = json.loads(stack.volume_python(
        "import json, torch; s = torch.load('/var/lib/morlaif/runs/ppo/checkpoint/state.pt', weights_only=True); "
        "rows = open('/var/lib/morlaif/runs/ppo/metrics.jsonl').read().splitlines(); "
        "print(json.dumps({'saved': s['steps_done'], 'logged': json.loads(rows[-1])['step']}))"
    ))  # fmt: skip
    assert got["saved"] == got["logged"] >= 1  # every finished step is in the checkpoint (save_every: 1000)


def test_5_the_kubernetes_jobs_pod_stops_as_its_failure_policy_expects(stack):
    """No cluster here: the Job's container runs as its pod would (its args, user, no init: the trainer is
    PID 1, its volumes), reaching the PM server by the Service's name; `docker stop -t` with the pod's
    terminationGracePeriodSeconds is what the kubelet does. The exit code must be one the Job's pod failure
    policy ignores, with the checkpoint saved, so the Job's next pod resumes."""
    import yaml

    docs = [d for d in yaml.safe_load_all(sh(["kubectl", "kustomize", str(ROOT / "k8s" / "overlays" / "cpu")]).stdout)
            if d] if shutil.which("kubectl") else pytest.skip("kubectl is not installed")  # fmt: skip
    (job,) = [d for d in docs if d["kind"] == "Job" and d["metadata"]["name"] == "ppo-train"]
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    ignored = [r["onExitCodes"]["values"] for r in job["spec"]["podFailurePolicy"]["rules"] if "onExitCodes" in r
               and r["action"] == "Ignore"]  # fmt: skip
    (pm,) = stack.containers("pm_server")
    network = f"{stack.project}_default"
    ip = sh(["docker", "inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}', pm])
    config = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    env = next(v["data"] for k, v in config.items() if k.startswith("morlaif-config"))
    volume = f"{stack.project}_k8sruns"
    argv = ["docker", "run", "-d", "--network", network, "--add-host", f"pm-server:{ip.stdout.strip()}",
            "--user", f"{pod['securityContext']['runAsUser']}",
            "-v", f"{ROOT / 'k8s' / 'base' / 'config'}:/etc/morlaif:ro", "-v", f"{stack.work / 'data'}:/data:ro",
            "-v", f"{volume}:/runs", "-v", f"{stack.project}_cache:/var/lib/morlaif",
            "--label", f"com.docker.compose.project={stack.project}",
            *[x for k, v in env.items() for x in ("-e", f"{k}={v}")],
            "-e", f"MORLAIF_API_KEY={API_KEY}", "-e", "MORLAIF_PPO_CONFIG=/data/ppo.yaml",  # the small run
            IMAGE, *c["args"]]  # fmt: skip
    # the pod's fsGroup makes its volumes writable by its group; a new Docker volume is root's
    fs_group = pod["securityContext"]["fsGroup"]
    sh(["docker", "run", "--rm", "--user", "0", "--entrypoint", "chown", "-v", f"{volume}:/runs", IMAGE,
        f"{pod['securityContext']['runAsUser']}:{fs_group}", "/runs"])  # fmt: skip
    cid = sh(argv).stdout.strip()
    try:
        t = time.monotonic()
        while "metrics.jsonl" not in sh(["docker", "exec", cid, "ls", "/runs/ppo"], check=False).stdout:
            state = stack.state(cid)
            if not state["Running"] or time.monotonic() - t > 600:
                pytest.fail(f"{state}\n{sh(['docker', 'logs', cid], check=False).stderr[-3000:]}")
            time.sleep(3)
        assert sh(["docker", "exec", cid, "cat", "/proc/1/cmdline"]).stdout.split("\0")[1].endswith("morlaif")
        grace = pod["terminationGracePeriodSeconds"]
        t = time.monotonic()
        sh(["docker", "stop", "-t", str(grace), cid], timeout=grace + 60)
        stack.timings["k8s_pod_stop_s"] = time.monotonic() - t
        state = stack.state(cid)
        assert [state["ExitCode"]] in ignored, (state, sh(["docker", "logs", cid], check=False).stderr[-3000:])
        assert stack.timings["k8s_pod_stop_s"] < grace
        ls = sh(["docker", "run", "--rm", "--entrypoint", "ls", "-v", f"{volume}:/runs", IMAGE, "/runs/ppo/checkpoint"])
        assert "state.pt" in ls.stdout
    finally:
        sh(["docker", "rm", "-f", cid], check=False)
        sh(["docker", "volume", "rm", volume], check=False)


def test_6_two_workers_on_the_same_store(stack):
    t = time.monotonic()
    stack.compose("up", "-d", "--no-recreate", "--scale", "feedback_worker=2", "feedback_worker")
    stack.timings["second_worker_healthy_s"] = stack.wait_healthy("feedback_worker", n=2) + time.monotonic() - t


def test_7_one_model_cache_for_every_service(stack):
    """The local judge and the trainer share MORLAIF_MODEL_CACHE: one dequantised SmolLM2 in the volume."""
    found = stack.volume_python(
        "import pathlib; print('\\n'.join(sorted(str(p.parent) for p in "
        "pathlib.Path('/var/lib/morlaif').rglob('model.safetensors'))))"
    ).split()
    assert found == ["/var/lib/morlaif/models/SmolLM2-135M-Instruct"]  # before: a second one under var/models
    logs = stack.compose("--profile", "train", "logs", "--no-color", check=False).stdout.splitlines()
    dequantised = [ln for ln in logs if "dequantising" in ln]
    assert len(dequantised) == 1, dequantised  # by the first worker; trainer, Job pod and second worker read it
    bars = [ln[:200] for ln in logs if "Loading weights" in ln or "it/s]" in ln]
    assert not bars  # before: transformers' bars in the worker's log under --quiet (and in the server's)


def test_8_down_leaves_nothing_behind(stack):
    t = time.monotonic()
    stack.compose("--profile", "train", "down", "-v", "--remove-orphans")
    stack.timings["down_s"] = time.monotonic() - t
    sh(["docker", "rmi", IMAGE, SERVE_IMAGE])
    assert _leftovers(stack.project) == {"containers": [], "volumes": [], "networks": [], "images": []}
