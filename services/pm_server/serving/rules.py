"""Rule principles: programmatic objectives registered beside learned ones and scalarized with them.

A rule reads the response text (and its token count under the base's tokenizer) and returns a raw score;
calibration (mean, std) turns it into the normalised score, as for adapters.

Rules come from a JSON file (`MORLAIF_RULES_FILE`), a list of objects such as::

    [{"name": "brevity", "kind": "length", "prefer": "shorter", "calibration": {"mean": -150, "std": 100}},
     {"name": "no_refusal", "kind": "regex", "pattern": "(?i)\\\\bI can(no|')t\\\\b", "match_score": 0.0,
      "no_match_score": 1.0}]
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from morlaif.errors import MorlaifError
from morlaif.principles import PRINCIPLE_NAME_RE, STOCK_REFUSAL_RE
from morlaif.protocol import Calibration

__all__ = ["LengthRule", "RegexRule", "Rule", "DEFAULT_RULES", "load_rules", "RuleError"]


class RuleError(MorlaifError):
    """A rules file is invalid; the message names the file and the rule."""


class _RuleBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=PRINCIPLE_NAME_RE.pattern)
    description: str = ""
    calibration: Calibration = Field(default_factory=Calibration)
    version: str = "rule-1"


class LengthRule(_RuleBase):
    """Response length in tokens: `prefer: shorter` scores -tokens, `longer` scores +tokens."""

    kind: Literal["length"] = "length"
    prefer: Literal["shorter", "longer"] = "shorter"

    def raw(self, response: str, response_tokens: int) -> float:
        return float(-response_tokens if self.prefer == "shorter" else response_tokens)


class RegexRule(_RuleBase):
    """`match_score` when the pattern is found in the response (re.search), else `no_match_score`."""

    kind: Literal["regex"] = "regex"
    pattern: str = Field(max_length=1000)
    match_score: float = 1.0
    no_match_score: float = 0.0

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"invalid regular expression: {e}") from e
        return v

    def raw(self, response: str, response_tokens: int) -> float:
        return self.match_score if re.search(self.pattern, response) else self.no_match_score


Rule = Annotated[LengthRule | RegexRule, Field(discriminator="kind")]

DEFAULT_RULES: tuple[LengthRule | RegexRule, ...] = (
    LengthRule(
        name="brevity",
        description="Fewer response tokens score higher (calibrated around 100 tokens).",
        prefer="shorter",
        calibration=Calibration(mean=-100.0, std=100.0),
    ),
    RegexRule(
        name="no_refusal",
        description="1 when the response does not open with a stock refusal, else 0.",
        pattern=STOCK_REFUSAL_RE.pattern,  # rule-2: also "I apologize", "Sorry", "I'm not able", "I'd rather not"
        version="rule-2",
        match_score=0.0,
        no_match_score=1.0,
        calibration=Calibration(mean=0.5, std=0.5),
    ),
)


def load_rules(path: Path) -> tuple[LengthRule | RegexRule, ...]:
    """Rules from a JSON file; a `RuleError` naming the file and the offending rule on bad input."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise RuleError(f"{path}: no such rules file") from e
    except json.JSONDecodeError as e:
        raise RuleError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from e
    try:
        rules = TypeAdapter(list[Rule]).validate_python(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise RuleError(f"{path}: rule {loc}: {first['msg']}") from e
    names = [r.name for r in rules]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise RuleError(f"{path}: rule names repeat: {', '.join(dupes)}")
    return tuple(rules)
