"""Rollouts of a PPO step: one sampled response per query, each from its own seeded random stream.

Response i of step s is sampled from a random stream seeded by (run seed, s, i), where i is its place in the
*global* batch. The same step therefore gives the same responses whether one process generates the whole
batch or N data-parallel processes each generate their shard, and whichever other rows share its batch.

Two backends (`generation.backend`):

* ``transformers`` (default): `generate()` on the policy itself. Sampling is Gumbel-max (Gumbel 1954;
  Maddison et al., "A* Sampling", 2014): argmax over tokens of logits/T + g with g ~ Gumbel(0, 1) drawn from
  the row's own generator is an exact sample of softmax(logits/T); top-k and top-p first set the excluded
  logits to -inf, as transformers' own warpers (which are used) do.
* ``vllm``: a colocated vLLM engine (GPU only, ``pip install -e '.[gpu]'``) generates, one
  `SamplingParams(seed=...)` per response (vLLM seeds each request's own generator); after every PPO update
  the policy's weights are pushed into it, through TRL's `VLLMGeneration` (which merges LoRA and gathers
  FSDP / ZeRO-3 shards, as GRPOTrainer does).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["GumbelSampler", "VLLMRollouts", "check_backend", "generate_hf", "response_mask", "row_seed"]


def row_seed(seed: int, step: int, row: int) -> int:
    """The seed of response `row` (its index in the global batch) of PPO step `step` (0-based): 63 bits."""
    digest = hashlib.sha256(f"morlaif-rollout/{seed}/{step}/{row}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class GumbelSampler:
    """A transformers logits processor that turns greedy decoding into sampling, row by row.

    `seeds[i]` seeds row i's generator; each call adds i.i.d. Gumbel(0, 1) noise to every logit of the row, so
    that the argmax that greedy decoding takes is an exact draw from the softmax of the (warped) logits.
    """

    def __init__(self, seeds: Sequence[int]) -> None:
        self.seeds = list(seeds)
        self.generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.generators is None:
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        vocab = scores.shape[-1]
        u = torch.stack(
            [torch.rand(vocab, generator=g, device=scores.device, dtype=torch.float32) for g in self.generators]
        )  # (B, V)
        gumbel = -torch.log(-torch.log(u.clamp(1e-12, 1.0 - 1e-7)))
        return scores.float() + gumbel  # -inf (excluded by top-k / top-p) stays -inf


def response_mask(responses: torch.Tensor, eos_id: int | None, pad_id: int) -> torch.Tensor:
    """1 for response tokens up to and including the first eos; 0 after (what generate pads with)."""
    if eos_id is None:
        return (responses != pad_id).float()
    is_eos = responses == eos_id
    after_eos = (is_eos.long().cumsum(1) - is_eos.long()) > 0  # (B, R) strictly after the first eos
    return (~after_eos).float()


@torch.no_grad()
def generate_hf(
    lm: Any, tokenizer: Any, queries: list[str], seeds: Sequence[int], g: Any, *, synced: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """Sample one response per query with `generate()`.

    Returns (prompt_ids (B, P) left-padded, prompt_mask (B, P), responses (B, R) padded after eos,
    response_mask (B, R), decoded texts). `g` is the run's GenerationConfig; `synced` keeps every rank
    stepping until all are done (FSDP, ZeRO-3: each forward is a collective).
    """
    from transformers import GenerationConfig as HFGenerationConfig
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    device = next(lm.parameters()).device
    enc = tokenizer(queries, return_tensors="pt", padding=True, truncation=True, max_length=g.max_prompt_tokens).to(
        device
    )
    processors: list[Any] = [TemperatureLogitsWarper(g.temperature)]
    if g.top_k > 0:
        processors.append(TopKLogitsWarper(g.top_k))
    if g.top_p < 1.0:
        processors.append(TopPLogitsWarper(g.top_p))
    processors.append(GumbelSampler(seeds))
    config = HFGenerationConfig(
        do_sample=False,  # the argmax of Gumbel-perturbed logits: a sample (see GumbelSampler)
        max_new_tokens=g.max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    out = lm.generate(
        **enc, generation_config=config, logits_processor=LogitsProcessorList(processors), synced_gpus=synced
    )
    prompt_ids, prompt_mask = enc["input_ids"], enc["attention_mask"]
    responses = out[:, prompt_ids.shape[1] :]  # (B, R)
    mask = response_mask(responses, tokenizer.eos_token_id, tokenizer.pad_token_id)
    texts = [
        tokenizer.decode(r[: int(m.sum())], skip_special_tokens=True) for r, m in zip(responses, mask, strict=True)
    ]
    return prompt_ids, prompt_mask.float(), responses, mask, texts


# ------------------------------------------------------------------------------------------------ vLLM
def check_backend(backend: str) -> None:
    """Raise ValueError, saying what is missing, when `backend` cannot run on this machine."""
    if backend == "transformers":
        return
    if backend != "vllm":
        raise ValueError(f"generation.backend: {backend!r} is not one of transformers, vllm")
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise ValueError(
            "generation.backend: vllm needs the vllm package, which is not installed "
            "(pip install -e '.[gpu]' in the project, on a machine with a CUDA GPU), or set generation.backend: "
            "transformers"
        )
    if not torch.cuda.is_available():
        raise ValueError("generation.backend: vllm needs a CUDA GPU and none is visible; use transformers")


class VLLMRollouts:
    """A colocated vLLM engine that samples the rollouts and is given the policy's weights after each update.

    Built on TRL's `VLLMGeneration` (colocate mode) for the engine and the weight sync; sampling goes
    straight to `LLM.generate` with one seeded `SamplingParams` per response.
    """

    def __init__(self, model: Any, accelerator: Any, tokenizer: Any, g: Any) -> None:
        check_backend("vllm")
        from trl.generation.vllm_generation import VLLMGeneration

        self.tokenizer = tokenizer
        self.g = g
        self.engine = VLLMGeneration(
            model,
            accelerator,
            tokenizer,
            mode="colocate",
            gpu_memory_utilization=g.vllm_gpu_memory_utilization,
            max_model_length=g.max_prompt_tokens + g.max_new_tokens,
            temperature=g.temperature,
            top_p=g.top_p,
            top_k=g.top_k,
            max_completion_length=g.max_new_tokens,
        )

    def sync_weights(self) -> None:
        """Push the policy's current weights into the engine (LoRA merged; shards gathered)."""
        self.engine.sync_weights()

    def generate(self, prompt_ids: list[list[int]], seeds: Sequence[int]) -> list[list[int]]:
        """Response token ids, one list per prompt (eos included when the response ended)."""
        from vllm import SamplingParams

        g = self.g
        params = [
            SamplingParams(
                n=1,
                temperature=g.temperature,
                top_p=g.top_p,
                top_k=g.top_k if g.top_k > 0 else -1,
                max_tokens=g.max_new_tokens,
                seed=s,
            )  # fmt: skip
            for s in seeds
        ]
        prompts = [{"prompt_token_ids": ids} for ids in prompt_ids]
        outputs = self.engine.llm.generate(prompts, sampling_params=params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outputs]
