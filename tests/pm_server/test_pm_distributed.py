"""`morlaif pm train` data parallel: 2 processes under `accelerate launch` on this CPU (gloo) against the plain
command at the same global batch, and a run stopped with 2 processes resumed by 1.

Measured tolerance: without dropout (a base whose dropout is 0, LoRA dropout 0), 2 processes give the
1-process validation loss of every epoch within 1e-6 and LoRA weights within 2e-5 (float32 rounding of a batch
split in two, grown by Adam over 88 steps); the tests allow 1e-5 and 1e-4. The score head's bias is not seen by
the Bradley-Terry loss (it cancels in chosen - rejected), so Adam walks it on rounding noise in any run; the
package's calibration removes it: bias - calibration mean agrees within 1e-5. With dropout each rank draws its
own masks, and runs differ as runs with two seeds do. All in float32 (--no-bf16): on a CPU that computes bfloat16,
pm train's default, 2 processes differ from 1 by 2e-5 in validation loss."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from launching import accelerate_launch, launch_env
from safetensors.torch import load_file
from test_pm_cli import write_pairs

from rigs.pm_packages import politeness_pairs

pytestmark = pytest.mark.timeout(600)
TOL = 1e-5


@pytest.fixture
def base_without_dropout(tiny_encoder_dir, tmp_path):
    path = tmp_path / "base"
    shutil.copytree(tiny_encoder_dir, path)
    config = json.loads((path / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (path / "config.json").write_text(json.dumps(config))
    return path


def common(tmp_path, base, name):
    data = tmp_path / "polite.jsonl"
    if not data.exists():
        write_pairs(data, politeness_pairs(200))
    return ["pm", "train", "--principle", "politeness", "--data", str(data), "--base", str(base),
            "--max-length", "64", "--epochs", "8", "--patience", "8", "--batch-size", "16", "--lr", "3e-3",
            "--lora-dropout", "0", "--device", "cpu", "--no-bf16", "--quiet", "--version", "v1",
            "--out-root", str(tmp_path / name / "adapters"), "--run-dir", str(tmp_path / name / "run")]  # fmt: skip


def outputs(tmp_path, name):
    state = json.loads((tmp_path / name / "run" / "state.json").read_text())
    pkg = tmp_path / name / "adapters" / "politeness" / "v1"
    weights = {k: v for f in pkg.glob("*.safetensors") for k, v in load_file(str(f)).items()}
    return state, json.loads((pkg / "principle.json").read_text()), weights


def assert_same(a, b):
    (sa, ma, wa), (sb, mb, wb) = a, b
    assert [h["epoch"] for h in sa["history"]] == [h["epoch"] for h in sb["history"]]
    for x, y in zip(sa["history"], sb["history"], strict=True):
        assert abs(x["val_loss"] - y["val_loss"]) < TOL and x["val_accuracy"] == y["val_accuracy"]
    assert ma["metrics"]["val_accuracy"] == mb["metrics"]["val_accuracy"]
    assert abs(ma["calibration"]["std"] - mb["calibration"]["std"]) < TOL
    assert wa.keys() == wb.keys() and len(wa) > 2
    bias = next(k for k in wa if k.endswith("classifier.bias"))
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa if k != bias) < 1e-4
    shift_a = float(wa[bias]) - ma["calibration"]["mean"]
    shift_b = float(wb[bias]) - mb["calibration"]["mean"]
    assert abs(shift_a - shift_b) < TOL  # the calibrated scores agree


def test_two_processes_match_one_and_a_run_stopped_with_two_resumes_with_one(tmp_path, base_without_dropout):
    base = base_without_dropout
    plain = [sys.executable, "-m", "morlaif"]
    res = subprocess.run([*plain, *common(tmp_path, base, "one")], capture_output=True, text=True, timeout=300,
                         env=launch_env())  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    one = outputs(tmp_path, "one")
    assert one[1]["metrics"]["val_accuracy"] > 0.8  # it learnt the principle

    res = subprocess.run(accelerate_launch(2, *common(tmp_path, base, "two")), capture_output=True, text=True,
                         timeout=300, env=launch_env())  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("wrote ") == 1  # the main process reports; one package, one run directory
    assert_same(outputs(tmp_path, "two"), one)
    assert sorted(p.name for p in (tmp_path / "two" / "adapters").rglob("*") if p.is_dir()) == ["politeness", "v1"]

    # stopped by SIGTERM to the launcher after the first epoch, resumed by the plain command
    args = common(tmp_path, base, "stopped")
    proc = subprocess.Popen(accelerate_launch(2, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=launch_env())  # fmt: skip
    state_file = tmp_path / "stopped" / "run" / "state.json"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if state_file.is_file() and json.loads(state_file.read_text()).get("epoch", 0) >= 1:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    state = json.loads(state_file.read_text())
    assert not state["finished"] and 0 < state["epoch"] < 8, err[-3000:]
    assert err.count("interrupted; the checkpoint is saved") == 1
    stopped_at = state["step"]
    res = subprocess.run([*plain, *args], capture_output=True, text=True, timeout=300, env=launch_env())
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resuming {tmp_path / 'stopped' / 'run'} at step {stopped_at}" in res.stderr
    assert_same(outputs(tmp_path, "stopped"), one)
    ckpt = tmp_path / "stopped" / "run" / "checkpoint" / "state.pt"
    assert torch.load(ckpt, weights_only=True)["scheduler"]["last_epoch"] > 0
