"""PPO on a tiny random causal LM against a real PM server on loopback serving a rule principle."""

from __future__ import annotations

import statistics

import torch

from morlaif.client import MorlaifClient
from policy_trainer.config import GenerationConfig, PPOConfig, RewardConfig
from policy_trainer.ppo import PPOTrainer
from rigs.tiny_lm import WORDS, tiny_lm


def run(server_url: str, kl_coef: float, steps: int, seed: int = 0) -> list[dict[str, float]]:
    torch.manual_seed(seed)
    lm, tok = tiny_lm(seed)
    prompts = [" ".join(WORDS[(i * 3 + j) % len(WORDS)] for j in range(3)) for i in range(16)]
    with MorlaifClient(server_url, api_key=None) as client:
        trainer = PPOTrainer(
            lm,
            tok,
            client,
            config=PPOConfig(
                batch_size=16,
                mini_batch_size=8,
                learning_rate=3e-3,
                init_kl_coef=kl_coef,
                adaptive_kl=False,
                normalize_rewards=False,
            ),  # fmt: skip
            generation=GenerationConfig(max_new_tokens=6),
            reward=RewardConfig(url=server_url, weights={"says_good": 1.0}),
        )
        return [trainer.step(prompts) for _ in range(steps)]


def test_ppo_raises_the_reward_while_kl_stays_bounded(rule_server):
    hist = run(rule_server.url, kl_coef=0.05, steps=40)
    first = statistics.mean(h["reward"] for h in hist[:5])
    last = statistics.mean(h["reward"] for h in hist[-10:])
    assert first < 0.45 and last > first + 0.35, [round(h["reward"], 2) for h in hist]
    assert max(h["kl"] for h in hist) < 20.0
    assert all(h["reward_wait_seconds"] >= 0 and "score/says_good" in h for h in hist)


def test_a_large_kl_penalty_keeps_the_policy_near_the_reference(rule_server):
    hist = run(rule_server.url, kl_coef=5.0, steps=40)
    first = statistics.mean(h["reward"] for h in hist[:5])
    last = statistics.mean(h["reward"] for h in hist[-10:])
    assert last < first + 0.3, [round(h["reward"], 2) for h in hist]
    assert statistics.mean(h["kl"] for h in hist[-5:]) < 1.0
