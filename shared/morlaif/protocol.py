"""The wire format of the PM server: pydantic models imported by the server and the client alike.

Every error the server returns has the shape of `ErrorResponse`:
``{"error": {"message": "...", "type": "invalid_request_error", "code": "unknown_principle", "param": "principles"}}``.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from morlaif.conversation import Conversation, MessageError, from_messages, from_prompt
from morlaif.principles import PRINCIPLE_NAME_RE

__all__ = [
    "AdapterAction",
    "Calibration",
    "ChatMessage",
    "ClassifyData",
    "ClassifyRequest",
    "ClassifyResponse",
    "ContentPart",
    "Limits",
    "ModelCard",
    "ModelList",
    "QueryInfo",
    "CompareRequest",
    "CompareResponse",
    "ErrorDetail",
    "ErrorResponse",
    "ItemScores",
    "LoadAdapterRequest",
    "OpenRLHFRewardRequest",
    "OpenRLHFRewardResponse",
    "Pairwise",
    "PrincipleInfo",
    "PrinciplesResponse",
    "ScalarizeRequest",
    "ScalarizeResponse",
    "ScalarizerDescription",
    "ScalarizerSpec",
    "ScalarizersResponse",
    "ScoreItem",
    "ScoreRequest",
    "ScoreResponse",
    "Text",
    "ToolCall",
    "Usage",
    "error_field",
    "first_error",
    "invalid_text",
    "length_feature",
    "replace_invalid_text",
]

_PRINCIPLE_PATTERN = PRINCIPLE_NAME_RE.pattern
_SURROGATE = re.compile("[\ud800-\udfff]")


def invalid_text(text: str) -> str | None:
    """Why `text` cannot be scored (a lone UTF-16 surrogate, which JSON's ``"\\ud800"`` can carry but no
    UTF-8 text can), or None when it is valid Unicode text."""
    m = _SURROGATE.search(text)
    if m is None:
        return None
    return (
        f"contains a lone UTF-16 surrogate (U+{ord(m.group()):04X}) at character {m.start()}, which is not valid "
        "Unicode text; send it as valid UTF-8 (e.g. replaced by U+FFFD)"
    )


def replace_invalid_text(text: str) -> tuple[str, bool]:
    """`text` with every lone surrogate replaced by U+FFFD, and whether any was (what /get_reward does)."""
    out, n = _SURROGATE.subn("\ufffd", text)
    return out, n > 0


def _valid_text(text: str) -> str:
    why = invalid_text(text)
    if why is not None:
        raise ValueError(why)
    return text


def _check_deep(value: Any) -> Any:
    """Every string in a JSON value (keys too) is valid text; the message says where the bad one is."""

    def walk(v: Any, where: str) -> None:
        if isinstance(v, str):
            why = invalid_text(v)
            if why is not None:
                raise ValueError(f"{where}: {why}" if where else why)
        elif isinstance(v, dict):
            for k, x in v.items():
                walk(k, f"{where}.{k!r}" if where else repr(k))
                walk(x, f"{where}.{k}" if where else str(k))
        elif isinstance(v, list | tuple):
            for i, x in enumerate(v):
                walk(x, f"{where}[{i}]")

    walk(value, "")
    return value


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "constrained-str"})


def error_field(error: Any) -> str | None:
    """The request field a pydantic error (one of `ValidationError.errors()`) is about, dotted (``items.0.response``).

    pydantic's `loc` also names the member of a union it tried (``str``, ``list[...]``, ``function-after[...]``) and
    marks a dict key (``[key]`` after the key, which may not even be text): neither is a field, and a bad key is
    reported at its dict. ``body`` (FastAPI's root) is left out too.
    """
    loc: list[str] = []
    for x in error.get("loc", ()):
        if x == "[key]":
            if loc:
                loc.pop()
        elif x != "body" and not (isinstance(x, str) and (x in _TYPE_TAGS or "[" in x)):
            loc.append(str(x))
    return ".".join(loc) or None


def first_error(e: ValidationError | Any) -> Any:
    """Of `e.errors()`, the one to report: the first our validators raised (a union gives one error per member, and
    the others only say the value is not of that member's type), else the first."""
    errors = list(e.errors())
    return next((x for x in errors if x.get("type") == "value_error"), None) or (
        errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    )


#: a string field of a request: valid Unicode text, else a 422 naming the field
Text = Annotated[str, AfterValidator(_valid_text)]
_JsonText = AfterValidator(_check_deep)
_VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(_Model):
    message: str
    type: str = Field(
        description="invalid_request_error, authentication_error, not_found_error, conflict_error, "
        "rate_limit_error, server_error"
    )
    code: str = Field(description="A stable machine-readable reason, e.g. unknown_principle.")
    param: str | None = Field(default=None, description="The request field the error is about, when there is one.")


class ErrorResponse(_Model):
    error: ErrorDetail


# ------------------------------------------------------------------------------------------------ score
class ContentPart(BaseModel):
    """One part of a message's content: ``{"type": "text", "text": ...}`` is scored; other types (``image_url``,
    ``input_audio``, ``file``) cannot be by a text model: they are dropped and counted (`ItemScores.dropped_parts`)."""

    model_config = ConfigDict(extra="allow")
    type: Text
    text: Text | None = None


class ToolFunction(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: Text
    arguments: Annotated[str | dict[str, Any] | None, _JsonText] = None


class ToolCall(BaseModel):
    """An assistant's tool call, as in OpenAI's Chat Completions; rendered ``Tool call: name(arguments)``."""

    model_config = ConfigDict(extra="allow")
    id: Text | None = None
    type: Text = "function"
    function: ToolFunction


class ChatMessage(BaseModel):
    """An OpenAI-style chat message. Other fields OpenAI defines (``name``, ``tool_call_id``, ``refusal``) are
    accepted and not scored; how a conversation is rendered for the model: `morlaif.conversation`."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[ContentPart] | None = None
    tool_calls: list[ToolCall] | None = None

    @model_validator(mode="after")
    def _extra_text(self) -> ChatMessage:
        _check_deep(self.model_extra or {})
        return self


class ScoreItem(_Model):
    """One (prompt, response) pair, given as two strings or as chat messages ending with the assistant's turn."""

    prompt: Text | None = Field(default=None, description="The conversation so far (plain text).")
    response: Text | None = Field(default=None, description="The assistant response to score.")
    messages: list[ChatMessage] | None = Field(
        default=None,
        description="Alternative to prompt/response: OpenAI-style chat messages (system, developer, user, assistant, "
        "tool; content as a string or typed parts; tool calls); the last message is the assistant response to score.",
    )

    _conversation: Conversation | None = PrivateAttr(default=None)  # read once, when validated

    @model_validator(mode="after")
    def _one_form(self) -> ScoreItem:
        if self.messages is not None:
            if self.prompt is not None or self.response is not None:
                raise ValueError("give either prompt and response, or messages, not both")
            try:
                self.conversation()
            except MessageError as e:
                raise ValueError(str(e)) from None
        elif self.prompt is None or self.response is None:
            raise ValueError("give prompt and response (or messages)")
        return self

    def conversation(self) -> Conversation:
        """The item as a `Conversation`: a prompt/response pair by `morlaif.conversation.from_prompt` (an HH
        transcript prompt becomes its turns, any other text one user turn)."""
        if self._conversation is None:
            if self.messages is None:
                assert self.prompt is not None and self.response is not None
                self._conversation = from_prompt(self.prompt, self.response)
            else:
                self._conversation = from_messages(self.messages)
        return self._conversation

    def as_pair(self) -> tuple[str, str]:
        """(prompt text, response text), rendered by `morlaif.conversation.render_pair`."""
        return self.conversation().pair()


class ScalarizerSpec(_Model):
    """Which scalarizer turns per-principle scores into one reward (see `morlaif.scalarize`)."""

    name: Text = Field(
        default="linear",
        description="linear, max_min, soft_max_min, uncertainty_weighted, "
        "lower_quantile, median, bernoulli_nash, lexicographic, chebyshev, ...",
    )
    weights: dict[Text, float] | None = Field(
        default=None,
        description="A weight >= 0 for every scored principle (0 removes it); omitted: all 1. When the request "
        "names no principles, these keys choose them.",
    )
    params: Annotated[dict[str, Any], _JsonText] = Field(
        default_factory=dict, description="Scalarizer parameters, e.g. temperature."
    )

    @classmethod
    def from_file(cls, path: str | Path) -> ScalarizerSpec:
        """A scalarizer file (``{"name", "weights", "params"}``, as `morlaif pm eval` writes the fitted weights)."""
        path = Path(path)
        try:
            return cls.model_validate_json(path.read_bytes())
        except OSError as e:
            raise ValueError(f"{path}: cannot read the scalarizer file: {e.strerror}") from e
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(x) for x in first["loc"]) or "file"
            raise ValueError(f"{path}: {loc}: {first['msg']}") from e


class ScoreRequest(_Model):
    items: list[ScoreItem] = Field(min_length=1, description="The (prompt, response) pairs to score.")
    principles: list[Text] | None = Field(
        default=None,
        description="Principles to score (default: the scalarizer's weights' keys, else all loaded).",
    )
    scalarizer: ScalarizerSpec | None = Field(default=None, description="Ask for a scalarized reward per item.")
    normalize: bool = Field(default=True, description="Standardise scores by each package's calibration.")
    expected_versions: dict[Text, Text] | None = Field(
        default=None,
        description="principle -> adapter version this request must be scored with; 409 if one is not loaded.",
    )


class ItemScores(_Model):
    scores: dict[str, float] = Field(description="Per principle: normalised score (or raw if normalize=false).")
    raw_scores: dict[str, float] = Field(description="Per principle: the model's raw score.")
    reward: float | None = Field(default=None, description="The scalarized reward, when a scalarizer was given.")
    tokens: int = Field(description="Model input tokens of this item (after truncation).")
    truncated: bool = Field(description="True when the input was cut to the model's max length.")
    dropped_parts: int = Field(
        default=0, description="Content parts of `messages` a text model cannot score (images, audio), left out."
    )


class Usage(_Model):
    items: int
    input_tokens: int = Field(description="Sum over items of their model input tokens.")
    forward_rows: int = Field(description="Sequences run through the model (items x learned principles).")


class ScoreResponse(_Model):
    principles: list[str]
    results: list[ItemScores]
    versions: dict[str, str] = Field(description="principle -> adapter version that produced the scores.")
    scalarizer: str | None = None
    usage: Usage


class ScalarizeRequest(_Model):
    """Scores already computed (e.g. by /v1/score) scalarized again, with other weights or another scalarizer."""

    scores: list[dict[Text, float]] = Field(
        min_length=1,
        description="Per item: principle -> score, every item with the same principles (the `scores` of "
        "/v1/score's results).",
    )
    scalarizer: ScalarizerSpec = Field(default_factory=lambda: ScalarizerSpec())


class ScalarizeResponse(_Model):
    principles: list[str]
    rewards: list[float]
    scalarizer: str


class ScalarizerDescription(_Model):
    name: str
    summary: str
    monotone: bool = Field(description="True when the reward never falls as one principle's score rises.")
    params: dict[str, Any] = Field(description="Parameters and their defaults.")


class ScalarizersResponse(_Model):
    scalarizers: list[ScalarizerDescription]
    default: ScalarizerSpec = Field(description="The server's default (what /get_reward uses).")


class CompareRequest(_Model):
    prompt: Text
    response_a: Text
    response_b: Text
    principles: list[Text] | None = None
    scalarizer: ScalarizerSpec | None = None
    normalize: bool = True
    expected_versions: dict[Text, Text] | None = None


class Pairwise(_Model):
    score_a: float
    score_b: float
    p_a_better: float = Field(description="sigmoid(score_a - score_b): P(A better than B).")


class CompareResponse(_Model):
    principles: dict[str, Pairwise]
    reward: Pairwise | None = None
    versions: dict[str, str]


# ------------------------------------------------------------------------------------------- principles
class Calibration(_Model):
    """How a principle's raw score becomes the score it serves (``normalize: true``, the default)::

        score = (raw - length_coef * ln(1 + response characters) - mean) / std

    `mean` and `std` standardise (the raw scores' mean and spread on the package's validation pairs);
    `length_coef` (0: none) takes out the part of the score that follows the response's length, as fitted by
    `morlaif pm length-correct` (`pm_server.training.length`). Rules use mean and std only."""

    mean: float = 0.0
    std: float = Field(default=1.0, gt=0)
    length_coef: float = Field(
        default=0.0,
        allow_inf_nan=False,
        description="Raw-score units per unit of ln(1 + response characters), subtracted before standardising.",
    )


def length_feature(response: str) -> float:
    """ln(1 + characters of `response`): the length a `Calibration.length_coef` multiplies."""
    return math.log1p(len(response))


class PrincipleInfo(_Model):
    name: str
    kind: Literal["adapter", "head", "full", "rule"] = Field(
        description="adapter: a LoRA package; head: a score head on the frozen base; full: the base itself is "
        "a fully fine-tuned PM; rule: programmatic"
    )
    version: str
    judge_phrase: str = ""
    description: str = ""
    calibration: Calibration = Field(default_factory=Calibration)
    metrics: dict[str, Any] = Field(default_factory=dict)
    provenance: dict[str, Any] = Field(default_factory=dict)
    path: str | None = Field(default=None, description="Package path relative to the adapter root.")


class Limits(_Model):
    """What one request may hold; `morlaif.client` splits larger batches by these."""

    max_items: int = Field(description="Most items in one /v1/score request (413 beyond; /get_reward takes any).")
    max_request_bytes: int = Field(description="Largest request body (413 beyond).")
    max_text_chars: int = Field(description="Longest prompt or response, in characters (400 beyond).")


class PrinciplesResponse(_Model):
    base_model: str
    base_config_hash: str
    #: what the base computes in (`float32`: scores exactly as trained; `bfloat16`: within about 1%)
    dtype: str = "float32"
    batch_invariant: bool = Field(
        default=True,
        description="True when an item's scores do not depend on what else shares its micro-batch (float32: to "
        "about 2e-6 raw). False in bfloat16, where the batch's shapes move them by up to about 0.02 raw (serve "
        "--dtype float32 for batch-invariant scores).",
    )
    limits: Limits | None = None
    principles: list[PrincipleInfo]


class LoadAdapterRequest(_Model):
    name: str = Field(pattern=_PRINCIPLE_PATTERN, description="Principle name.")
    version: str | None = Field(
        default=None,
        pattern=_VERSION_PATTERN,
        description="Package version directory under <adapter_root>/<name>/ (default: the newest).",
    )
    path: Text | None = Field(
        default=None, description="Alternative to version: a package directory inside the adapter root."
    )


class AdapterAction(_Model):
    action: Literal["loaded", "replaced", "unloaded"]
    principle: PrincipleInfo
    previous_version: str | None = None


# -------------------------------------------------------------------------------- OpenRLHF compatibility
class OpenRLHFRewardRequest(BaseModel):
    """OpenRLHF's remote reward model contract: full texts in `query`, their prompts in `prompts`.

    OpenRLHF 0.10-0.11 post one sample per request, 0.6-0.9 a whole rollout batch: any number of queries is
    taken (an empty list gives empty lists). Other fields (`labels`, ...) are accepted and not used. Text is
    never refused here: lone surrogates become U+FFFD (`QueryInfo.replaced_text`).
    """

    model_config = ConfigDict(extra="allow")
    query: list[str] = Field(description="The policy's decoded sequences: prompt (in its chat template) + response.")
    prompts: list[str] | None = Field(default=None, description="The prompts the queries start with.")


class QueryInfo(_Model):
    """How one /get_reward query was read (see `morlaif.chat_templates.Parsed`)."""

    template: str | None = Field(description="The chat template recognised in the query (chatml, llama3, ...).")
    split: str = Field(
        description="prefix, fuzzy or unmatched (the response follows the prompt); without prompts, template (the "
        "query's last assistant turn) or no_prompt (the whole query)."
    )
    stripped: int = Field(description="End-of-turn, EOS and padding strings removed from the end of the response.")
    replaced_text: bool = Field(
        default=False, description="Lone surrogates in the query or its prompt were replaced by U+FFFD."
    )


class OpenRLHFRewardResponse(_Model):
    rewards: list[float] = Field(description="The scalarized reward per query (the server's default scalarizer).")
    scores: list[float] = Field(
        description="sigmoid(reward), in (0, 1): what OpenRLHF's dynamic filtering reads (its default range is 0-1)."
    )
    extra_logs: dict[str, list[float]] = Field(
        default_factory=dict, description="Per principle, its normalised score per query (OpenRLHF logs them)."
    )
    info: list[QueryInfo] = Field(default_factory=list, description="Per query, how it was read.")


# ------------------------------------------------------------------------------------ vLLM compatibility
class ClassifyRequest(BaseModel):
    """vLLM's ``POST /classify`` request: `model` is a principle, or ``reward`` (the default, also when omitted)
    for the server's default scalarized reward; each input is one text (prompt and response, in a chat template
    or not). vLLM's other fields (``truncate_prompt_tokens``, ``priority``, ...) are accepted and not used."""

    model_config = ConfigDict(extra="allow")
    model: Text | None = None
    input: Text | list[Text] | None = Field(default=None, description="One text or a list of texts.")
    messages: list[ChatMessage] | None = Field(
        default=None, description="vLLM's chat form: one conversation, the last message the response to score."
    )
    use_activation: bool | None = Field(
        default=None,
        description="As vLLM: true or omitted gives sigmoid(value) in (0, 1), false the value itself (veRL sends "
        "false and reads the raw reward).",
    )

    @model_validator(mode="after")
    def _one_form(self) -> ClassifyRequest:
        if (self.input is None) == (self.messages is None):
            raise ValueError("give input (one text or a list) or messages, not both")
        if self.messages is not None:
            try:
                from_messages(self.messages)
            except MessageError as e:
                raise ValueError(str(e)) from None
        return self


class ClassifyData(_Model):
    index: int
    label: str = Field(description="The model (principle or `reward`) that gave the value.")
    probs: list[float] = Field(description="One value: the reward (or the principle's normalised score).")
    num_classes: int = 1
    object: Literal["classify"] = "classify"


class ClassifyResponse(_Model):
    id: str = Field(default_factory=lambda: f"classify-{uuid.uuid4().hex}")
    object: Literal["list"] = "list"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    data: list[ClassifyData]
    usage: dict[str, int] = Field(description="prompt_tokens and total_tokens, as vLLM counts them.")


class ModelCard(_Model):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "morlaif"
    root: str | None = None
    parent: str | None = None


class ModelList(_Model):
    object: Literal["list"] = "list"
    data: list[ModelCard]
