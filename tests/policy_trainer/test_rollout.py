"""Rollout sampling: Gumbel-max draws from the warped softmax, one seeded stream per response, so a response
does not depend on which other rows share its batch (or its process); the vLLM backend's clear refusal."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from policy_trainer.config import GenerationConfig
from policy_trainer.rollout import GumbelSampler, VLLMRollouts, check_backend, generate_hf, row_seed
from rigs.tiny_lm import tiny_lm


def test_gumbel_max_samples_the_softmax_of_the_warped_logits():
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper

    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]])
    n = 20_000
    scores = logits.repeat(n, 1)
    scores = TopKLogitsWarper(3)(None, TemperatureLogitsWarper(0.7)(None, scores))
    picks = GumbelSampler([row_seed(0, 0, i) for i in range(n)])(None, scores).argmax(-1)
    freq = torch.bincount(picks, minlength=5).float() / n
    want = torch.softmax(torch.tensor([2.0, 1.0, 0.5]) / 0.7, -1)
    # 4.5 standard errors of a proportion near 0.5 over 20,000 draws: 0.016
    assert torch.allclose(freq[:3], want, atol=0.016), (freq, want)
    assert freq[3:].sum() == 0  # what top-k excluded is never drawn


def test_a_response_depends_on_its_seed_not_on_the_rows_beside_it():
    lm, tok = tiny_lm(0)
    tok.padding_side = "left"
    g = GenerationConfig(max_new_tokens=6)
    queries = ["good cat", "bad dog sun rain", "tree", "blue red one two three"]
    seeds = [row_seed(7, 3, i) for i in range(4)]
    *_, whole = generate_hf(lm, tok, queries, seeds, g)
    *_, half = generate_hf(lm, tok, queries[2:], seeds[2:], g)  # another batch, other padding
    assert half == whole[2:]
    *_, again = generate_hf(lm, tok, ["good cat"] * 8, [row_seed(7, 3, i) for i in range(8)], g)
    assert len(set(again)) > 1  # one prompt, eight seeds: sampled, not greedy


def test_the_vllm_backend_without_vllm_is_refused_before_anything_loads(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the vllm backend may well run here")
    needs = r"generation.backend: vllm needs the vllm package.*pip install -e '\.\[gpu\]'"
    with pytest.raises(ValueError, match=needs):
        check_backend("vllm")
    lm, tok = tiny_lm(0)
    with pytest.raises(ValueError, match="needs the vllm package"):  # the engine and its weight sync: no ImportError
        VLLMRollouts(lm, None, tok, GenerationConfig(backend="vllm"))
    with pytest.raises(ValueError, match="is not one of transformers, vllm"):
        check_backend("sglang")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "hi"}) + "\n")
    argv = [sys.executable, "-m", "morlaif", "ppo", "train", "--set", "generation.backend=vllm", "--prompts",
            str(prompts), "--set", "ppo.batch_size=1", "--set", "ppo.mini_batch_size=1", "--set",
            "data.eval_fraction=0", "--url", "http://127.0.0.1:9", "--out", str(tmp_path / "run")]  # fmt: skip
    res = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "error: generation.backend: vllm needs the vllm package" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "run").exists()
