"""`morlaif ppo train` data parallel: 2 processes under `accelerate launch` on this CPU (gloo), against real PM
servers on loopback, compared step by step with 1 process at the same global batch.

The tolerance is measured: 2 processes give the per-step reward, KL, losses, entropy and clip fraction of one
process within 1e-6 (float32 rounding of a batch split in two); the tests allow 1e-5."""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import time

import pytest
import torch
from launching import accelerate_launch, launch_env
from test_ppo_run import metrics, tiny_config

from policy_trainer.config import default_yaml, load_config
from policy_trainer.train import train

pytestmark = pytest.mark.timeout(600)

KEYS = ("reward", "score/says_good", "kl", "beta", "policy_loss", "value_loss", "entropy", "clipfrac", "approx_kl")
TOL = 1e-5


@pytest.fixture
def prompt_file(tmp_path):
    from rigs.tiny_lm import word_prompts

    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in word_prompts(40)))
    return path


def config_file(tmp_path, tiny_lm_dir, prompt_file, url, **extra):
    path = tmp_path / "ppo.yaml"
    path.write_text(default_yaml(tiny_config(tiny_lm_dir, prompt_file, tmp_path / "unused", url, **extra)))
    return path


def launch(n, cfg_path, out, steps, timeout=300):
    argv = accelerate_launch(n, "ppo", "train", "-c", cfg_path, "--quiet", "--out", out, "--steps", steps)
    return subprocess.run(argv, capture_output=True, text=True, env=launch_env(), timeout=timeout)


def assert_same_steps(rows, reference):
    assert [r["step"] for r in rows] == [r["step"] for r in reference[: len(rows)]]
    for got, want in zip(rows, reference, strict=False):
        for k in KEYS:
            assert math.isclose(got[k], want[k], rel_tol=0, abs_tol=TOL), (got["step"], k, got[k], want[k])


def test_two_processes_match_one_write_one_set_of_outputs_and_resume_at_any_count(
    rule_server, tiny_lm_dir, prompt_file, tmp_path
):
    cfg = config_file(tmp_path, tiny_lm_dir, prompt_file, rule_server.url)
    # the reference: one plain process, 4 steps
    ref_out = tmp_path / "one"
    train(tiny_config(tiny_lm_dir, prompt_file, ref_out, rule_server.url, steps=4), progress_bar=False)
    reference = metrics(ref_out)
    # 2 processes, 2 steps: the same steps, written once by the main rank
    out = tmp_path / "two"
    res = launch(2, cfg, out, 2)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.count("done: 2 steps") == 1  # one report, from the main rank
    assert_same_steps(metrics(out), reference)
    assert len(metrics(out)) == 2
    assert len(list((out / "tb").glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "config.yaml", "metrics.jsonl", "policy", "tb"]
    assert torch.load(out / "checkpoint" / "state.pt", weights_only=True)["steps_done"] == 2
    # ... resumed by one process (a checkpoint taken at 2), then by two again (taken at 1): the same run
    train(tiny_config(tiny_lm_dir, prompt_file, out, rule_server.url, steps=3), progress_bar=False)
    res = launch(2, cfg, out, 4)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming" in res.stderr and res.stderr.count("resuming") == 1
    assert_same_steps(metrics(out), reference)
    assert len(metrics(out)) == 4
    one = torch.load(ref_out / "checkpoint" / "state.pt", weights_only=True)
    two = torch.load(out / "checkpoint" / "state.pt", weights_only=True)
    assert two["steps_done"] == 4 and math.isclose(two["kl_ctl"]["kl_coef"], one["kl_ctl"]["kl_coef"], rel_tol=1e-6)
    assert math.isclose(two["reward_moments"]["mean"], one["reward_moments"]["mean"], abs_tol=TOL)


def test_a_global_batch_that_does_not_split_over_the_processes_is_refused_naming_the_key(
    rule_server, tiny_lm_dir, prompt_file, tmp_path
):
    cfg = config_file(tmp_path, tiny_lm_dir, prompt_file, rule_server.url, **{"ppo.batch_size": 6,
                      "ppo.mini_batch_size": 3})  # fmt: skip
    res = launch(2, cfg, tmp_path / "run", 2)
    assert res.returncode != 0
    assert res.stderr.count("error: ppo.mini_batch_size = 3 must be a multiple of the number of processes (2)") == 1
    assert not (tmp_path / "run").exists()


@pytest.fixture
def one_rank_fails(live_server, tiny_encoder_dir, tmp_path):
    """A rule server that answers 503 to every request on the connection of the 3rd /v1/score request (one
    rank's client, at step 2) and to its retries; the other rank's requests are answered."""
    from pm_server.serving.api import create_app
    from pm_server.serving.config import ServerSettings

    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([{"name": "says_good", "kind": "regex", "pattern": r"\bgood\b"}]))
    settings = ServerSettings(
        base_model=str(tiny_encoder_dir), adapter_root=tmp_path / "none", rules_file=rules, insecure_dev=True
    )
    app = create_app(settings)
    seen = {"scores": 0, "bad": None}

    async def faulty(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/v1/score":
            seen["scores"] += 1
            if seen["scores"] == 3:
                seen["bad"] = tuple(scope["client"])
            if seen["bad"] == tuple(scope["client"]):
                await send(
                    {"type": "http.response.start", "status": 503, "headers": [(b"content-type", b"application/json")]}
                )
                await send(
                    {"type": "http.response.body", "body": b'{"error": {"message": "injected", "type": "unavailable"}}'}
                )
                return
        await app(scope, receive, send)

    server = live_server(faulty).start()
    server.seen = seen
    return server


def test_a_pm_server_failure_on_one_rank_saves_and_stops_every_rank_with_status_3(
    one_rank_fails, tiny_lm_dir, prompt_file, tmp_path
):
    cfg = config_file(tmp_path, tiny_lm_dir, prompt_file, one_rank_fails.url)
    out = tmp_path / "run"
    t0 = time.monotonic()
    res = launch(2, cfg, out, 4, timeout=240)
    assert time.monotonic() - t0 < 200  # no rank waits forever for the one that failed
    assert one_rank_fails.seen["bad"] is not None
    # every rank stops with 3 once the main one has saved; the main one exits first (the others give it a moment
    # to report), and torchrun SIGTERMs the rest (143, or -15 when the signal lands before our handler)
    codes = re.findall(r"exitcode\s*: (-?\d+)", res.stderr)
    assert "3" in codes and set(codes) <= {"3", "143", "-15"}, res.stderr[-3000:]
    assert res.stderr.count("error: step 2: no rewards from the PM server") == 1
    assert "saved a checkpoint at step 1" in res.stderr
    assert [r["step"] for r in metrics(out)] == [1]
    assert torch.load(out / "checkpoint" / "state.pt", weights_only=True)["steps_done"] == 1


@pytest.mark.parametrize("how", ["SIGTERM to the launcher", "Ctrl-C to the terminal's process group"])
def test_a_stop_signal_stops_every_rank_after_the_same_step_with_a_checkpoint(
    rule_server, tiny_lm_dir, prompt_file, tmp_path, how
):
    """Kubernetes and `docker stop` signal the launcher, which passes SIGTERM on to every rank; Ctrl-C reaches
    the launcher and every rank, and the launcher passes it on again (the same request, not a second one)."""
    import os

    cfg = config_file(tmp_path, tiny_lm_dir, prompt_file, rule_server.url, **{"run.save_every": 500})
    out = tmp_path / "run"
    argv = accelerate_launch(2, "ppo", "train", "-c", cfg, "--quiet", "--out", out, "--steps", 500)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=launch_env(),
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").is_file() and len((out / "metrics.jsonl").read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    if how.startswith("SIGTERM"):
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert err.count("stopped at step") == 1, err[-3000:]
    done = [r["step"] for r in metrics(out)]
    assert done == list(range(1, len(done) + 1)) and 2 <= len(done) < 500
    assert torch.load(out / "checkpoint" / "state.pt", weights_only=True)["steps_done"] == done[-1]


@pytest.mark.parametrize("name", ["ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3", "cpu"])
def test_the_ready_launch_configurations_are_what_accelerate_launch_reads(name):
    """Read and validated by accelerate's own launcher code (the GPU ones cannot run here: no GPU)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from launching import ROOT

    from policy_trainer.config import PPOConfig
    from rigs.cli_args import check_cli_args

    path = ROOT / "configs" / "accelerate" / f"{name}.yaml"
    args = launch_command_parser().parse_args(["--config_file", str(path), "-m", "morlaif", "ppo", "train"])
    args, _, _ = _validate_launch_command(args)
    kind = {"ddp": "multi_gpu", "cpu": "multi_gpu", "fsdp": "use_fsdp"}.get(name, "use_deepspeed")
    assert getattr(args, kind) and args.num_processes >= 2
    if name.startswith("deepspeed"):
        assert args.zero_stage == int(name[-1]) and args.gradient_clipping == PPOConfig().max_grad_norm
    if name == "fsdp":
        assert int(args.fsdp_version) == 2 and args.fsdp_state_dict_type == "FULL_STATE_DICT"
    # the command its comment gives parses in our CLI
    (example,) = [line for line in path.read_text().splitlines() if "accelerate launch --config_file" in line]
    check_cli_args(example.split(" -m morlaif ", 1)[1].split())


@pytest.mark.slow
def test_two_processes_make_the_smollm2_cache_once_and_complete(rule_server, prompt_file, tmp_path):
    """Found by a fresh-clone check: both ranks dequantised SmolLM2 into the model cache, transformers wrote
    the weights from rank 0 only, rank 1's tokenizer-only copy won the rename, and every later run failed."""
    cache = tmp_path / "models"
    cfg = tmp_path / "ppo.yaml"
    cfg.write_text(default_yaml(load_config(overrides=[
        "model.name_or_path=smollm2", "model.device=cpu", f"data.prompts={prompt_file}", "data.chat_template=false",
        "ppo.batch_size=2", "ppo.mini_batch_size=2", "ppo.ppo_epochs=1", "generation.max_new_tokens=2",
        f"reward.url={rule_server.url}", "reward.weights={says_good: 1.0}", f"run.out_dir={tmp_path / 'run'}",
        "run.steps=1",
    ])))  # fmt: skip
    argv = accelerate_launch(2, "ppo", "train", "-c", cfg, "--quiet")
    res = subprocess.run(argv, capture_output=True, text=True, timeout=400,
                         env={**launch_env(), "MORLAIF_MODEL_CACHE": str(cache)})  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.count("dequantising") == 1  # one rank made it, the other read it
    assert (cache / "SmolLM2-135M-Instruct" / "model.safetensors").stat().st_size > 100_000_000
    assert [r["step"] for r in metrics(tmp_path / "run")] == [1]
