"""Helpers to build tiny bases and random adapter packages: for tests, benchmarks and demos.

The models are real transformers/peft models (random weights, tiny configs) saved to disk and loaded
back through the same `from_pretrained` code the server uses on real checkpoints.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Literal

import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
)

from morlaif.principles import get_principle
from morlaif.protocol import Calibration
from pm_server.model.base import BaseModel, resolve_base_id
from pm_server.model.package import PackageManifest, save_package
from pm_server.model.template import InputTemplate
from pm_server.training.pairs import Pair
from pm_server.training.trainer import lora_targets

__all__ = ["make_tiny_base", "make_random_package", "make_head_package", "politeness_pairs"]


def make_tiny_base(
    path: Path,
    family: Literal["encoder", "decoder"] = "encoder",
    *,
    seed: int = 0,
    layers: int = 2,
    hidden: int = 32,
) -> Path:
    """A randomly initialised tiny BERT (encoder) or Llama (decoder) with MiniLM's tokenizer, saved at `path`."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_base_id("minilm"))
    torch.manual_seed(seed)
    if family == "encoder":
        cfg = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=hidden * 2,
            max_position_embeddings=256,
            num_labels=1,
            pad_token_id=tokenizer.pad_token_id,
        )
        model: torch.nn.Module = BertForSequenceClassification(cfg)
    else:
        cfg = LlamaConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=hidden * 2,
            max_position_embeddings=256,
            num_labels=1,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = LlamaForSequenceClassification(cfg)
    model.save_pretrained(path)  # type: ignore[attr-defined]
    tokenizer.save_pretrained(path)
    return path


def make_random_package(
    root: Path,
    base: BaseModel,
    principle: str,
    version: str = "v1",
    *,
    seed: int = 0,
    r: int = 4,
    layers_to_transform: list[int] | None = None,
    target_modules: list[str] | str | None = None,
    calibration: Calibration | None = None,
    template: InputTemplate | None = None,
    scale: float = 0.5,
) -> Path:
    """An adapter package with random (non-zero) LoRA weights and score head, as training would write it."""
    torch.manual_seed(seed)
    model = copy.deepcopy(base.model)
    cfg = LoraConfig(
        task_type="SEQ_CLS",
        r=r,
        lora_alpha=2 * r,
        init_lora_weights=False,
        layers_to_transform=layers_to_transform,
        target_modules=lora_targets(model, target_modules),
    )
    peft_model = get_peft_model(model, cfg)  # adapter "default": a principle name like "bias" breaks PEFT keys
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:  # LoRA A/B and the score head copy
                p.normal_(0.0, scale)
    try:
        phrase = get_principle(principle).judge_phrase
    except KeyError:
        phrase = f"the best for {principle}"
    manifest = PackageManifest(
        name=principle,
        judge_phrase=phrase,
        base_model=base.model_id,
        base_config_hash=base.config_hash,
        template=template or base.default_template,
        calibration=calibration or Calibration(),
        metrics={},
        provenance={"source": "rigs.pm_packages.make_random_package", "seed": seed},
    )
    return save_package(peft_model, "default", root / principle / version, manifest)


_WORDS_TEXT = "the a cat dog sun rain river stone green quick slow blue music paper tree house light"
_WORDS = _WORDS_TEXT.split()  # noqa: SIM905


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n))


def make_head_package(
    root: Path, base: BaseModel, principle: str, version: str = "v1", *, seed: int = 0, hidden: int | None = None
) -> Path:
    """A head-only package (kind `head`): a random score head for the frozen base (`hidden` inputs, default
    the base's)."""
    from pm_server.model.base import score_head
    from pm_server.model.package import save_head_package

    torch.manual_seed(seed)
    own = score_head(base.model)
    head = torch.nn.Linear(hidden or own.weight.shape[1], 1, bias=own.bias is not None)  # as training writes it
    manifest = PackageManifest(
        name=principle,
        kind="head",
        base_model=base.model_id,
        base_config_hash=base.config_hash,
        template=base.default_template,
        provenance={"source": "rigs.pm_packages.make_head_package", "seed": seed},
    )
    return save_head_package(head, root / principle / version, manifest)


def politeness_pairs(n: int, seed: int = 0) -> list[Pair]:
    """Synthetic principle "politeness": the response containing the word "please" is better."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = f"request {i}: {sentence(rng, 4)}"
        plain = sentence(rng, rng.randint(4, 9))
        words = plain.split()
        words.insert(rng.randint(0, len(words)), "please")
        polite = " ".join(words)
        if rng.random() < 0.5:  # make length useless: the plain one is often the longer
            plain = plain + " " + sentence(rng, 3)
        out.append(Pair(prompt=prompt, chosen=polite, rejected=plain, principle="politeness", source="synthetic"))
    return out
