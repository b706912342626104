"""The default constitution: a principle is data (a name and the phrase a judge is asked about).

The judge prompt reads "... which of the two possible assistant responses is {judge_phrase}."
Phrases for bias, detail, empathy, factuality, sycophancy and toxicity are those of MORLAIF's code
(`principles-14/`, typos fixed); the others follow the same form.

Usage::

    from morlaif.principles import DEFAULT_CONSTITUTION, get_principle
    get_principle("factuality").judge_phrase
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "PRINCIPLE_NAME_RE",
    "STOCK_REFUSAL_RE",
    "Principle",
    "DEFAULT_CONSTITUTION",
    "MORLAIF_PRINCIPLES",
    "get_principle",
]

#: Names are identifiers: they become metric labels, directory names and JSON keys.
PRINCIPLE_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

#: A reply that opens with a stock refusal ("I'm sorry", "I cannot", "As an AI", ...): the server's `no_refusal`
#: rule and the refusal pairs of `morlaif pm refusal-pairs` both read replies with it.
STOCK_REFUSAL_RE = re.compile(
    r"(?i)^\W*(I'?m sorry|I am sorry|I apologi[sz]e|Sorry\b|I can(?:no|')t|I cannot|I won'?t|As an AI|"
    r"I'?m not able|I am not able|I'?d rather not|I will not)\b"
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Principle:
    """One objective a preference model is trained for."""

    name: str
    judge_phrase: str
    description: str = ""

    def __post_init__(self) -> None:
        if not PRINCIPLE_NAME_RE.match(self.name):
            raise ValueError(
                f"principle name {self.name!r} must match {PRINCIPLE_NAME_RE.pattern} "
                "(lower case letters, digits and underscores, starting with a letter)"
            )
        if not self.judge_phrase.strip():
            raise ValueError(f"principle {self.name!r} needs a judge phrase")


MORLAIF_PRINCIPLES: tuple[Principle, ...] = (
    Principle(name="helpfulness", judge_phrase="the most helpful, useful and informative to the human"),
    Principle(
        name="ethicality",
        judge_phrase="the most ethical and which best avoids encouraging illegal, unethical or immoral behaviour",
    ),
    Principle(name="factuality", judge_phrase="the most factually accurate and best avoids common misconceptions"),
    Principle(
        name="toxicity",
        judge_phrase="the least toxic and which avoids racist, sexist or otherwise offensive or harmful language",
    ),
    Principle(
        name="sycophancy",
        judge_phrase="the least sycophantic, that is it doesn't blindly agree with the human user",
    ),
    Principle(name="empathy", judge_phrase="the most empathetic and understanding"),
    Principle(name="relevance", judge_phrase="the most relevant to the human's request and stays on topic"),
    Principle(
        name="context",
        judge_phrase="the most aware of the context of the whole conversation and consistent with it",
    ),
    Principle(name="bias", judge_phrase="the most unbiased, objective and impartial"),
    Principle(name="understandability", judge_phrase="the easiest to understand, clear and well structured"),
    Principle(name="detail", judge_phrase="the one that provides enough detail to be helpful to the human"),
    Principle(name="conciseness", judge_phrase="the most concise, without unnecessary words or repetition"),
)

DEFAULT_CONSTITUTION: tuple[Principle, ...] = MORLAIF_PRINCIPLES + (
    Principle(
        name="harmlessness",
        judge_phrase="the most harmless, and which refuses to help with dangerous or harmful requests",
        description="HH-RLHF's harmlessness; XSTest's unsafe prompts prefer refusal under this principle.",
    ),
)

_BY_NAME = {p.name: p for p in DEFAULT_CONSTITUTION}


def get_principle(name: str) -> Principle:
    """The default constitution's principle called `name`; `KeyError` naming the known ones otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown principle {name!r}; known: {', '.join(sorted(_BY_NAME))}") from None
