"""k8s/: every overlay rendered by a real kustomize (kubectl), validated by kubernetes-validate, and wired up."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from rigs.cli_args import CliMismatch, check_cli_args, cli_env_vars

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
KUBECTL = shutil.which("kubectl")
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
pytestmark = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not installed (apt-get install kubectl; `make test` does)"
)
kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed (pip install -e .[dev])")


def render(overlay: str) -> list[dict]:
    res = subprocess.run([KUBECTL, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def configmap_env(docs: list[dict]) -> dict[str, str]:
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("morlaif-config")]
    return dict(cm["data"])


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in args and env values."""
    return re.sub(r"\$\(([A-Z0-9_]+)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def test_overlays_exist():
    assert {"cpu", "gpu", "external-db"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates_strictly(overlay):
    docs = render(overlay)
    for d in docs:
        try:
            kv.validate(d, kv.latest_version(), strict=True)
        except kv.ValidationError as e:
            pytest.fail(f"{overlay}: {d['kind']}/{d['metadata']['name']}: {e.message} at {list(e.path)}")
    assert all(d["metadata"].get("namespace") == "morlaif" for d in docs if d["kind"] != "Namespace")


def test_the_validator_rejects_a_broken_manifest():
    (dep,) = [d for d in render("cpu") if d["kind"] == "Deployment" and d["metadata"]["name"] == "pm-server"]
    bad = copy.deepcopy(dep)
    bad["spec"]["replicas"] = "two"
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, kv.latest_version(), strict=True)
    bad = copy.deepcopy(dep)
    pod_spec(bad)["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, kv.latest_version(), strict=True)
    template = yaml.safe_load((K8S / "base" / "secret-template.yaml").read_text())
    kv.validate(template, kv.latest_version(), strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pm_server_probes_scaling_and_wiring(overlay):
    docs = render(overlay)
    dep = by_kind(docs, "Deployment")["pm-server"]
    c = pod_spec(dep)["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    assert pod_spec(dep)["securityContext"]["runAsNonRoot"] is True
    labels = dep["spec"]["template"]["metadata"]["labels"]
    svc = by_kind(docs, "Service")["pm-server"]
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["pm-server"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "pm-server"}
    pdb = by_kind(docs, "PodDisruptionBudget")["pm-server"]
    assert all(labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items())
    # the adapters come from a volume, and the ConfigMap's principles and weights are mounted where it says
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    env = configmap_env(docs)
    assert mounts["adapters"] == env["MORLAIF_ADAPTER_ROOT"]
    assert Path(env["MORLAIF_SCALARIZER_FILE"]).parent.as_posix() == mounts["principles"]
    # every configMap or Secret referenced exists (generated names resolved), or is the documented secret
    names = {d["metadata"]["name"] for d in docs if d["kind"] in ("ConfigMap", "Secret")}
    for v in pod_spec(dep)["volumes"]:
        if "configMap" in v:
            assert v["configMap"]["name"] in names


def test_the_configmap_carries_the_served_principles_and_the_fitted_weights():
    from morlaif.protocol import ScalarizerSpec
    from pm_server.serving.rules import DEFAULT_RULES, load_rules

    base = K8S / "base" / "config"
    assert load_rules(base / "rules.json") == DEFAULT_RULES
    assert ScalarizerSpec.from_file(base / "weights.json") == ScalarizerSpec.from_file(
        ROOT / "adapters" / "weights.json"
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_command_parses_in_our_cli_and_every_env_var_is_read(overlay):
    docs = render(overlay)
    cm = configmap_env(docs)
    known = cli_env_vars()
    workloads = [*by_kind(docs, "Deployment").values(), *by_kind(docs, "Job").values()]
    ours = [(w, c) for w in workloads for c in pod_spec(w)["containers"]
            if c["image"].startswith(("morlaif:", "morlaif-serve:"))]  # fmt: skip
    assert {w["metadata"]["name"] for w, _ in ours} == {"pm-server", "feedback-worker", "ppo-train"}
    for w, c in ours:
        env = dict(cm)
        literal_refs = set()
        for e in c.get("env", []):
            value = e.get("value")
            env[e["name"]] = expand(value, env) if value is not None else "from-a-secret-" + "x" * 16
            literal_refs |= set(re.findall(r"\$\(([A-Z0-9_]+)\)", value or ""))
        args = [expand(a, env) for a in c["args"]]
        if c.get("command") == ["accelerate"]:  # a data-parallel trainer: its launcher, then our command
            args = launched_command([expand(a, {"JOB_COMPLETION_INDEX": "1"}) for a in c["args"]])
        try:
            check_cli_args(args, env)
        except CliMismatch as e:
            pytest.fail(f"{overlay}/{w['metadata']['name']}: {e}")
        used_in_args = {m for a in c["args"] for m in re.findall(r"\$\(([A-Z0-9_]+)\)", a)}
        own = {e["name"] for e in c.get("env", [])}
        unread = sorted(k for k in own if k not in known | used_in_args | literal_refs | LAUNCHER_ENV)
        assert not unread, f"{overlay}/{w['metadata']['name']} sets variables nothing reads: {unread}"
    unread_cm = sorted(k for k in cm if k not in known and not any(f"$({k})" in json.dumps(c) for _, c in ours))
    assert not unread_cm, f"{overlay}: ConfigMap keys nothing reads: {unread_cm}"


# what torchrun (under `accelerate launch`) reads: how long it waits for its ranks to save after a SIGTERM
LAUNCHER_ENV = {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT"}


def launched_command(args: list[str]):  # -> the argparse namespace's `morlaif` argv
    """`accelerate launch ... -m morlaif ARGS` parsed and validated by accelerate's own launcher code; ARGS."""
    from accelerate.commands.launch import launch_command_parser

    assert args[0] == "launch", args
    ns = launch_command_parser().parse_args(args[1:])
    assert ns.module and ns.training_script == "morlaif", ns
    return list(ns.training_script_args)


def test_the_distributed_overlay_is_an_indexed_job_whose_pods_meet_at_rank_0():
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    docs = render("distributed")
    job = by_kind(docs, "Job")["ppo-train"]
    spec, pod = job["spec"], pod_spec(job)
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] >= 2
    assert "backoffLimit" not in spec and spec["backoffLimitPerIndex"] >= 1
    (c,) = pod["containers"]
    env = {e["name"]: e for e in c["env"]}
    index = env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert index == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert int(env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"]["value"]) < pod["terminationGracePeriodSeconds"]
    assert c["args"][c["args"].index("--machine_rank") + 1] == "$(JOB_COMPLETION_INDEX)"
    ns = launch_command_parser().parse_args([expand(a, {"JOB_COMPLETION_INDEX": "1"}) for a in c["args"][1:]])
    ns, _, _ = _validate_launch_command(ns)
    assert ns.multi_gpu and ns.num_machines == spec["completions"] and ns.machine_rank == 1
    gpus = int(c["resources"]["limits"]["nvidia.com/gpu"])
    assert ns.num_processes == gpus * ns.num_machines  # one rank per GPU of every node
    # rank 0's pod by the name the headless Service gives it
    svc = by_kind(docs, "Service")[pod["subdomain"]]
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    assert ns.main_process_ip == f"{job['metadata']['name']}-0.{svc['metadata']['name']}"
    assert {p["port"] for p in svc["spec"]["ports"]} == {ns.main_process_port}
    # every node reads the run folder (the checkpoint), rank 0 writes it
    pvc = by_kind(docs, "PersistentVolumeClaim")["morlaif-runs"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert "morlaif-runs" in claims
    # NCCL's shared memory: more than the 64 MiB a container gets by default
    (shm,) = [v for v in pod["volumes"] if v["name"] == "dshm"]
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]


def test_gpu_overlay_asks_for_gpus_and_runs_a_vllm_judge_the_workers_use():
    docs = render("gpu")
    deps = by_kind(docs, "Deployment")
    for name in ("pm-server", "vllm-judge"):
        c = pod_spec(deps[name])["containers"][0]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert pod_spec(deps[name])["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod_spec(by_kind(docs, "Job")["ppo-train"])["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert pod_spec(deps["pm-server"])["containers"][0]["image"] == "morlaif-serve:cuda"  # the serve target
    cm = configmap_env(docs)
    judge_svc = by_kind(docs, "Service")["vllm-judge"]
    assert cm["MORLAIF_JUDGE_BASE_URL"] == f"http://{judge_svc['metadata']['name']}:8000/v1"
    vllm_args = pod_spec(deps["vllm-judge"])["containers"][0]["args"]
    assert vllm_args[vllm_args.index("--served-model-name") + 1] == cm["MORLAIF_JUDGE_MODEL"]
    assert cm["MORLAIF_DEVICE"] == "cuda"


def test_external_db_overlay_drops_postgres_and_reads_the_dsn_from_the_secret():
    docs = render("external-db")
    assert not by_kind(docs, "StatefulSet") and "postgres" not in by_kind(docs, "Service")
    c = pod_spec(by_kind(docs, "Deployment")["feedback-worker"])["containers"][0]
    (dsn,) = [e for e in c["env"] if e["name"] == "MORLAIF_STORE_URL"]
    assert dsn["valueFrom"]["secretKeyRef"] == {"name": "morlaif-secrets", "key": "store-url"}
    base = render("cpu")
    assert by_kind(base, "StatefulSet")["postgres"]["spec"]["volumeClaimTemplates"]
