"""The maths of PPO for language models, as pure functions over (batch, tokens) tensors.

Names follow the papers (Schulman et al. 2017 for the clipped losses and GAE; Ziegler et al. 2019 for the
per-token KL penalty and the adaptive KL controller). Every tensor of response tokens comes with a
`mask` (1 for a real response token, 0 for padding) so variable-length responses batch together.
Each function is tested against a plain loop or a hand-computed case (tests/policy_trainer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "RunningMoments",
    "compute_gae",
    "entropy_from_logits",
    "logprobs_from_logits",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "penalized_rewards",
    "policy_loss",
    "value_loss",
]


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` where `mask` is 1 (over all elements, or along `dim`)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked elements of `x` (Bessel-corrected by default)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n < 2:
            return var
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Standardise the masked elements of `x` (advantages); padding stays 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) under `logits`: (B, T, V), (B, T) -> (B, T)."""
    return torch.gather(F.log_softmax(logits.float(), dim=-1), 2, labels.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each token's distribution: (B, T, V) -> (B, T)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def penalized_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: -kl_coef * (logp - logp_ref) at every response token, plus the sequence's
    scalarized score at its last real token. Returns (rewards (B, T), per-token KL estimate (B, T))."""
    kl = (logprobs - ref_logprobs) * mask  # (B, T)
    rewards = -kl_coef * kl  # (B, T)
    last = (mask.long().cumsum(1) == mask.long().sum(1, keepdim=True)) & (mask > 0)  # (B, T) one-hot last token
    rewards = rewards + last.float() * scores.unsqueeze(1)
    return rewards * mask, kl


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens: (advantages, returns), both (B, T).

    delta_t = r_t + gamma * V_{t+1} - V_t; A_t = delta_t + gamma * lam * A_{t+1}; the value after a
    sequence's last real token is 0 (the episode ends there). Padding gets advantage 0.
    """
    values = values * mask
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)  # (B,)
    T = rewards.shape[1]
    for t in reversed(range(T)):
        next_values = values[:, t + 1] if t + 1 < T else torch.zeros_like(last_gae)  # (B,)
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        last_gae = (delta + gamma * lam * last_gae) * mask[:, t]
        advantages[:, t] = last_gae
    returns = advantages + values
    return advantages * mask, returns * mask


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clipped surrogate loss; also the clip fraction and the approximate KL (k3 estimator) to the old policy."""
    log_ratio = (logprobs - old_logprobs) * mask  # (B, T)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    approx_kl = masked_mean(ratio - 1 - log_ratio, mask)  # k3: unbiased, always >= 0
    return loss, clipfrac.detach(), approx_kl.detach()


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss 0.5 * max((V - R)^2, (V_clipped - R)^2); also the share of tokens clipped."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    return loss, masked_mean((loss_clipped > loss_unclipped).float(), mask).detach()


@dataclass(kw_only=True)
class AdaptiveKLController:
    """Ziegler et al.'s controller: beta grows when the KL is above target, shrinks below it.

    beta <- beta * (1 + clip((KL - target) / target, -0.2, 0.2) * n_steps / horizon)
    """

    kl_coef: float = 0.05
    target: float = 6.0
    horizon: int = 10000

    def update(self, current_kl: float, n_steps: int) -> float:
        error = max(-0.2, min(0.2, current_kl / self.target - 1.0))
        self.kl_coef *= 1.0 + error * n_steps / self.horizon
        return self.kl_coef

    def state_dict(self) -> dict[str, float]:
        return {"kl_coef": self.kl_coef, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.kl_coef, self.target, self.horizon = float(state["kl_coef"]), float(state["target"]), int(state["horizon"])


@dataclass(kw_only=True)
class FixedKLController:
    """A constant beta."""

    kl_coef: float = 0.05

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.kl_coef

    def state_dict(self) -> dict[str, float]:
        return {"kl_coef": self.kl_coef}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.kl_coef = float(state["kl_coef"])


@dataclass(kw_only=True)
class RunningMoments:
    """Running mean and standard deviation of rewards across batches (Chan et al.'s parallel update)."""

    mean: float = 0.0
    var: float = 1.0
    count: float = 1e-8

    def update(self, x: torch.Tensor) -> tuple[float, float]:
        """Fold a batch in; returns the batch's own (mean, std)."""
        x = x.double().flatten()
        n = x.numel()
        if n == 0:
            return self.mean, math.sqrt(self.var)
        b_mean, b_var = float(x.mean()), float(x.var(unbiased=False))
        total = self.count + n
        delta = b_mean - self.mean
        m2 = self.var * self.count + b_var * n + delta * delta * self.count * n / total
        self.mean += delta * n / total
        self.var = m2 / total
        self.count = total
        return b_mean, math.sqrt(b_var * n / max(n - 1, 1))

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), float(state["count"])
