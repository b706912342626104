"""Judges: which of two responses better meets a principle, as p(A better than B).

`OpenAIJudge` asks any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp, Ollama) through the
`openai` package with MORLAIF's prompt, `max_tokens=1` and top logprobs, and reads p from the
logprobs of "A" and "B". Without logprobs the answer text becomes a hard label (marked as such); an
answer that is neither A nor B is an error, never a label. Every comparison is asked in both orders
and the two are averaged, so the judge's position bias cancels; both raw answers are kept.
Retries (429, 5xx, timeouts, with backoff honouring Retry-After) are the `openai` client's own.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from morlaif.errors import MorlaifError
from morlaif.judges.ratelimit import RateLimiter

__all__ = [
    "JUDGE_PROMPT",
    "PROMPT_VERSION",
    "Judgement",
    "OrderResult",
    "OpenAIJudge",
    "JudgeError",
    "p_first_from_logprobs",
    "order_from_completion",
    "combine",
]

PROMPT_VERSION = "morlaif-v1"
_ANSWER = re.compile(r"^(?:[Oo]ption\s*)?\(?([AB])\)?[.:]?$")  # "A", "B.", "(A)", "Option B"; not "a"
JUDGE_PROMPT = (
    "You will be given a conversation between a human and an AI assistant. Your job is to judge which of the "
    "two possible assistant responses is {principle}. Judge only by that; ignore which one comes first.\n\n"
    "Conversation:\n{conversation}\n\n"
    "Option A:\n{a}\n\n"
    "Option B:\n{b}\n\n"
    "Please respond only with A or B. The best response is option:"
)


class JudgeError(MorlaifError):
    """A judge call that yields no label; `reason` is a short stable key for the failure summary."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, kw_only=True, slots=True)
class OrderResult:
    """One order asked: p that the option shown first is better."""

    p_first: float
    hard: bool
    raw: dict[str, Any]
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class Judgement:
    p_a: float
    hard: bool
    per_order: dict[str, Any] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


def p_first_from_logprobs(top: dict[str, float]) -> float | None:
    """p(first option) from the top logprobs of the answer token; None when neither A nor B is there."""
    best: dict[str, float] = {}
    for tok, lp in top.items():
        t = tok.strip()
        if t in ("A", "B"):
            best[t] = max(best.get(t, -math.inf), lp)
    if not best:
        return None
    la, lb = best.get("A", -math.inf), best.get("B", -math.inf)
    m = max(la, lb)
    ea, eb = math.exp(la - m), math.exp(lb - m)
    return ea / (ea + eb)


def order_from_completion(body: dict[str, Any]) -> OrderResult:
    """One order's result from a chat completion (a response object as JSON)."""
    choices = body.get("choices") or []
    if not choices:
        raise JudgeError("judge returned no choices", reason="empty")
    choice = choices[0]
    text = ((choice.get("message") or {}).get("content") or "").strip()
    usage = body.get("usage") or {}
    tokens = {
        "prompt_tokens": int(usage.get("prompt_tokens") or 0),
        "completion_tokens": int(usage.get("completion_tokens") or 0),
    }
    content = (choice.get("logprobs") or {}).get("content") or []
    if content:
        first = content[0]
        top = {t["token"]: t["logprob"] for t in first.get("top_logprobs") or []} or {first["token"]: first["logprob"]}
        p = p_first_from_logprobs(top)
        if p is not None:
            return OrderResult(p_first=p, hard=False, raw={"text": text, "top_logprobs": top}, **tokens)
    m = _ANSWER.match(text)
    if m:
        return OrderResult(p_first=1.0 if m.group(1) == "A" else 0.0, hard=True, raw={"text": text}, **tokens)
    raise JudgeError(f"answer is neither A nor B: {text[:40]!r}", reason="unparseable")


def combine(ab: OrderResult, ba: OrderResult) -> Judgement:
    """Average the two orders: in "ba" the first option shown is B."""
    return Judgement(
        p_a=0.5 * (ab.p_first + (1.0 - ba.p_first)),
        hard=ab.hard or ba.hard,
        per_order={"ab": ab.raw, "ba": ba.raw},
        prompt_tokens=ab.prompt_tokens + ba.prompt_tokens,
        completion_tokens=ab.completion_tokens + ba.completion_tokens,
    )


class OpenAIJudge:
    """A judge behind an OpenAI-compatible chat completions endpoint."""

    def __init__(
        self,
        *,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 4,
        top_logprobs: int = 5,
        limiter: RateLimiter | None = None,
    ) -> None:
        from openai import AsyncOpenAI

        self.model = model
        self.top_logprobs = top_logprobs
        self.limiter = limiter or RateLimiter()
        self._secret = api_key if api_key and len(api_key) >= 8 else None
        self._client = AsyncOpenAI(
            base_url=base_url or None,  # an empty MORLAIF_JUDGE_BASE_URL means OpenAI's own
            api_key=api_key or "none",
            timeout=timeout,
            max_retries=max_retries,
        )

    def __repr__(self) -> str:
        return f"OpenAIJudge(model={self.model!r}, base_url={str(self._client.base_url)!r})"

    async def aclose(self) -> None:
        await self._client.close()

    def request_body(self, principle_phrase: str, conversation: str, first: str, second: str) -> dict[str, Any]:
        """The chat completion request for one order (also a line of a Batch API file)."""
        content = JUDGE_PROMPT.format(principle=principle_phrase, conversation=conversation, a=first, b=second)
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": True,
            "top_logprobs": self.top_logprobs,
        }

    async def ask(self, principle_phrase: str, conversation: str, first: str, second: str) -> OrderResult:
        import openai

        body = self.request_body(principle_phrase, conversation, first, second)
        await self.limiter.acquire(len(body["messages"][0]["content"]) // 4 + 1)  # rough token estimate
        try:
            resp = await self._client.chat.completions.create(**body)
        except openai.APITimeoutError as e:
            raise JudgeError(self._redact(f"judge timed out: {e}"), reason="timeout") from None
        except openai.RateLimitError as e:
            raise JudgeError(
                self._redact(f"judge rate-limited after retries: {e.message}"), reason="rate_limited"
            ) from None
        except openai.APIStatusError as e:
            msg = self._redact(f"judge answered HTTP {e.status_code}: {e.message}")
            raise JudgeError(msg, reason=f"http_{e.status_code}") from None
        except openai.APIConnectionError as e:
            raise JudgeError(self._redact(f"cannot reach the judge: {e}"), reason="connection") from None
        return order_from_completion(resp.model_dump())

    def _redact(self, message: str) -> str:
        """The judge's error text without our API key (a server may echo the key it refused)."""
        return message.replace(self._secret, "***") if self._secret else message

    async def judge(self, principle_phrase: str, conversation: str, a: str, b: str) -> Judgement:
        """Both orders, concurrently, combined."""
        t0 = time.perf_counter()
        ab, ba = await asyncio.gather(
            self.ask(principle_phrase, conversation, a, b), self.ask(principle_phrase, conversation, b, a)
        )
        j = combine(ab, ba)
        return Judgement(
            p_a=j.p_a,
            hard=j.hard,
            per_order=j.per_order,
            prompt_tokens=j.prompt_tokens,
            completion_tokens=j.completion_tokens,
            seconds=time.perf_counter() - t0,
        )
