"""TRL's GRPOTrainer with `morlaif.client.RemoteReward` against a real PM server, through the example script."""

from __future__ import annotations

import json
import math

from dialogue import load_example

from rigs.tiny_lm import word_prompts


def test_two_grpo_steps_against_a_pm_server(rule_server, tiny_lm_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in word_prompts(16)))
    trainer = load_example("grpo_remote_reward").main(
        [
            "--url", rule_server.url, "--model", str(tiny_lm_dir), "--prompts", str(prompts),
            "--steps", "2", "--batch-size", "4", "--num-generations", "4", "--max-completion-length", "8",
            "--num-prompts", "16", "--out", str(tmp_path / "grpo"),
        ]
    )  # fmt: skip
    steps = [h for h in trainer.state.log_history if "rewards/morlaif_linear/mean" in h]
    assert [h["step"] for h in steps] == [1, 2]
    for h in steps:
        reward, says_good = h["rewards/morlaif_linear/mean"], h["morlaif/says_good"]
        # one rule principle, weight 1: the reward is the share of completions that say "good"
        assert 0.0 <= reward <= 1.0 and math.isclose(reward, says_good, abs_tol=1e-6)
        assert not math.isnan(h["loss"])
    assert trainer.state.global_step == 2
    assert (tmp_path / "grpo" / "policy" / "config.json").exists()
