"""`morlaif ppo train` end to end on a tiny causal LM against real PM servers on loopback: config files,
logs, plots, checkpoints, exact resume, and a PM server that goes away."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from policy_trainer.config import ConfigError, TrainConfig, default_yaml, load_config
from policy_trainer.train import RewardUnavailableError, train
from rigs.tiny_lm import word_prompts


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in word_prompts(40)))
    return path


def tiny_config(tiny_lm_dir, prompt_file, out, url, *, steps=4, lora=True, **extra):
    overrides = [
        f"model.name_or_path={tiny_lm_dir}",
        f"model.lora={str(lora).lower()}",
        "model.lora_r=4",
        "model.device=cpu",
        f"data.prompts={prompt_file}",
        "data.chat_template=false",
        "ppo.batch_size=8",
        "ppo.mini_batch_size=4",
        "ppo.ppo_epochs=2",
        "ppo.learning_rate=0.003",
        "generation.max_new_tokens=5",
        f"reward.url={url}",
        "reward.weights={says_good: 1.0}",
        "reward.max_retries=1",
        "reward.timeout=5",
        f"run.out_dir={out}",
        f"run.steps={steps}",
        "run.save_every=2",
        *[f"{k}={v}" for k, v in extra.items()],
    ]
    return load_config(overrides=overrides)


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def same(a, b):
    keys = ("reward", "kl", "policy_loss", "value_loss", "entropy", "clipfrac", "approx_kl", "beta")
    return all(math.isclose(a[k], b[k], rel_tol=0, abs_tol=1e-6) for k in keys)


# ----------------------------------------------------------------------------------------- config
def test_the_documented_defaults_load_back_and_are_morlaifs(tmp_path):
    text = default_yaml()
    assert "# Target sequence KL (nats) of the adaptive controller." in text
    (tmp_path / "ppo.yaml").write_text(text)
    cfg = load_config(tmp_path / "ppo.yaml")
    assert cfg == TrainConfig()
    p = cfg.ppo
    assert (p.init_kl_coef, p.kl_target, p.gamma, p.lam, p.clip_range, p.clip_range_value, p.ppo_epochs) == (
        0.05, 6.0, 1.0, 0.95, 0.2, 0.2, 4,
    )  # fmt: skip
    assert p.adaptive_kl and p.normalize_rewards and p.reward_clip > 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ppo:\n  batch_size: 16\n  batch_sise: 8\n", "ppo.yaml:3: ppo.batch_sise: unknown key"),
        ("model:\n  lora: true\nppo:\n  learning_rate: fast\n", "ppo.yaml:4: ppo.learning_rate: Input should be"),
        ("ppo:\n  batch_size: 16\n  mini_batch_size: 5\n", "ppo.yaml:1: ppo: Value error, mini_batch_size 5 must"),
        ("run:\n  steps: [1,\n", "ppo.yaml:3: not valid YAML"),
        ("- a\n- b\n", "expected a mapping of sections"),
    ],
)
def test_a_bad_config_names_the_file_line_and_key(tmp_path, text, expected):
    (tmp_path / "ppo.yaml").write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "ppo.yaml")
    assert expected in str(e.value)


def test_overrides_win_over_the_file_and_bad_ones_are_named(tmp_path):
    (tmp_path / "ppo.yaml").write_text("ppo:\n  batch_size: 16\n  mini_batch_size: 4\n")
    cfg = load_config(tmp_path / "ppo.yaml", overrides=["ppo.batch_size=8", "reward.weights={a: 2, b: 0.5}"])
    assert cfg.ppo.batch_size == 8 and cfg.reward.weights == {"a": 2.0, "b": 0.5}
    with pytest.raises(ConfigError, match="override: ppo.clip_range: Input should be a valid number"):
        load_config(overrides=["ppo.clip_range=wide"])
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        load_config(overrides=["ppo.clip_range"])


# ---------------------------------------------------------------------------------------- runs
def test_a_run_logs_every_step_and_writes_a_policy_and_a_plot(rule_server, tiny_lm_dir, prompt_file, tmp_path):
    from policy_trainer.plot import plot_run
    from policy_trainer.train import load_trained_policy

    out = tmp_path / "run"
    result = train(tiny_config(tiny_lm_dir, prompt_file, out, rule_server.url, steps=3), progress_bar=False)
    assert result.steps_done == 3 and not result.interrupted
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("reward", "score/says_good", "kl", "beta", "entropy", "clipfrac", "value_loss", "approx_kl",
                "seconds", "generate_seconds", "reward_wait_seconds", "samples_per_second", "tokens_per_second",
                "lr"):  # fmt: skip
        assert all(math.isfinite(r[key]) for r in rows), key
    assert all(0 <= r["reward_wait_seconds"] + r["generate_seconds"] <= r["seconds"] for r in rows)
    assert all(r["samples_per_second"] == pytest.approx(8 / r["seconds"]) for r in rows)
    assert rows[0]["reward"] == rows[0]["score/says_good"]  # one principle, weight 1: reward = its mean score
    assert list((out / "tb").glob("events.out.tfevents.*"))
    png = plot_run(out)
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    # the saved policy loads (LoRA merged into its base) and generates
    model, tok = load_trained_policy(out, device="cpu")
    ids = tok("good cat", return_tensors="pt")
    assert model.generate(**ids, max_new_tokens=3, do_sample=False).shape[1] >= ids["input_ids"].shape[1]


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_a_resumed_run_continues_exactly_as_an_uninterrupted_one(rule_server, tiny_lm_dir, prompt_file, tmp_path, lora):
    straight = tmp_path / "straight"
    train(tiny_config(tiny_lm_dir, prompt_file, straight, rule_server.url, steps=4, lora=lora), progress_bar=False)
    resumed = tmp_path / "resumed"
    first = train(
        tiny_config(tiny_lm_dir, prompt_file, resumed, rule_server.url, steps=2, lora=lora), progress_bar=False
    )
    assert first.steps_done == 2
    second = train(
        tiny_config(tiny_lm_dir, prompt_file, resumed, rule_server.url, steps=4, lora=lora), progress_bar=False
    )
    assert second.resumed_from == 2 and second.steps_done == 4
    a, b = metrics(straight), metrics(resumed)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert all(same(x, y) for x, y in zip(a, b, strict=True)), (a, b)
    wa = load_file(str(straight / "checkpoint" / "weights.safetensors"))
    wb = load_file(str(resumed / "checkpoint" / "weights.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    state = torch.load(resumed / "checkpoint" / "state.pt", weights_only=True)
    assert state["steps_done"] == 4 and state["optimizer"]["state"] and "rng" in state


def test_a_rerun_with_another_config_is_refused(rule_server, tiny_lm_dir, prompt_file, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(tiny_lm_dir, prompt_file, out, rule_server.url, steps=1), progress_bar=False)
    changed = tiny_config(tiny_lm_dir, prompt_file, out, rule_server.url, steps=2, **{"ppo.learning_rate": 0.1})
    with pytest.raises(ConfigError, match=r"another configuration \(ppo.learning_rate: 0.003 -> 0.1\)"):
        train(changed, progress_bar=False)


def test_when_the_pm_server_goes_away_the_run_saves_and_stops_then_resumes_exactly(
    make_rule_server, tiny_lm_dir, prompt_file, tmp_path
):
    first = make_rule_server()
    straight = tmp_path / "straight"
    train(tiny_config(tiny_lm_dir, prompt_file, straight, first.url, steps=4), progress_bar=False)

    out = tmp_path / "broken"

    def stop_after_three(step, stats):
        if step == 3:
            second.stop()

    second = make_rule_server()
    with pytest.raises(RewardUnavailableError, match="step 4: no rewards from the PM server .* checkpoint at step 3"):
        train(tiny_config(tiny_lm_dir, prompt_file, out, second.url, steps=4), progress_bar=False,
              on_step=stop_after_three)  # fmt: skip
    assert [r["step"] for r in metrics(out)] == [1, 2, 3]
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=True)
    assert state["steps_done"] == 3  # the failed step trained on nothing
    # the server is back (at another address): the same run continues where it stopped
    third = make_rule_server()
    result = train(tiny_config(tiny_lm_dir, prompt_file, out, third.url, steps=4), progress_bar=False)
    assert result.resumed_from == 3
    assert all(same(x, y) for x, y in zip(metrics(straight), metrics(out), strict=True))


def test_a_pm_server_restarted_mid_run_costs_no_reward(make_rule_server, tiny_lm_dir, prompt_file, tmp_path):
    """The PM server goes down after step 2 and comes back on the same address a second later: the trainer's
    retries bridge the gap, the run finishes every step, and every step's numbers equal an undisturbed run."""
    import threading
    import time

    first = make_rule_server()
    straight = tmp_path / "straight"
    train(tiny_config(tiny_lm_dir, prompt_file, straight, first.url, steps=4), progress_bar=False)

    server = make_rule_server()
    port = server.port
    restarted = []

    def restart_after_two(step, stats):
        if step == 2:
            server.stop()

            def back():
                time.sleep(1.0)
                restarted.append(make_rule_server(port))

            threading.Thread(target=back, daemon=True).start()

    out = tmp_path / "restarted"
    cfg = tiny_config(tiny_lm_dir, prompt_file, out, server.url, steps=4, **{"reward.max_retries": 10})
    result = train(cfg, progress_bar=False, on_step=restart_after_two)
    assert restarted and restarted[0].port == port  # it did go away and come back
    assert result.resumed_from == 0 and [r["step"] for r in metrics(out)] == [1, 2, 3, 4]
    assert all(same(x, y) for x, y in zip(metrics(straight), metrics(out), strict=True))
    assert metrics(out)[2]["reward_wait_seconds"] > 0.5  # step 3 waited for the server to come back


def test_a_principle_the_server_lacks_fails_before_the_policy_loads(rule_server, tiny_lm_dir, prompt_file, tmp_path):
    cfg = tiny_config(tiny_lm_dir, prompt_file, tmp_path / "run", rule_server.url, **{"reward.weights": "{tact: 1}"})
    with pytest.raises(ConfigError, match="does not serve tact"):
        train(cfg, progress_bar=False)
    assert not (tmp_path / "run").exists()


def test_sigterm_finishes_the_step_saves_a_checkpoint_and_exits_143(rule_server, tiny_lm_dir, prompt_file, tmp_path):
    """`docker stop` / a Kubernetes pod's end: before, SIGTERM killed the run and lost up to save_every steps."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    cfg = tiny_config(tiny_lm_dir, prompt_file, out, rule_server.url, steps=200, **{"run.save_every": 200})
    (tmp_path / "ppo.yaml").write_text(default_yaml(cfg))
    heartbeat = tmp_path / "alive"
    argv = [sys.executable, "-m", "morlaif", "ppo", "train", "--quiet",
            "--heartbeat", str(heartbeat)]  # fmt: skip
    env = {**os.environ, "MORLAIF_PPO_CONFIG": str(tmp_path / "ppo.yaml")}  # what compose sets
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").is_file() and len((out / "metrics.jsonl").read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    touched = heartbeat.stat().st_mtime
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "checkpoint in" in err and "run the same command again to resume" in err and "Traceback" not in err
    done = [r["step"] for r in metrics(out)]
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=True)
    assert 2 <= state["steps_done"] == done[-1] < 200  # the step in hand finished and was saved
    assert heartbeat.stat().st_mtime >= touched  # touched at the start and after every step
    res = subprocess.run([*argv, "--steps", str(done[-1] + 1)], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert [r["step"] for r in metrics(out)] == [*done, done[-1] + 1]


def test_a_run_folder_it_cannot_make_is_a_clear_error(rule_server, tiny_lm_dir, prompt_file, tmp_path):
    """Found by the Docker smoke test: a volume the trainer's user cannot write gave a traceback and exit 1."""
    from typer.testing import CliRunner

    from morlaif_cli.main import app

    (tmp_path / "a-file").write_text("not a folder")
    out = tmp_path / "a-file" / "run"
    (tmp_path / "ppo.yaml").write_text(default_yaml(tiny_config(tiny_lm_dir, prompt_file, out, rule_server.url)))
    res = CliRunner().invoke(app, ["ppo", "train", "--config", str(tmp_path / "ppo.yaml"), "--quiet"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"error: Not a directory: {out}" in res.output


def test_steps_logged_without_a_checkpoint_are_not_logged_twice_by_the_rerun(
    rule_server, tiny_lm_dir, prompt_file, tmp_path
):
    """Found by a fresh-clone check: a second `docker compose stop` stops mid-step before any checkpoint; the
    rerun started at step 1 and metrics.jsonl held steps 1 and 2 twice."""
    import shutil

    out = tmp_path / "run"
    train(tiny_config(tiny_lm_dir, prompt_file, out, rule_server.url, steps=2), progress_bar=False)
    shutil.rmtree(out / "checkpoint")  # what a stop that saved nothing leaves: logged steps, no checkpoint
    result = train(tiny_config(tiny_lm_dir, prompt_file, out, rule_server.url, steps=3), progress_bar=False)
    assert result.resumed_from == 0
    assert [r["step"] for r in metrics(out)] == [1, 2, 3]
