"""The wire format of the PM server: pydantic models imported by the server and the client alike.

Every error the server returns has the shape of `ErrorResponse`:
``{"error": {"message": "...", "type": "invalid_request_error", "code": "unknown_principle", "param": "principles"}}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from morlaif.principles import PRINCIPLE_NAME_RE

__all__ = [
    "AdapterAction",
    "Calibration",
    "ChatMessage",
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
    "Usage",
]

_PRINCIPLE_PATTERN = PRINCIPLE_NAME_RE.pattern
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
class ChatMessage(_Model):
    role: Literal["system", "user", "assistant"]
    content: str


class ScoreItem(_Model):
    """One (prompt, response) pair, given as two strings or as chat messages ending with the assistant's turn."""

    prompt: str | None = Field(default=None, description="The conversation so far (plain text).")
    response: str | None = Field(default=None, description="The assistant response to score.")
    messages: list[ChatMessage] | None = Field(
        default=None, description="Alternative to prompt/response: the last message is the response to score."
    )

    @model_validator(mode="after")
    def _one_form(self) -> ScoreItem:
        if self.messages is not None:
            if self.prompt is not None or self.response is not None:
                raise ValueError("give either prompt and response, or messages, not both")
            if not self.messages:
                raise ValueError("messages must not be empty")
            if self.messages[-1].role != "assistant":
                raise ValueError("the last message must be the assistant response to score (role 'assistant')")
        elif self.prompt is None or self.response is None:
            raise ValueError("give prompt and response (or messages)")
        return self

    def as_pair(self) -> tuple[str, str]:
        """(prompt text, response text); earlier turns of a chat are rendered as an HH-RLHF transcript."""
        if self.messages is None:
            assert self.prompt is not None and self.response is not None
            return self.prompt, self.response
        *history, last = self.messages
        if len(history) == 1 and history[0].role == "user":
            return history[0].content, last.content
        names = {"system": "System", "user": "Human", "assistant": "Assistant"}
        return "".join(f"\n\n{names[m.role]}: {m.content}" for m in history).strip(), last.content


class ScalarizerSpec(_Model):
    """Which scalarizer turns per-principle scores into one reward (see `morlaif.scalarize`)."""

    name: str = Field(
        default="linear",
        description="linear, max_min, soft_max_min, uncertainty_weighted, "
        "lower_quantile, median, bernoulli_nash, lexicographic, chebyshev, ...",
    )
    weights: dict[str, float] | None = Field(
        default=None,
        description="A weight >= 0 for every scored principle (0 removes it); omitted: all 1. When the request "
        "names no principles, these keys choose them.",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="Scalarizer parameters, e.g. temperature.")

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
    principles: list[str] | None = Field(
        default=None,
        description="Principles to score (default: the scalarizer's weights' keys, else all loaded).",
    )
    scalarizer: ScalarizerSpec | None = Field(default=None, description="Ask for a scalarized reward per item.")
    normalize: bool = Field(default=True, description="Standardise scores by each package's calibration.")
    expected_versions: dict[str, str] | None = Field(
        default=None,
        description="principle -> adapter version this request must be scored with; 409 if one is not loaded.",
    )


class ItemScores(_Model):
    scores: dict[str, float] = Field(description="Per principle: normalised score (or raw if normalize=false).")
    raw_scores: dict[str, float] = Field(description="Per principle: the model's raw score.")
    reward: float | None = Field(default=None, description="The scalarized reward, when a scalarizer was given.")
    tokens: int = Field(description="Model input tokens of this item (after truncation).")
    truncated: bool = Field(description="True when the input was cut to the model's max length.")


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

    scores: list[dict[str, float]] = Field(
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
    prompt: str
    response_a: str
    response_b: str
    principles: list[str] | None = None
    scalarizer: ScalarizerSpec | None = None
    normalize: bool = True
    expected_versions: dict[str, str] | None = None


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
    mean: float = 0.0
    std: float = Field(default=1.0, gt=0)


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


class PrinciplesResponse(_Model):
    base_model: str
    base_config_hash: str
    #: what the base computes in (`float32`: scores exactly as trained; `bfloat16`: within about 1%)
    dtype: str = "float32"
    principles: list[PrincipleInfo]


class LoadAdapterRequest(_Model):
    name: str = Field(pattern=_PRINCIPLE_PATTERN, description="Principle name.")
    version: str | None = Field(
        default=None,
        pattern=_VERSION_PATTERN,
        description="Package version directory under <adapter_root>/<name>/ (default: the newest).",
    )
    path: str | None = Field(
        default=None, description="Alternative to version: a package directory inside the adapter root."
    )


class AdapterAction(_Model):
    action: Literal["loaded", "replaced", "unloaded"]
    principle: PrincipleInfo
    previous_version: str | None = None


# -------------------------------------------------------------------------------- OpenRLHF compatibility
class OpenRLHFRewardRequest(BaseModel):
    """OpenRLHF's remote reward model contract: full texts in `query`, their prompts in `prompts`."""

    model_config = ConfigDict(extra="allow")
    query: list[str] = Field(min_length=1)
    prompts: list[str] | None = None


class OpenRLHFRewardResponse(_Model):
    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]] = Field(default_factory=dict)
