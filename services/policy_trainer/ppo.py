"""PPO on a causal LM with rewards from a remote PM server (through `morlaif.client` only).

One `PPOTrainer.step(prompts)` runs the loop of Ziegler et al. in numbered phases:
1. generate a response per prompt; 2. score (prompt, response) on the PM server, every reward of the batch
from the same adapter versions; 3. per-token log-probabilities, values and the reference's log-probabilities;
4. rewards = scalarized score at the last token - beta * KL per token, then GAE; 5. PPO epochs over
minibatches with clipped policy and value losses; 6. the adaptive KL controller.

With LoRA the reference model is the policy with its adapters disabled: one copy of the weights in memory.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from morlaif.client import MorlaifClient
from morlaif.errors import APIStatusError
from policy_trainer.ppo_core import (
    AdaptiveKLController,
    FixedKLController,
    RunningMoments,
    compute_gae,
    entropy_from_logits,
    logprobs_from_logits,
    masked_mean,
    masked_whiten,
    penalized_rewards,
    policy_loss,
    value_loss,
)

__all__ = [
    "GenerationConfig",
    "PPOConfig",
    "PPOTrainer",
    "PolicyWithValue",
    "RewardConfig",
    "rng_state",
    "set_rng_state",
]

logger = logging.getLogger(__name__)


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
        from morlaif.protocol import ScalarizerSpec

        spec = ScalarizerSpec.from_file(self.weights_file)
        return dataclasses.replace(
            self, scalarizer=spec.name, weights=spec.weights, params=dict(spec.params), weights_file=None
        )


class PolicyWithValue(nn.Module):
    """A causal LM and a scalar value head on its last hidden state."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm
        hidden = lm.config.hidden_size
        self.v_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.v_head.weight)
        nn.init.zeros_(self.v_head.bias)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.lm(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, output_hidden_states=True
        )
        values = self.v_head(out.hidden_states[-1].float()).squeeze(-1)  # (B, T)
        return out.logits, values


def _position_ids(attn: torch.Tensor) -> torch.Tensor:
    """Positions as generate() numbers left-padded rows: the first real token is 0."""
    return (attn.long().cumsum(1) - 1).clamp(min=0)


def _response_mask(responses: torch.Tensor, eos_id: int | None, pad_id: int) -> torch.Tensor:
    """1 for response tokens up to and including the first eos; 0 after (what generate pads with)."""
    if eos_id is None:
        return (responses != pad_id).float()
    is_eos = responses == eos_id
    after_eos = (is_eos.long().cumsum(1) - is_eos.long()) > 0  # (B, R) strictly after the first eos
    return (~after_eos).float()


class PPOTrainer:
    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        client: MorlaifClient,
        *,
        config: PPOConfig,
        generation: GenerationConfig,
        reward: RewardConfig,
        ref_model: nn.Module | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.policy = PolicyWithValue(model)
        self._peft = hasattr(model, "disable_adapter")
        self.ref = None if self._peft else (ref_model or copy.deepcopy(model)).eval().requires_grad_(False)
        self.client = client
        self.config = config
        self.generation = generation
        self.reward = reward
        params = [p for p in self.policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.learning_rate)
        total = max(config.total_steps, 1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            (lambda step: max(0.0, 1.0 - step / total)) if config.lr_schedule == "linear" else (lambda step: 1.0),
        )
        self.steps_done = 0
        self.kl_ctl: AdaptiveKLController | FixedKLController = (
            AdaptiveKLController(kl_coef=config.init_kl_coef, target=config.kl_target, horizon=config.kl_horizon)
            if config.adaptive_kl
            else FixedKLController(kl_coef=config.init_kl_coef)
        )
        self.reward_moments = RunningMoments()
        self.pinned_versions: dict[str, str] | None = None
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        tokenizer.truncation_side = "left"  # a long prompt keeps its end, where the question is

    @property
    def device(self) -> torch.device:
        return next(self.policy.parameters()).device

    # ------------------------------------------------------------------------------------------ phases
    @torch.no_grad()
    def _generate(self, queries: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
        g = self.generation
        enc = self.tokenizer(
            queries, return_tensors="pt", padding=True, truncation=True, max_length=g.max_prompt_tokens
        ).to(self.device)
        self.policy.eval()
        out = self.policy.lm.generate(
            **enc,
            do_sample=True,
            max_new_tokens=g.max_new_tokens,
            temperature=g.temperature,
            top_k=g.top_k,
            top_p=g.top_p,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        prompt_ids, prompt_mask = enc["input_ids"], enc["attention_mask"]
        responses = out[:, prompt_ids.shape[1] :]  # (B, R)
        mask = _response_mask(responses, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id)
        texts = [
            self.tokenizer.decode(r[: int(m.sum())], skip_special_tokens=True)
            for r, m in zip(responses, mask, strict=True)
        ]
        return torch.cat([prompt_ids, responses], 1), torch.cat([prompt_mask.float(), mask], 1), mask, texts

    def _score(self, prompts: list[str], texts: list[str]) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalarized rewards of the batch, all from the same adapter versions (rescored if they changed)."""
        r = self.reward
        kwargs = dict(principles=r.principles, scalarizer=r.scalarizer, weights=r.weights, params=r.params or None)
        try:
            res = self.client.score(prompts, texts, expected_versions=self.pinned_versions, **kwargs)
        except APIStatusError as e:
            if e.status_code != 409:
                raise
            logger.warning("the PM server's adapter versions changed (%s); rescoring the batch on the new ones", e)
            res = self.client.score(prompts, texts, **kwargs)
        if self.pinned_versions != res.versions:
            logger.info("rewards pinned to adapter versions %s", res.versions)
            self.pinned_versions = dict(res.versions)
        rewards = [x.reward for x in res.results]
        if any(x is None for x in rewards):  # the client guarantees this; a reward is never silently missing
            raise RuntimeError("the PM server returned an item without a reward")
        per_principle = {p: sum(x.scores[p] for x in res.results) / len(res.results) for p in res.principles}
        return torch.tensor(rewards, dtype=torch.float32), per_principle

    def _forward(
        self, model: nn.Module, ids: torch.Tensor, attn: torch.Tensor, n_resp: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probs (B, R), values (B, R) and logits (B, R, V) of the response tokens."""
        position_ids = _position_ids(attn)
        logits, values = model(ids, attn.long(), position_ids)
        logits = logits[:, -n_resp - 1 : -1]  # (B, R, V): the logits that produced each response token
        values = values[:, -n_resp - 1 : -1]  # (B, R)
        return logprobs_from_logits(logits, ids[:, -n_resp:]), values, logits

    @torch.no_grad()
    def _ref_logprobs(self, ids: torch.Tensor, attn: torch.Tensor, n_resp: int) -> torch.Tensor:
        position_ids = _position_ids(attn)
        if self._peft:
            with self.policy.lm.disable_adapter():
                logits = self.policy.lm(input_ids=ids, attention_mask=attn.long(), position_ids=position_ids).logits
        else:
            assert self.ref is not None
            logits = self.ref(input_ids=ids, attention_mask=attn.long(), position_ids=position_ids).logits
        return logprobs_from_logits(logits[:, -n_resp - 1 : -1], ids[:, -n_resp:])

    # -------------------------------------------------------------------------------------------- step
    def step(self, prompts: list[str], queries: list[str] | None = None) -> dict[str, float]:
        """One PPO step on `prompts` (len == batch_size); returns the step's statistics.

        `queries` are the texts the policy continues (e.g. `prompts` in its chat template); the PM server
        scores (prompt, response). Nothing is updated before every reward has arrived: a scoring failure
        leaves the weights, optimizer and controllers as they were.
        """
        cfg = self.config
        if len(prompts) != cfg.batch_size:
            raise ValueError(f"a step takes batch_size={cfg.batch_size} prompts, got {len(prompts)}")
        queries = prompts if queries is None else queries
        t0 = time.perf_counter()
        # 1. generate
        ids, attn, mask, texts = self._generate(queries)  # (B, P+R), (B, P+R), (B, R)
        n_resp = mask.shape[1]
        # 2. score through the PM server
        t1 = time.perf_counter()
        scores, per_principle = self._score(prompts, texts)  # (B,)
        reward_wait = time.perf_counter() - t1
        scores = scores.to(self.device)
        raw_mean = float(scores.mean())
        if cfg.normalize_rewards:
            self.reward_moments.update(scores)
            scores = (scores - self.reward_moments.mean) / max(self.reward_moments.std, 1e-6)
        scores = scores.clamp(-cfg.reward_clip, cfg.reward_clip)
        # 3. rollout log-probs and values, and the reference's log-probs
        with torch.no_grad():
            self.policy.eval()
            old_logprobs, old_values, _ = self._forward(self.policy, ids, attn, n_resp)
            ref_logprobs = self._ref_logprobs(ids, attn, n_resp)
        # 4. rewards with the per-token KL penalty, then advantages
        beta = self.kl_ctl.kl_coef
        rewards, kl = penalized_rewards(scores, old_logprobs, ref_logprobs, mask, beta)  # (B, R)
        advantages, returns = compute_gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
        advantages = masked_whiten(advantages, mask)
        # 5. PPO epochs over minibatches
        self.policy.train()
        names = ("policy_loss", "value_loss", "clipfrac", "approx_kl", "entropy")
        stats: dict[str, list[float]] = {k: [] for k in names}
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(cfg.batch_size)
            for s in range(0, cfg.batch_size, cfg.mini_batch_size):
                mb = order[s : s + cfg.mini_batch_size]
                logprobs, values, logits = self._forward(self.policy, ids[mb], attn[mb], n_resp)
                pg_loss, clipfrac, approx_kl = policy_loss(
                    logprobs, old_logprobs[mb], advantages[mb], mask[mb], cfg.clip_range
                )
                vf_loss, _ = value_loss(values, old_values[mb], returns[mb], mask[mb], cfg.clip_range_value)
                loss = pg_loss + cfg.vf_coef * vf_loss
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                with torch.no_grad():
                    stats["entropy"].append(float(masked_mean(entropy_from_logits(logits), mask[mb])))
                stats["policy_loss"].append(float(pg_loss.detach()))
                stats["value_loss"].append(float(vf_loss.detach()))
                stats["clipfrac"].append(float(clipfrac))
                stats["approx_kl"].append(float(approx_kl))
        # 6. the KL controller sees the mean sequence KL of this batch
        seq_kl = float(kl.sum(1).mean())
        self.kl_ctl.update(seq_kl, cfg.batch_size)
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.steps_done += 1
        elapsed = time.perf_counter() - t0
        out = {
            "reward": raw_mean,
            "kl": seq_kl,
            "beta": beta,
            "lr": lr,
            "response_tokens": float(mask.sum(1).mean()),
            "seconds": elapsed,
            "generate_seconds": t1 - t0,
            "reward_wait_seconds": reward_wait,
            "samples_per_second": cfg.batch_size / elapsed,
            "tokens_per_second": float(mask.sum()) / elapsed,
            **{k: sum(v) / len(v) for k, v in stats.items()},
            **{f"score/{p}": v for p, v in per_principle.items()},
        }
        return out

    # ------------------------------------------------------------------------------------- checkpoints
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The weights the optimizer changes (LoRA and value head, or everything with full fine-tuning)."""
        return {n: p.detach().cpu().contiguous() for n, p in self.policy.named_parameters() if p.requires_grad}

    def state_dict(self) -> dict[str, Any]:
        """Everything but the weights that makes the next step the same as in an uninterrupted run."""
        return {
            "steps_done": self.steps_done,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "kl_ctl": self.kl_ctl.state_dict(),
            "reward_moments": self.reward_moments.state_dict(),
            "pinned_versions": self.pinned_versions,
        }

    def load_state(self, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        params = dict(self.policy.named_parameters())
        missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
        if missing:
            raise ValueError(f"the checkpoint lacks {len(missing)} trainable tensors, e.g. {missing[0]}")
        with torch.no_grad():
            for n, t in weights.items():
                params[n].copy_(t)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.reward_moments.load_state_dict(state["reward_moments"])
        self.pinned_versions = state["pinned_versions"]
        self.steps_done = int(state["steps_done"])


def rng_state() -> dict[str, Any]:
    """The RNG states a step consumes (sampling, minibatch order, dropout)."""
    out: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
