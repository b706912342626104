"""Batched sampling of responses from a causal LM (evaluation and data generation, not the PPO rollout)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from policy_trainer.data import render

__all__ = ["SamplingConfig", "generate_responses"]


@dataclass(kw_only=True)
class SamplingConfig:
    """How responses are sampled."""

    max_new_tokens: int = 48
    """Most tokens per response."""
    max_prompt_tokens: int = 256
    """Longer prompts lose their beginning."""
    temperature: float = 0.7
    """0: greedy."""
    top_p: float = 1.0
    """Nucleus sampling; 1: off."""
    batch_size: int = 8
    """Prompts per generate() call."""
    seed: int = 0
    """Seed of the sampling; the same seed gives the same responses on the same machine."""
    chat_template: bool = True
    """Wrap prompts in the tokenizer's chat template when it has one."""


@torch.no_grad()
def generate_responses(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    cfg: SamplingConfig,
    *,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """One response per prompt, in order; `on_batch(n)` after each batch of n prompts."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    device = next(model.parameters()).device
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)
    sample = cfg.temperature > 0
    out: list[str] = []
    try:
        for i in range(0, len(prompts), cfg.batch_size):
            chunk = [render(p, tokenizer, chat_template=cfg.chat_template) for p in prompts[i : i + cfg.batch_size]]
            enc = tokenizer(
                chunk, return_tensors="pt", padding=True, truncation=True, max_length=cfg.max_prompt_tokens
            ).to(device)
            ids = model.generate(
                **enc,
                do_sample=sample,
                max_new_tokens=cfg.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **({"temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": 0} if sample else {}),
            )
            new = ids[:, enc["input_ids"].shape[1] :]
            out.extend(t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True))
            if on_batch is not None:
                on_batch(len(chunk))
    finally:
        torch.random.set_rng_state(generator_state)
    return out
