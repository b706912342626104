"""PPO on a tiny random causal LM against a real PM server on loopback serving a rule principle."""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from morlaif.client import MorlaifClient
from pm_server.api import create_app
from pm_server.config import ServerSettings
from policy_trainer.ppo import GenerationConfig, PPOConfig, PPOTrainer, RewardConfig

WORDS = "good bad cat dog sun rain tree stone blue red one two three four five six".split()  # noqa: SIM905


def tiny_lm(seed: int = 0) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    vocab = {"[PAD]": 0, "[UNK]": 1, "<s>": 2, "</s>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="[PAD]", unk_token="[UNK]"
    )
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=2, eos_token_id=3,
    )  # fmt: skip
    return LlamaForCausalLM(cfg), tokenizer


@pytest.fixture
def rule_server(live_server, tiny_encoder_dir, tmp_path):
    """A PM server whose only principle is a rule: 1 when the response says "good", else 0."""
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([{"name": "says_good", "kind": "regex", "pattern": r"\bgood\b"}]))
    settings = ServerSettings(
        base_model=str(tiny_encoder_dir), adapter_root=tmp_path / "none", rules_file=rules, insecure_dev=True
    )
    return live_server(create_app(settings)).start()


def run(server_url: str, kl_coef: float, steps: int, seed: int = 0) -> list[dict[str, float]]:
    torch.manual_seed(seed)
    lm, tok = tiny_lm(seed)
    prompts = [" ".join(WORDS[(i * 3 + j) % len(WORDS)] for j in range(3)) for i in range(16)]
    with MorlaifClient(server_url, api_key=None) as client:
        trainer = PPOTrainer(
            lm,
            tok,
            client,
            config=PPOConfig(batch_size=16, mini_batch_size=8, learning_rate=3e-3, init_kl_coef=kl_coef,
                             adaptive_kl=False, normalize_rewards=False),  # fmt: skip
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
