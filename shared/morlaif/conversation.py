"""One conversation form, rendered one way, whatever door it came in by, in training and in serving.

Every way a conversation reaches a preference model becomes a list of `Turn` (role, text) here, and one
function, `render_pair`, turns it into the (prompt, response) text pair the model scores or trains on:

* `/v1/score` and `/v1/compare` items given as OpenAI-style chat ``messages``;
* plain ``{"prompt", "response"}`` items and pair-file lines, whose prompt may be an HH-RLHF transcript
  (``\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:``, as our PPO and HH-RLHF data write it),
  parsed by `from_prompt`;
* HH-RLHF transcripts (`morlaif.store.importers`), pair files and label-store rows that `pm train` and
  `pm eval` read (`canonical_prompt`);
* `RemoteReward` (TRL's conversational prompts and completions);
* `/get_reward` and `/classify` queries in a policy's chat template (parsed by `morlaif.chat_templates`);
* veRL's ``compute_score`` with the prompt's messages in ``extra_info``.

The rendering (documented in docs/integrations.md):

* the response is the text of the last assistant turn, stripped of surrounding white space;
* the history is a transcript, ``Human: ...\\n\\nAssistant: ...\\n\\nTool: ...\\n\\nSystem: ...``, each turn's
  text stripped, except that a history that opens with a user turn leaves that first ``Human:`` label out
  (a decoder's template, ``Human: {prompt}\\n\\nAssistant: {response}``, supplies it and the last ``Assistant:``),
  so one user turn is its text alone; ``developer`` is rendered as ``System``, as OpenAI treats it;
* a message's content given as typed parts is the text of its ``text`` parts joined by newlines; other parts
  (images, audio, files) cannot be scored by a text model: they are dropped and counted (`dropped_parts`);
* an assistant turn's tool calls follow its text, one per line: ``Tool call: name(arguments)``; a turn with
  ``content: null`` and tool calls is its tool calls alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ROLE_NAMES",
    "TEXT_PART_TYPES",
    "Conversation",
    "MessageError",
    "Turn",
    "canonical_prompt",
    "from_messages",
    "from_prompt",
    "hh_messages",
    "render_pair",
]

#: how each role is named in a rendered transcript
ROLE_NAMES = {"system": "System", "developer": "System", "user": "Human", "assistant": "Assistant", "tool": "Tool"}
#: content part types whose text is scored (Chat Completions' "text"; the Responses API's input/output text)
TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})


class MessageError(ValueError):
    """A message list that is not a scorable conversation; `field` names the offending part (``messages[2].role``)."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(f"{field}: {message}")
        self.message = message
        self.field = field


@dataclass(frozen=True, slots=True)
class Turn:
    role: str  # one of ROLE_NAMES
    text: str


@dataclass(frozen=True, slots=True)
class Conversation:
    """The history before the response, the response's text, and how many unscorable content parts were dropped."""

    history: tuple[Turn, ...]
    response: str
    dropped_parts: int = 0

    def pair(self) -> tuple[str, str]:
        """(prompt, response): what the model is given (see the module docstring for the rendering)."""
        return render_pair(self.history, self.response)


def render_pair(history: Sequence[Turn], response: str) -> tuple[str, str]:
    """(prompt text, response text) of a conversation: the one rendering that training and serving share
    (see the module docstring). Rendering is idempotent: `from_prompt` of a rendered prompt renders to it."""
    parts = [f"{ROLE_NAMES[t.role]}: {t.text.strip()}" for t in history]
    if history and history[0].role == "user":
        parts[0] = history[0].text.strip()
    return "\n\n".join(parts), response.strip()


def from_prompt(prompt: str, response: str = "") -> Conversation:
    """A prompt string and its response as a `Conversation`: an HH-RLHF transcript prompt (``Human: a\\n\\n
    Assistant: b\\n\\nHuman: c\\n\\nAssistant:``, with or without the leading blank line, with or without the
    closing ``Assistant:``) becomes its turns; any other text is one user turn."""
    turns = _transcript_turns(prompt)
    return Conversation(turns if turns else (Turn("user", prompt),), response)


def canonical_prompt(prompt: str) -> str:
    """The prompt text a model is given for `prompt` (`from_prompt`, then `render_pair`)."""
    return from_prompt(prompt).pair()[0]


def _get(m: Any, key: str) -> Any:
    return m.get(key) if isinstance(m, Mapping) else getattr(m, key, None)


def _content_text(content: Any, field: str) -> tuple[str, int]:
    """(text, parts dropped) of a message's content: a string, None, or a list of typed parts."""
    if content is None:
        return "", 0
    if isinstance(content, str):
        return content, 0
    if isinstance(content, Sequence):
        texts, dropped = [], 0
        for j, part in enumerate(content):
            kind = _get(part, "type")
            if isinstance(part, str):  # a bare string among parts: some clients send these
                texts.append(part)
            elif kind in TEXT_PART_TYPES:
                text = _get(part, "text")
                if not isinstance(text, str):
                    raise MessageError(f"a {kind!r} part needs a string 'text'", field=f"{field}[{j}].text")
                texts.append(text)
            elif isinstance(kind, str):
                dropped += 1  # image_url, input_audio, file, ...: nothing a text model can score
            else:
                raise MessageError("a content part needs a string 'type'", field=f"{field}[{j}].type")
        return "\n".join(texts), dropped
    raise MessageError(f"content must be a string, a list of parts or null, not {type(content).__name__}", field=field)


def _tool_calls_text(calls: Any, field: str) -> list[str]:
    if not calls:
        return []
    if not isinstance(calls, Sequence) or isinstance(calls, str):
        raise MessageError("tool_calls must be a list", field=field)
    lines = []
    for j, call in enumerate(calls):
        fn = _get(call, "function")
        name, args = _get(fn, "name"), _get(fn, "arguments")
        if not isinstance(name, str):
            raise MessageError("a tool call needs function.name (a string)", field=f"{field}[{j}].function.name")
        if args is None:
            args = ""
        elif not isinstance(args, str):  # some clients send the arguments as an object
            args = json.dumps(args, ensure_ascii=False, sort_keys=True)
        lines.append(f"Tool call: {name}({args})")
    return lines


def _turn(m: Any, field: str) -> tuple[Turn, int]:
    role = _get(m, "role")
    if role not in ROLE_NAMES:
        raise MessageError(f"role must be one of {', '.join(ROLE_NAMES)}, got {role!r}", field=f"{field}.role")
    text, dropped = _content_text(_get(m, "content"), f"{field}.content")
    calls = _tool_calls_text(_get(m, "tool_calls"), f"{field}.tool_calls")
    if calls:
        text = "\n".join([text, *calls]) if text else "\n".join(calls)
    return Turn(role, text), dropped


def from_messages(messages: Sequence[Any], *, field: str = "messages", response_turn: bool = True) -> Conversation:
    """OpenAI-style chat messages (dicts or `ChatMessage`s) as a `Conversation`.

    With `response_turn` the last message must be the assistant's and is the response; otherwise every
    message is history and the response is empty (a prompt to which a completion is appended by the caller).
    Raises `MessageError` naming the offending field.
    """
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise MessageError("must be a non-empty list of messages", field=field)
    turns, dropped = [], 0
    for i, m in enumerate(messages):
        t, d = _turn(m, f"{field}[{i}]")
        turns.append(t)
        dropped += d
    if not response_turn:
        return Conversation(tuple(turns), "", dropped)
    if turns[-1].role != "assistant":
        raise MessageError(
            "the last message must be the assistant response to score (role 'assistant')",
            field=f"{field}[{len(turns) - 1}].role",
        )
    return Conversation(tuple(turns[:-1]), turns[-1].text, dropped)


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def _hh_parts(prompt: str) -> list[tuple[str, str]] | None:
    """(label, text) of each turn of an HH-style transcript (``Human:``/``Assistant:`` turns, each after a blank
    line, the first one's optional); None when `prompt` does not open with a turn."""
    parts = _HH_TURN.split(prompt if prompt.startswith("\n\n") else "\n\n" + prompt)
    if len(parts) < 3 or parts[0].strip():
        return None
    return list(zip(parts[1::2], parts[2::2], strict=True))


def _transcript_turns(prompt: str) -> tuple[Turn, ...] | None:
    """The turns of an HH-style transcript that opens with ``Human:`` and may close with an empty
    ``Assistant:``; None when `prompt` is not one."""
    parts = _hh_parts(prompt)
    if not parts or parts[0][0] != "Human":
        return None
    if parts[-1][0] == "Assistant" and not parts[-1][1].strip():
        parts.pop()  # the closing "Assistant:" that the response follows
    return tuple(Turn(_HH_ROLES[r], c.strip()) for r, c in parts)


def hh_messages(prompt: str) -> list[dict[str, str]] | None:
    """An HH-RLHF transcript prompt (``\\n\\nHuman: ...\\n\\nAssistant:``) as chat messages; None when it is
    not one."""
    parts = _hh_parts(prompt)
    if not parts or parts[-1][0] != "Assistant" or parts[-1][1].strip():
        return None
    return [{"role": _HH_ROLES[r], "content": c.strip()} for r, c in parts[:-1]]
