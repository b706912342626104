"""Test helpers: a tiny random-initialised causal LM over a 16-word vocabulary (milliseconds a step on CPU)."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["WORDS", "tiny_lm", "save_tiny_lm", "save_one_word_lm", "word_prompts"]

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


def save_one_word_lm(path: Path, word: str = "good", seed: int = 0) -> Path:
    """The tiny LM changed to say `word` at every step, whatever the prompt.

    Every embedding carries a large constant feature, the layers add nothing to the residual stream, and
    only `word`'s output row reads that feature, so its logit dominates at every position.
    """
    model, tokenizer = tiny_lm(seed)
    wid = tokenizer.convert_tokens_to_ids(word)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 10.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[wid, 0] = 5.0
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
