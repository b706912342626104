"""A policy's decoded text back into the conversation it encodes: chat templates, end-of-turn and padding strings.

OpenRLHF posts ``query`` = the policy's whole decoded sequence (``skip_special_tokens=False``): the prompt in the
policy's chat template, the response, its end-of-turn token and any padding. veRL's discriminative reward path
and vLLM-style ``/classify`` clients post one templated text. Scoring that text as it is scores the template
and the padding: the reward of ``prompt + "4.<|im_end|>" + "<|endoftext|>" * n`` would fall as n grows. This
module recovers the conversation, which `morlaif.conversation` then renders exactly as a ``messages`` item.

Recognised templates (`TEMPLATES`), by their markers:

| name | used by | turn markers |
| --- | --- | --- |
| chatml | Qwen 1.5-3, SmolLM2, Hermes, Yi, OLMo 2 chat | ``<|im_start|>role\\n ... <|im_end|>`` |
| llama3 | Llama 3.x | ``<|start_header_id|>role<|end_header_id|>\\n\\n ... <|eot_id|>`` |
| gemma | Gemma 1-3 | ``<start_of_turn>user|model\\n ... <end_of_turn>`` |
| mistral | Llama 2, Mistral, Mixtral | ``[INST] ... [/INST] ... </s>`` (``<<SYS>>`` / ``[SYSTEM_PROMPT]``) |
| phi3 | Phi-3/3.5/4-mini, Zephyr, Tulu | ``<|user|>\\n ... <|end|>`` (or ``</s>``, ``<|endoftext|>``) |
| deepseek | DeepSeek V2/V3/R1 and its distills | ``<｜User｜> ... <｜Assistant｜> ... <｜end▁of▁sentence｜>`` |

Sources: each model's ``tokenizer_config.json`` ``chat_template`` on the Hugging Face hub.

`parse_query` never fails: a text with no recognised template is split from its prompt (exactly, or
ignoring whitespace and a left-truncated prompt, as OpenRLHF's prompt truncation and a decode round trip
produce), and says how (`Parsed.split`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from morlaif.conversation import Conversation, Turn, from_prompt

__all__ = [
    "END_STRINGS",
    "MIN_FUZZY_OVERLAP",
    "TEMPLATES",
    "Parsed",
    "QueryParser",
    "detect_template",
    "parse_query",
]

#: strings a policy's decoded sequence may end with after its response: EOS, end-of-turn and padding tokens
#: of the common tokenizers (stripped repeatedly, with whitespace between them, from the end of a response)
END_STRINGS: tuple[str, ...] = (
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|finetune_right_pad_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<eos>",
    "<pad>",
    "</s>",
    "<|pad|>",
    "[PAD]",
    "<|padding|>",
    "<｜end▁of▁sentence｜>",
    "<|return|>",
)
#: strings a decoded sequence may start with: BOS tokens
_BOS = ("<|begin_of_text|>", "<｜begin▁of▁sentence｜>", "<bos>", "<s>", "<|startoftext|>")
#: the fewest non-whitespace characters of a left-truncated prompt that must match for the query to be split there
MIN_FUZZY_OVERLAP = 16

_Turns = list[tuple[str, str]]


def _roles(pairs: Iterable[tuple[str, str]], names: dict[str, str]) -> _Turns:
    return [(names.get(r.strip().lower(), r.strip().lower()), t) for r, t in pairs]


_CHATML = re.compile(r"<\|im_start\|>([^\n<]*)\n?(.*?)(?:<\|im_end\|>|(?=<\|im_start\|>)|\Z)", re.S)
_LLAMA3 = re.compile(
    r"<\|start_header_id\|>(.*?)<\|end_header_id\|>\n*(.*?)(?:<\|eot_id\|>|<\|eom_id\|>|(?=<\|start_header_id\|>)|\Z)",
    re.S,
)
_GEMMA = re.compile(r"<start_of_turn>([^\n<]*)\n?(.*?)(?:<end_of_turn>|(?=<start_of_turn>)|\Z)", re.S)
_PHI3 = re.compile(
    r"<\|(system|user|assistant|tool)\|>\n?(.*?)(?:<\|end\|>|</s>|<\|endoftext\|>|(?=<\|(?:system|user|assistant|tool)\|>)|\Z)",
    re.S,
)
_DEEPSEEK_TURN = re.compile(
    r"<｜(User|Assistant)｜>(.*?)(?:<｜end▁of▁sentence｜>|(?=<｜(?:User|Assistant)｜>)|\Z)", re.S
)
_INST = re.compile(r"\[INST\](.*?)\[/INST\](.*?)(?:</s>|(?=(?:<s>)?\s*\[INST\])|\Z)", re.S)
_SYS = re.compile(r"<<SYS>>\n?(.*?)\n?<</SYS>>\s*", re.S)
_SYSTEM_PROMPT = re.compile(r"\[SYSTEM_PROMPT\](.*?)\[/SYSTEM_PROMPT\]", re.S)
_ROLE_NAMES = {"model": "assistant", "ipython": "tool", "human": "user", "bot": "assistant"}


def _parse_chatml(text: str) -> _Turns:
    return _roles(_CHATML.findall(text), _ROLE_NAMES)


def _parse_llama3(text: str) -> _Turns:
    return _roles(_LLAMA3.findall(text), _ROLE_NAMES)


def _parse_gemma(text: str) -> _Turns:
    return _roles(_GEMMA.findall(text), _ROLE_NAMES)


def _parse_phi3(text: str) -> _Turns:
    return _roles(_PHI3.findall(text), _ROLE_NAMES)


def _parse_deepseek(text: str) -> _Turns:
    first = re.search(r"<｜(?:User|Assistant)｜>", text)
    turns: _Turns = []
    if first is not None and text[: first.start()].strip():
        turns.append(("system", text[: first.start()]))
    turns += _roles(_DEEPSEEK_TURN.findall(text), _ROLE_NAMES)
    return turns


def _parse_mistral(text: str) -> _Turns:
    turns: _Turns = []
    sp = _SYSTEM_PROMPT.search(text)
    if sp is not None:
        turns.append(("system", sp.group(1).strip()))
    for user, assistant in _INST.findall(text):
        sys = _SYS.search(user)
        if sys is not None:  # Llama 2 puts the system prompt inside the first [INST]
            turns.append(("system", sys.group(1).strip()))
            user = user[sys.end() :]
        turns.append(("user", user.strip()))
        turns.append(("assistant", assistant.lstrip(" ")))
    return turns


@dataclass(frozen=True, slots=True)
class _Template:
    name: str
    marker: re.Pattern[str]
    parse: Callable[[str], _Turns]
    lead: str = ""  # what the template puts between its generation prompt and the response (Mistral: a space)


TEMPLATES: dict[str, _Template] = {
    t.name: t
    for t in (
        _Template("chatml", re.compile(r"<\|im_start\|>"), _parse_chatml),
        _Template("llama3", re.compile(r"<\|start_header_id\|>"), _parse_llama3),
        _Template("gemma", re.compile(r"<start_of_turn>"), _parse_gemma),
        _Template("deepseek", re.compile(r"<｜(?:User|Assistant)｜>"), _parse_deepseek),
        _Template("mistral", re.compile(r"\[INST\]"), _parse_mistral, lead=" "),
        _Template("phi3", re.compile(r"<\|(?:user|assistant)\|>"), _parse_phi3),
    )
}


def detect_template(text: str) -> str | None:
    """The name of the chat template whose markers `text` carries, or None."""
    for t in TEMPLATES.values():
        if t.marker.search(text):
            return t.name
    return None


@dataclass(frozen=True, slots=True)
class Parsed:
    """A query taken apart: the conversation, the template recognised, and how the response was found.

    `template`: the chat template the prompt (or, without a prompt, the query) is written in; its turns are the
    history. `split`: ``prefix`` (the query starts with its prompt: the response is the rest), ``fuzzy`` (it does
    once whitespace is ignored, or it starts with the end of a left-truncated prompt), ``unmatched`` (the prompt
    is not in the query: the whole query is the response, the prompt its context); without a prompt,
    ``template`` (the query's last assistant turn) or ``no_prompt`` (no template: the whole query).
    `stripped`: end-of-turn, EOS and padding strings removed from the end of the response.
    """

    conversation: Conversation
    template: str | None
    split: str
    stripped: int = 0


def _strip_end(text: str, ends: Sequence[str]) -> tuple[str, int]:
    n = 0
    while True:
        cut = text.rstrip()
        for e in ends:
            if e and cut.endswith(e):
                text = cut[: -len(e)]
                n += 1
                break
        else:
            return (text if n == 0 else text.rstrip()), n


def _strip_bos(text: str) -> str:
    changed = True
    while changed:
        changed = False
        for b in _BOS:
            if text.startswith(b):
                text, changed = text[len(b) :], True
    return text


def _prefix_function(s: str) -> list[int]:
    pi = [0] * len(s)
    for i in range(1, len(s)):
        k = pi[i - 1]
        while k and s[i] != s[k]:
            k = pi[k - 1]
        if s[i] == s[k]:
            k += 1
        pi[i] = k
    return pi


def _fuzzy_split(query: str, prompt: str) -> int | None:
    """Where the response starts in `query`: after the longest end of `prompt` that the query starts with,
    whitespace ignored; None unless that is the whole prompt or at least MIN_FUZZY_OVERLAP characters."""
    q_idx = [i for i, c in enumerate(query) if not c.isspace()]
    p_compact = "".join(c for c in prompt if not c.isspace())
    if not p_compact or not q_idx:
        return None
    q_compact = "".join(query[i] for i in q_idx[: len(p_compact)])
    k = _prefix_function(q_compact + "\x00" + p_compact)[-1]  # longest start of the query that ends the prompt
    if k == 0 or (k < len(p_compact) and k < MIN_FUZZY_OVERLAP):
        return None
    return q_idx[k - 1] + 1


class QueryParser:
    """Parses queries for one configuration: a fixed template (or ``auto`` / ``none``) and extra end strings.

    `template`: ``auto`` (recognise any of `TEMPLATES` by its markers), ``none`` (never parse a template: split
    from the prompt only), or one name of `TEMPLATES`. `end_strings`: more strings to strip from the end of a
    response (a policy tokenizer's own EOS and pad tokens), besides `END_STRINGS`.
    """

    def __init__(self, template: str = "auto", end_strings: Iterable[str] = ()) -> None:
        if template not in ("auto", "none") and template not in TEMPLATES:
            raise ValueError(f"unknown chat template {template!r}; known: auto, none, {', '.join(TEMPLATES)}")
        self.template = template
        extra = [e for e in end_strings if e and e not in END_STRINGS]
        self.end_strings = tuple(sorted([*END_STRINGS, *extra], key=len, reverse=True))

    def __repr__(self) -> str:
        return f"QueryParser(template={self.template!r})"

    def parse(self, query: str, prompt: str | None = None) -> Parsed:
        """The conversation `query` encodes (see `Parsed`); never raises on any string.

        With a `prompt`, the response is what follows it in the query, and only the prompt is read as turns: text
        the policy generated is scored as text, so a response that writes ``<|im_start|>assistant`` cannot
        choose which part of itself is scored. Without one, the query's own last assistant turn is the response.
        """
        if prompt is None:
            return self._parse_text(query)
        name = self._template_of(prompt)
        if name is not None:
            query, prompt = _strip_bos(query), _strip_bos(prompt)
        if query.startswith(prompt):
            cut, split = len(prompt), "prefix"
        else:
            at = _fuzzy_split(query, prompt)
            cut, split = (0, "unmatched") if at is None else (at, "fuzzy")
        response, n = _strip_end(query[cut:], self.end_strings)
        history = from_prompt(prompt).history  # plain text: an HH transcript's turns, else one user turn
        if name is not None:
            turns = [(r, t) for r, t in TEMPLATES[name].parse(prompt) if r in _KNOWN_ROLES]
            if turns and turns[-1][0] == "assistant" and not turns[-1][1].strip():
                turns = turns[:-1]  # the generation prompt the response follows
            if turns:
                history = tuple(Turn(r, self._clean(t)) for r, t in turns)
                response = response.lstrip(TEMPLATES[name].lead)
            else:
                name = None
        return Parsed(Conversation(history, response), name, split, n)

    def _template_of(self, text: str) -> str | None:
        if self.template == "none":
            return None
        return detect_template(text) if self.template == "auto" else self.template

    def _parse_text(self, query: str) -> Parsed:
        """A query alone (no prompt): its template's last assistant turn, else the whole query as the response."""
        text = _strip_bos(query)
        name = self._template_of(text)
        if name is not None:
            turns = [(r, t) for r, t in TEMPLATES[name].parse(text) if r in _KNOWN_ROLES]
            if turns and turns[-1][0] == "assistant":
                history = tuple(Turn(r, self._clean(t)) for r, t in turns[:-1])
                response = self._clean(turns[-1][1])
                return Parsed(Conversation(history, response), name, "template", _strip_end(text, self.end_strings)[1])
        response, n = _strip_end(query, self.end_strings)
        return Parsed(Conversation((Turn("user", ""),), response), None, "no_prompt", n)

    def _clean(self, text: str) -> str:
        return _strip_end(text, self.end_strings)[0]


_KNOWN_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


def parse_query(query: str, prompt: str | None = None, *, template: str = "auto") -> Parsed:
    """`QueryParser(template).parse(query, prompt)`."""
    return QueryParser(template).parse(query, prompt)
