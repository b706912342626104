"""PPO on a causal LM with rewards from a remote PM server (through `morlaif.client` only).

One `PPOTrainer.step(prompts)` runs the loop of Ziegler et al. in numbered phases:
1. generate a response per prompt; 2. score (prompt, response) on the PM server, every reward of the batch
from the same adapter versions (`morlaif.pinned.PinnedScorer`); 3. per-token log-probabilities, values and
the reference's log-probabilities; 4. rewards = scalarized score at the last token - beta * KL per token, then
GAE; 5. PPO epochs over minibatches with clipped policy and value losses; 6. the adaptive KL controller.

With LoRA the reference model is the policy with its adapters disabled: one copy of the weights in memory.

Data parallel (`morlaif.distributed`, under `accelerate launch`): `step` takes the same global batch on every
rank; each rank generates, scores and runs the rollout forwards of its contiguous shard (phases 1-3), then the
ranks gather the rollouts, so phases 4 and 6 (reward normalisation, GAE, advantage whitening, the KL
controller) see the global batch exactly as one process would. In phase 5 every rank takes its share of each
global minibatch; its loss is weighted by its share of the minibatch's response tokens, so DDP's mean of the
ranks' gradients is the gradient of the global minibatch's token mean. Responses are sampled per row from
seeded streams (`policy_trainer.rollout`) and minibatches drawn from seeded permutations, so a step is the
same at any process count up to floating-point rounding.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import torch
from torch import nn

from morlaif.checkpoint import rng_state, set_rng_state  # re-exported: the RNG capture a checkpoint holds
from morlaif.client import MorlaifClient
from morlaif.distributed import Distributed
from morlaif.errors import ClientError
from morlaif.pinned import PinnedScorer
from policy_trainer.config import GenerationConfig, PPOConfig, RewardConfig
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
from policy_trainer.rollout import VLLMRollouts, check_backend, generate_hf, response_mask, row_seed

__all__ = [
    "PPOTrainer",
    "PeerRewardError",
    "PolicyWithValue",
    "rng_state",
    "set_rng_state",
]

logger = logging.getLogger(__name__)


class PeerRewardError(ClientError):
    """Another process of a data-parallel run got no rewards for its share of the batch."""


class PolicyWithValue(nn.Module):
    """A causal LM and a scalar value head on its last hidden state."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm
        hidden = lm.config.hidden_size
        self.v_head = nn.Linear(hidden, 1).to(next(lm.parameters()).device)
        nn.init.zeros_(self.v_head.weight)
        nn.init.zeros_(self.v_head.bias)

    # what TRL's unwrap_model_for_generation asks of the model it unwraps (it turns checkpointing off to generate)
    @property
    def is_gradient_checkpointing(self) -> bool:
        for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # transformers 5 renamed it
            try:
                return bool(getattr(self.lm, name))
            except AttributeError:
                continue
        return False

    def gradient_checkpointing_disable(self) -> None:
        self.lm.gradient_checkpointing_disable()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict[str, Any] | None = None) -> None:
        self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

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


def _minibatch_order(seed: int, step: int, epoch: int, n: int) -> torch.Tensor:
    """The order of a step's rollouts in PPO epoch `epoch`: a permutation seeded by (seed, step, epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed((seed * 1_000_003 + step) * 101 + epoch))


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
        dist: Distributed | None = None,
        seed: int = 0,
    ) -> None:
        """`dist`: the process group (default: this process alone); `seed` seeds the rollouts' sampling and the
        minibatch order (with the step number, so a resumed run continues the same streams)."""
        self.tokenizer = tokenizer
        self.dist = dist or Distributed(next(model.parameters()).device)
        self.seed = seed
        check_backend(generation.backend)
        for key in ("batch_size", "mini_batch_size"):  # global sizes: each rank takes an equal share
            self.dist.check_divides(getattr(config, key), f"ppo.{key}")
        self.policy = PolicyWithValue(model)  # the bare module: parameter names, checkpoints, generation
        self._peft = hasattr(model, "disable_adapter")
        self.ref = None if self._peft else (ref_model or copy.deepcopy(model)).eval().requires_grad_(False)
        self.client = client
        self.config = config
        self.generation = generation
        self.reward = reward
        params = [p for p in self.policy.parameters() if p.requires_grad]
        self.optimizer: Any = torch.optim.AdamW(params, lr=config.learning_rate)
        total = max(config.total_steps, 1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            (lambda step: max(0.0, 1.0 - step / total)) if config.lr_schedule == "linear" else (lambda step: 1.0),
        )
        # the model the updates run through: DDP / FSDP / DeepSpeed under a launcher, the policy itself alone;
        # wrapped at the first step, after a checkpoint was loaded into the bare policy (`load_state`)
        self.model: Any = self.policy
        self.prepared = False
        self.vllm: VLLMRollouts | None = None
        self.steps_done = 0
        self.kl_ctl: AdaptiveKLController | FixedKLController = (
            AdaptiveKLController(kl_coef=config.init_kl_coef, target=config.kl_target, horizon=config.kl_horizon)
            if config.adaptive_kl
            else FixedKLController(kl_coef=config.init_kl_coef)
        )
        self.reward_moments = RunningMoments()
        self.scorer = PinnedScorer(client, logger=logger)  # pinned once the ranks agree (`_score`)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        tokenizer.truncation_side = "left"  # a long prompt keeps its end, where the question is

    @property
    def pinned_versions(self) -> dict[str, str] | None:
        """The adapter versions (principle -> version) every reward of the next step must come from; None when
        any will do. Saved in checkpoints, so a resumed run keeps its pin."""
        return self.scorer.versions

    @pinned_versions.setter
    def pinned_versions(self, versions: dict[str, str] | None) -> None:
        self.scorer.versions = None if versions is None else dict(versions)

    @property
    def device(self) -> torch.device:
        return next(self.policy.parameters()).device

    def prepare(self) -> None:
        """Wrap the policy and optimizer for the launch configuration and start vLLM if asked; idempotent."""
        if self.prepared:
            return
        self.model, self.optimizer = self.dist.prepare(
            self.policy, self.optimizer, micro_batch_size=self.config.mini_batch_size // self.dist.world_size
        )
        if self.generation.backend == "vllm":
            from accelerate import Accelerator

            accelerator = self.dist.accelerator or Accelerator()
            self.vllm = VLLMRollouts(self.policy.lm, accelerator, self.tokenizer, self.generation)
            self.vllm.sync_weights()
        self.prepared = True

    # ------------------------------------------------------------------------------------------ phases
    def _generate(
        self, queries: list[str], seeds: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
        """This rank's rollouts: (prompt_ids, prompt_mask, responses, response_mask, texts), see rollout.py."""
        g = self.generation
        self.model.eval()
        if self.vllm is None:
            with self.dist.generation(self.model) as bare:
                return generate_hf(bare.lm, self.tokenizer, queries, seeds, g, synced=self.dist.sharded)
        tok = self.tokenizer
        enc = tok(queries, return_tensors="pt", padding=True, truncation=True, max_length=g.max_prompt_tokens)
        prompt_ids, prompt_mask = enc["input_ids"].to(self.device), enc["attention_mask"].float().to(self.device)
        rows = [ids[m.bool()].tolist() for ids, m in zip(enc["input_ids"], enc["attention_mask"], strict=True)]
        outs = self.vllm.generate(rows, seeds)
        width = max(1, max(len(o) for o in outs))
        responses = torch.full((len(outs), width), tok.pad_token_id, dtype=torch.long)
        for i, o in enumerate(outs):
            responses[i, : len(o)] = torch.tensor(o, dtype=torch.long)
        responses = responses.to(self.device)
        mask = response_mask(responses, tok.eos_token_id, tok.pad_token_id)
        texts = [tok.decode(r[: int(m.sum())], skip_special_tokens=True) for r, m in zip(responses, mask, strict=True)]
        return prompt_ids, prompt_mask, responses, mask, texts

    def _score_once(self, prompts: list[str], texts: list[str]) -> Any:
        """This rank's scores, on the pinned adapter versions (rescored on the new ones if they changed); the
        answer's versions are pinned by `_score` once every rank has the same."""
        r = self.reward
        kwargs = dict(principles=r.principles, scalarizer=r.scalarizer, weights=r.weights, params=r.params or None)
        return self.scorer.score(prompts, texts, pin=False, **kwargs)

    def _score(self, prompts: list[str], texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Scalarized rewards (b,) and per-principle scores (b, P) of this rank's shard, and the principles.

        Every rank's rewards come from one set of adapter versions: when the ranks saw different ones (an
        adapter swapped mid-step), they all score again on the server's current ones. A scoring failure on
        any rank raises on every rank (`PeerRewardError` where another rank failed) before any update.
        """
        for _ in range(3):
            res, failure = None, None
            try:
                res = self._score_once(prompts, texts)
            except ClientError as e:
                failure = e
            failed = self.dist.gather_objects(None if failure is None else str(failure))  # agreed by every rank
            if any(failed):
                if failure is not None:
                    raise failure
                rank, why = next((r, m) for r, m in enumerate(failed) if m)
                raise PeerRewardError(f"process {rank} of this run got no rewards: {why}")
            assert res is not None
            seen = self.dist.gather_objects(dict(res.versions))
            if all(v == seen[0] for v in seen):
                break
            logger.warning("the processes scored on different adapter versions (%s); rescoring", seen)
            self.scorer.unpin()
        else:
            raise PeerRewardError("the processes could not score on one set of adapter versions in three tries")
        self.scorer.pin(res.versions)
        rewards = [x.reward for x in res.results]
        if any(x is None for x in rewards):  # the client guarantees this; a reward is never silently missing
            raise RuntimeError("the PM server returned an item without a reward")
        scores = [[x.scores[p] for p in res.principles] for x in res.results]
        return torch.tensor(rewards, dtype=torch.float32), torch.tensor(scores, dtype=torch.float32), res.principles

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
        """One PPO step on the global batch `prompts` (len == batch_size); returns the step's statistics.

        `queries` are the texts the policy continues (e.g. `prompts` in its chat template); the PM server
        scores (prompt, response). Nothing is updated before every reward of the global batch has arrived: a
        scoring failure on any rank leaves the weights, optimizer and controllers as they were, on every rank.
        Every rank passes the same global batch and gets the same (global) statistics.
        """
        cfg, dist = self.config, self.dist
        if len(prompts) != cfg.batch_size:
            raise ValueError(f"a step takes batch_size={cfg.batch_size} prompts, got {len(prompts)}")
        queries = prompts if queries is None else queries
        self.prepare()
        rows = dist.shard(cfg.batch_size)  # this rank's contiguous share of the global batch
        seeds = [row_seed(self.seed, self.steps_done, i) for i in range(rows.start, rows.stop)]
        t0 = time.perf_counter()
        # 1. generate this rank's share
        prompt_ids, prompt_mask, responses, resp_mask, texts = self._generate(queries[rows], seeds)
        # 2. score it through the PM server
        t1 = time.perf_counter()
        scores, principle_scores, principles = self._score(prompts[rows], texts)  # (b,), (b, P)
        reward_wait = time.perf_counter() - t1
        # 3. rollout log-probs and values, and the reference's log-probs, of this rank's share
        ids, attn = torch.cat([prompt_ids, responses], 1), torch.cat([prompt_mask, resp_mask], 1)
        with torch.no_grad():
            self.model.eval()
            old_logprobs, old_values, _ = self._forward(self.model, ids, attn, resp_mask.shape[1])
            ref_logprobs = self._ref_logprobs(ids, attn, resp_mask.shape[1])
        # ... gathered: from here on every rank holds the global batch (prompts left-padded, responses right)
        pad = self.tokenizer.pad_token_id
        ids = torch.cat(
            [dist.gather_padded(prompt_ids, pad=pad, pad_first=True), dist.gather_padded(responses, pad=pad)], 1
        )
        attn = torch.cat([dist.gather_padded(prompt_mask, pad_first=True), dist.gather_padded(resp_mask)], 1)
        mask = dist.gather_padded(resp_mask)  # (B, R)
        old_logprobs, old_values, ref_logprobs = (
            dist.gather_padded(x) for x in (old_logprobs, old_values, ref_logprobs)
        )
        scores = dist.gather_padded(scores.to(self.device))  # (B,)
        principle_scores = dist.gather_padded(principle_scores.to(self.device))  # (B, P)
        n_resp = mask.shape[1]
        raw_mean = float(scores.mean())
        if cfg.normalize_rewards:
            self.reward_moments.update(scores)
            scores = (scores - self.reward_moments.mean) / max(self.reward_moments.std, 1e-6)
        scores = scores.clamp(-cfg.reward_clip, cfg.reward_clip)
        # 4. rewards with the per-token KL penalty, then advantages
        beta = self.kl_ctl.kl_coef
        rewards, kl = penalized_rewards(scores, old_logprobs, ref_logprobs, mask, beta)  # (B, R)
        advantages, returns = compute_gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
        advantages = masked_whiten(advantages, mask)
        # 5. PPO epochs over global minibatches, each rank taking its share of every one
        self.model.train()
        share = cfg.mini_batch_size // dist.world_size
        names = ("policy_loss", "value_loss", "clipfrac", "approx_kl", "entropy")
        stats: list[list[float]] = []
        for epoch in range(cfg.ppo_epochs):
            order = _minibatch_order(self.seed, self.steps_done, epoch, cfg.batch_size)
            for s in range(0, cfg.batch_size, cfg.mini_batch_size):
                mb = order[s : s + cfg.mini_batch_size]
                part = mb[dist.rank * share : (dist.rank + 1) * share]
                # this rank's share of the minibatch's response tokens, times N: DDP averages over the ranks
                w = mask[part].sum() * dist.world_size / mask[mb].sum().clamp(min=1)
                logprobs, values, logits = self._forward(self.model, ids[part], attn[part], n_resp)
                pg_loss, clipfrac, approx_kl = policy_loss(
                    logprobs, old_logprobs[part], advantages[part], mask[part], cfg.clip_range
                )
                vf_loss, _ = value_loss(values, old_values[part], returns[part], mask[part], cfg.clip_range_value)
                loss = (pg_loss + cfg.vf_coef * vf_loss) * w
                self.optimizer.zero_grad(set_to_none=True)
                dist.backward(loss)
                dist.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                with torch.no_grad():
                    entropy = masked_mean(entropy_from_logits(logits), mask[part])
                    stats.append(
                        [float(x * w) for x in (pg_loss.detach(), vf_loss.detach(), clipfrac, approx_kl, entropy)]
                    )
        # the global minibatches' token means: each rank's weighted share, averaged over the ranks
        flat = dist.mean([x for row in stats for x in row])
        means = {k: sum(flat[i :: len(names)]) / len(stats) for i, k in enumerate(names)}
        if self.vllm is not None:
            self.vllm.sync_weights()
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
            **means,
            **{f"score/{p}": float(principle_scores[:, i].mean()) for i, p in enumerate(principles)},
        }
        return out

    # ------------------------------------------------------------------------------------- checkpoints
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The weights the optimizer changes (LoRA and value head, or everything with full fine-tuning), in
        full; every rank must call it (under FSDP / ZeRO-3 it gathers the shards)."""
        names = [n for n, p in self.policy.named_parameters() if p.requires_grad]
        if self.dist.sharded:
            full = self.dist.full_state_dict(self.model)
            return {n: full[n].detach().cpu().contiguous() for n in names if n in full}
        params = dict(self.policy.named_parameters())
        return {n: params[n].detach().cpu().contiguous() for n in names}

    def lm_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The causal LM's full state for `save_pretrained` when parameters are sharded (every rank calls it);
        None otherwise (the model's own)."""
        if not self.dist.sharded:
            return None
        full = self.dist.full_state_dict(self.model)
        return {k.removeprefix("lm."): v for k, v in full.items() if k.startswith("lm.")}

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
        """Restore a checkpoint (full tensors, from any process count) into the bare policy, before `prepare`."""
        if self.prepared and self.dist.sharded:
            raise RuntimeError("load a checkpoint before the first step: the parameters are sharded by now")
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
