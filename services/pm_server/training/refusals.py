"""Refusal pairs: teach a PM when a refusal is right by the prompt, not by the refusal's wording.

A PM trained on red-team preferences (HH-RLHF harmless-base) learns that an apology scores well, whatever was
asked: the harmlessness PM trained on them and XSTest alone (the `v2` default) scored "I am sorry, I cannot help
with that." 1.1 standard deviations above a correct answer to "How do I boil an egg?". Anthropic's own
harmlessness data has this flaw, which Constitutional AI (Bai et al. 2022, arXiv:2212.08073) set out to remove: a
harmless assistant is also non-evasive. XSTest (Röttger et al. 2024, arXiv:2308.01263) pairs the two cases, but
with 250 safe prompts.

`refusal_pairs` makes both cases from preference data a user already has, one pair per prompt:

* ``prefer="answer"`` on requests that are fine to answer (HH-RLHF helpful prompts): the human-chosen reply is
  better than a stock refusal ("needless refusal");
* ``prefer="refusal"`` on harmful requests (HH-RLHF harmless-base red-team prompts): a stock refusal is better
  than the reply the human rejected as the more harmful one.

Both sides use the same refusals (`STOCK_REFUSALS`, picked by the prompt's hash), so the wording alone predicts
nothing: only the prompt says which side wins. Pairs whose answer is itself a refusal (`STOCK_REFUSAL_RE`) are
skipped. The labels are an assumption about the prompts, stated in each pair's ``source``
(``refusal-pairs/answer``, ``refusal-pairs/refuse``): use prompts whose kind is known.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal

from morlaif.principles import STOCK_REFUSAL_RE
from pm_server.training.pairs import Pair

__all__ = ["STOCK_REFUSALS", "refusal_pairs"]

#: How assistants refuse, in the phrasings policies most often produce.
STOCK_REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I am sorry, I cannot help with that.",
    "I'm not able to help with that request.",
    "As an AI language model, I cannot answer that.",
    "I apologize, but I cannot provide that information.",
    "Sorry, I can't assist with that.",
    "I cannot comply with this request.",
    "I'd rather not answer that.",
    "I'm sorry, but I won't be able to do that.",
    "I can't help you with this. Is there something else I can do for you?",
    "I'm sorry, I can't provide help with that request.",
    "As an AI, I'm not able to assist with this.",
)


def _refusal_for(prompt: str) -> str:
    h = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:4], "big")
    return STOCK_REFUSALS[h % len(STOCK_REFUSALS)]


def refusal_pairs(
    pairs: Sequence[Pair], *, prefer: Literal["answer", "refusal"], principle: str, limit: int | None = None
) -> list[Pair]:
    """Pairs of a stock refusal against a real reply, one per prompt of `pairs` (the first pair of each prompt).

    ``prefer="answer"``: chosen is the pair's better reply (by its label), rejected a stock refusal (the prompts must
    be fine to answer). ``prefer="refusal"``: chosen is a stock refusal, rejected the pair's worse reply (the prompts
    must be harmful requests). The reply that would play the answer is skipped when it is itself a refusal, and so
    is a pair without a prompt. Up to `limit` pairs, in input order; `principle` labels them all.
    """
    out: list[Pair] = []
    seen: set[str] = set()
    for p in pairs:
        if limit is not None and len(out) >= limit:
            break
        better, worse = (p.chosen, p.rejected) if p.p >= 0.5 else (p.rejected, p.chosen)
        reply = better if prefer == "answer" else worse
        if not p.prompt.strip() or p.prompt in seen or not reply or STOCK_REFUSAL_RE.search(reply):
            continue
        seen.add(p.prompt)
        refusal = _refusal_for(p.prompt)
        chosen, rejected = (reply, refusal) if prefer == "answer" else (refusal, reply)
        side = "answer" if prefer == "answer" else "refuse"
        out.append(Pair(p.prompt, chosen, rejected, principle=principle, source=f"refusal-pairs/{side}"))
    return out
