"""Test helpers: a tiny random-initialised causal LM over a 16-word vocabulary (milliseconds a step on CPU)."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["WORDS", "tiny_lm", "save_tiny_lm", "word_prompts"]

WORDS = "good bad cat dog sun rain tree stone blue red one two three four five six".split()  # noqa: SIM905


def tiny_lm(seed: int = 0):  # -> (LlamaForCausalLM, PreTrainedTokenizerFast)
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

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


def save_tiny_lm(path: Path, seed: int = 0) -> Path:
    model, tokenizer = tiny_lm(seed)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def word_prompts(n: int) -> list[str]:
    """n distinct three-word prompts."""
    out = []
    for i in range(n):
        a, b = divmod(i, len(WORDS))
        out.append(" ".join((WORDS[i % len(WORDS)], WORDS[(a + 3) % len(WORDS)], WORDS[(b * 5 + a) % len(WORDS)])))
    return list(dict.fromkeys(out))
