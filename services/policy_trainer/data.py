"""Prompts for RL: read from files, split into train and held-out by a hash of the prompt, rendered for the policy.

Accepted files (``.jsonl`` or ``.jsonl.gz``), every error naming ``file:line``:

* prompt JSONL: ``{"prompt": "..."}`` a line (other fields ignored), which includes the pair files of
  ``../shared/data`` and ``morlaif feedback export``; duplicate prompts are read once;
* Anthropic HH-RLHF transcripts (``{"chosen", "rejected"}``): the conversation up to the last
  ``Assistant:`` is the prompt;
* chat messages (``{"messages": [{"role": "user", "content": "..."}, ...]}``, user and assistant turns
  ending with the user's): written as the HH transcript they are (``\n\nHuman: ...\n\nAssistant:``).

The PM server scores the prompt text as read (HH transcripts are what the default adapters were trained
on); the policy sees it through its chat template when it has one (`render`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from morlaif.conversation import hh_messages
from morlaif.jsonl import JsonlError, iter_objects
from morlaif.store.importers import split_hh

__all__ = ["PromptDataError", "read_prompts", "split_prompts", "render", "hh_messages", "messages_to_transcript"]


class PromptDataError(JsonlError):
    """A prompt file that cannot be used; the message names the file (and line)."""


def read_prompts(path: str | Path) -> list[str]:
    """The distinct prompts of a file, in file order."""
    path = Path(path)
    if not path.is_file():
        raise PromptDataError(f"{path}: no such prompt file")
    seen: dict[str, None] = {}
    try:
        for n, obj in iter_objects(path):
            if "prompt" in obj:
                prompt = obj["prompt"]
                if not isinstance(prompt, str) or not prompt.strip():
                    raise PromptDataError(f"{path}:{n}: field 'prompt' must be a non-empty string")
            elif "messages" in obj:
                prompt = messages_to_transcript(obj["messages"], f"{path}:{n}")
            elif isinstance(obj.get("chosen"), str) and isinstance(obj.get("rejected"), str):
                parts = split_hh(obj["chosen"], obj["rejected"])
                if parts is None:
                    raise PromptDataError(f"{path}:{n}: chosen and rejected share no prompt ending in 'Assistant:'")
                prompt = parts[0]
            else:
                raise PromptDataError(
                    f"{path}:{n}: expected a 'prompt' field, chat 'messages' or HH-RLHF 'chosen'/'rejected'"
                )
            seen.setdefault(prompt, None)
    except PromptDataError:
        raise
    except JsonlError as e:
        raise PromptDataError(str(e)) from e
    if not seen:
        raise PromptDataError(f"{path}: no prompts")
    return list(seen)


def messages_to_transcript(messages: Any, where: str) -> str:
    """Chat messages ending with the user's turn as an HH transcript ending in ``Assistant:``."""
    names = {"user": "Human", "assistant": "Assistant"}
    if not isinstance(messages, list) or not messages:
        raise PromptDataError(f"{where}: field 'messages' must be a non-empty list of {{role, content}}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in names or not isinstance(m.get("content"), str):
            raise PromptDataError(
                f'{where}: messages[{i}] must be {{"role": "user" or "assistant", "content": string}}'
            )
        out.append(f"\n\n{names[m['role']]}: {m['content'].strip()}")
    if messages[-1]["role"] != "user":
        raise PromptDataError(f"{where}: the last message must be the user's (the response is what gets sampled)")
    return "".join(out) + "\n\nAssistant:"


def _bucket(prompt: str, salt: str) -> float:
    h = hashlib.sha256(f"{salt}\x00{prompt}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def split_prompts(prompts: Sequence[str], eval_fraction: float, *, salt: str) -> tuple[list[str], list[str]]:
    """(train, held-out): a prompt's side depends on its text and the salt only, not on file order."""
    train, held = [], []
    for p in prompts:
        (held if _bucket(p, salt) < eval_fraction else train).append(p)
    return train, held


def render(prompt: str, tokenizer: Any, *, chat_template: bool) -> str:
    """The text the policy continues: the chat template with a generation prompt when the tokenizer has one."""
    if not chat_template or not getattr(tokenizer, "chat_template", None):
        return prompt
    messages = hh_messages(prompt) or [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
