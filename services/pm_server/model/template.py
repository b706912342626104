"""How a (prompt, response) pair becomes model input: one definition for training and serving.

Two kinds of template:

* ``pair`` (encoders such as BERT/MiniLM): the tokenizer's own pair layout, ``[CLS] prompt [SEP] response [SEP]``.
* ``text`` (decoders such as Llama/SmolLM): a format string with one ``{prompt}`` and one ``{response}``,
  e.g. ``"Human: {prompt}\\n\\nAssistant: {response}"``, plus the tokenizer's single-sequence special tokens.

User text is tokenized with special-token parsing off, so a response that contains ``</s>`` or ``[SEP]``
cannot forge structure. Inputs longer than `max_length` lose the left of the prompt first, so the response
survives; a response longer than the whole budget keeps its beginning. Either way `truncated` is set.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Literal

import tokenizers
from pydantic import BaseModel, ConfigDict, Field, model_validator
from transformers import PreTrainedTokenizerBase

__all__ = ["InputTemplate", "Encoded", "TemplateEncoder", "DEFAULT_TEXT_TEMPLATE"]

DEFAULT_TEXT_TEMPLATE = "Human: {prompt}\n\nAssistant: {response}"


class InputTemplate(BaseModel):
    """Stored in every adapter package's principle.json."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["pair", "text"]
    text: str = Field(default=DEFAULT_TEXT_TEMPLATE, description="Format string of a `text` template.")
    max_length: int = Field(ge=8, le=32768, description="Most tokens the model sees, special tokens included.")

    @model_validator(mode="after")
    def _check_text(self) -> InputTemplate:
        if self.kind == "text":
            fields = [f for _, f, _, _ in string.Formatter().parse(self.text) if f is not None]
            if fields != ["prompt", "response"]:
                raise ValueError(
                    "a text template needs exactly one {prompt} followed by one {response} "
                    f"(and no other fields), got {fields}"
                )
        return self


@dataclass(frozen=True, slots=True)
class Encoded:
    input_ids: list[int]
    token_type_ids: list[int] | None
    truncated: bool
    response_tokens: int  # before truncation: what the length rule counts
    #: `text` templates: how many leading tokens come before the response (the same for every response to
    #: one prompt, so a decoder can compute them once); 0 for `pair` templates (an encoder sees both ways)
    prefix_tokens: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)


def _copy(backend: tokenizers.Tokenizer, *, split_special: bool) -> tokenizers.Tokenizer:
    tok = tokenizers.Tokenizer.from_str(backend.to_str())
    tok.no_truncation()
    tok.no_padding()
    tok.encode_special_tokens = split_special
    return tok


class TemplateEncoder:
    """Thread-safe encoder of (prompt, response) pairs for one tokenizer and template."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, template: InputTemplate) -> None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise TypeError(f"{type(tokenizer).__name__} has no fast (tokenizers) backend; a fast tokenizer is needed")
        self.template = template
        self._specials = _copy(backend, split_special=False)  # template literals and special tokens
        self._user = _copy(backend, split_special=True)  # untrusted text
        self._type_ids = "token_type_ids" in getattr(tokenizer, "model_input_names", [])
        if template.kind == "pair":
            self._n_special = self._specials.num_special_tokens_to_add(is_pair=True)
            self._literals: list[tokenizers.Encoding] = []
        else:
            parts = [lit for lit, _, _, _ in string.Formatter().parse(template.text)]
            parts += [""] * (3 - len(parts))
            self._literals = [self._specials.encode(p, add_special_tokens=False) for p in parts[:3]]
            self._n_special = self._specials.num_special_tokens_to_add(is_pair=False) + sum(
                len(e.ids) for e in self._literals
            )
        if self._n_special >= template.max_length:
            raise ValueError(f"template leaves no room for text within max_length={template.max_length}")

    def encode(self, prompt: str, response: str) -> Encoded:
        p = self._user.encode(prompt, add_special_tokens=False)
        r = self._user.encode(response, add_special_tokens=False)
        n_resp = len(r.ids)
        budget = self.template.max_length - self._n_special
        truncated = False
        if n_resp > budget:
            r.truncate(budget, direction="right")
            p.truncate(0, direction="left")
            truncated = True
        elif len(p.ids) + n_resp > budget:
            p.truncate(budget - n_resp, direction="left")
            truncated = True
        prefix = 0
        if self.template.kind == "pair":
            out = self._specials.post_process(p, r, add_special_tokens=True)
        else:
            lit0, lit1, lit2 = self._literals
            merged = tokenizers.Encoding.merge([lit0, p, lit1, r, lit2], growing_offsets=True)
            out = self._specials.post_process(merged, None, add_special_tokens=True)
            lead = 0  # special tokens the post-processor put in front (a BOS)
            for m in out.special_tokens_mask:
                if not m:
                    break
                lead += 1
            prefix = lead + len(lit0.ids) + len(p.ids) + len(lit1.ids)
        return Encoded(
            input_ids=list(out.ids),
            token_type_ids=list(out.type_ids) if self._type_ids else None,
            truncated=truncated,
            response_tokens=n_resp,
            prefix_tokens=prefix,
        )

    def count_tokens(self, text: str) -> int:
        return len(self._user.encode(text, add_special_tokens=False).ids)
