"""The shared run-folder format and checkpoint mechanism: what the trainers write and the console reads."""

from __future__ import annotations

import json
import os
import random

import pytest
import torch

from morlaif.checkpoint import Checkpoint, CheckpointError, rng_state, set_rng_state
from morlaif.run_folder import RunFolder, find_runs


def test_a_checkpoint_round_trips_and_replaces_the_previous_one_whole(tmp_path):
    ck = Checkpoint(tmp_path / "checkpoint")
    assert not ck.exists() and ck.read_meta() is None
    with pytest.raises(CheckpointError):
        ck.read_weights()
    ck.write({"w": torch.arange(4.0).view(2, 2).t()}, {"step": 1, "t": torch.ones(3)}, meta={"step": 1})
    ck.write({"w": torch.zeros(2, 2)}, {"step": 2, "t": torch.ones(3)})  # no meta this time: none left over
    assert ck.exists() and ck.read_meta() is None
    assert ck.read_state()["step"] == 2 and torch.equal(ck.read_weights()["w"], torch.zeros(2, 2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert sorted(p.name for p in ck.path.iterdir()) == ["state.pt", "weights.safetensors"]


def test_a_write_stopped_between_its_renames_leaves_the_previous_checkpoint_readable(tmp_path):
    ck = Checkpoint(tmp_path / "checkpoint")
    ck.write({"w": torch.ones(2)}, {"step": 3}, meta={"step": 3})
    os.replace(ck.path, ck.old)  # the first rename done, the second not
    assert ck.exists() and ck.read_state()["step"] == 3 and ck.read_meta() == {"step": 3}
    ck.write({"w": torch.ones(2)}, {"step": 4})
    assert ck.read_state()["step"] == 4 and not ck.old.exists() and not ck.tmp.exists()


def test_rng_state_restores_torch_and_python_and_reads_the_older_cpu_key():
    saved = rng_state()
    a = (torch.rand(3), random.random())
    set_rng_state(saved)
    assert torch.equal(torch.rand(3), a[0]) and random.random() == a[1]
    set_rng_state({"cpu": saved["torch"]})  # PM training's checkpoints before the shared mechanism
    assert torch.equal(torch.rand(3), a[0])


def test_metrics_are_appended_read_past_a_torn_line_and_truncated(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.write_config({"ppo": {"kl_target": 3.0}})
    for step in (1, 2, 3):
        run.append_metrics({"step": step, "reward": 0.1 * step})
    with run.metrics_path.open("a") as f:
        f.write('[1]\n{"step": true}\n{"step": 4, "rew')  # not objects with an integer step, then a torn line
    log = run.read_metrics()
    assert [r["step"] for r in log.rows] == [1, 2, 3] and log.total_lines == 6
    assert [n for n, _ in log.bad] == [4, 5, 6] and log.bad[-1][1].startswith("invalid JSON")
    assert [r["step"] for r in run.read_metrics(max_lines=4).rows] == [3]
    run.truncate_metrics(2)
    assert [json.loads(x)["step"] for x in run.metrics_path.read_text().splitlines()] == [1, 2]
    assert run.read_config() == {"ppo": {"kl_target": 3.0}} and run.read_policy_manifest() is None


def test_find_runs_lists_only_named_children_whose_metrics_stay_inside(tmp_path):
    root, outside = tmp_path / "runs", tmp_path / "outside"
    for d in (root / "a", root / ".hidden", outside):
        d.mkdir(parents=True)
        (d / "metrics.jsonl").write_text('{"step": 1}\n')
    (root / "no-metrics").mkdir()
    os.symlink(outside, root / "escape")
    runs = find_runs(root)
    assert list(runs) == ["a"] and runs["a"].metrics_path == (root / "a" / "metrics.jsonl").resolve()
    assert find_runs(tmp_path / "missing") == {}
