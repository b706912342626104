"""A PPO run: load the policy, stream prompts, step the trainer, log, checkpoint, resume.

A run folder (``run.out_dir``; its format is `morlaif.run_folder`'s, the checkpoint `morlaif.checkpoint`'s)
holds::

    config.yaml          the configuration it was started with (a rerun with another one is refused)
    checkpoint/          weights.safetensors (trainable tensors) + state.pt (optimizer, scheduler, KL
                         controller, reward moments, pinned adapter versions, RNG), replaced atomically
    metrics.jsonl        one line per step
    tb/                  TensorBoard events
    policy/              the trained policy (a PEFT adapter or a full model) + tokenizer + morlaif_policy.json

Running the same command again resumes from the checkpoint and continues the same run exactly: the
prompt order is a function of (seed, step), and every other source of randomness is in the checkpoint.
When the PM server stops answering and the client's retries run out, the run saves a checkpoint of the
state before the failed step and stops with `RewardUnavailableError`: a step never trains on a missing reward.

Under `accelerate launch --num_processes N` the run is data parallel (`PPOTrainer`'s docstring): every rank
reads the config and the prompts, only the main rank writes the run folder (config, checkpoints, metrics,
TensorBoard, the policy), and the ranks agree at each step boundary on whether to stop (a signal that
reached one rank stops all after the same step). A checkpoint holds full tensors and no rank count, so a run
saved with N processes resumes with M.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from morlaif.checkpoint import rng_state, set_rng_state
from morlaif.client import MorlaifClient, RetryPolicy
from morlaif.distributed import Distributed, resolve_device
from morlaif.errors import APIStatusError, ClientError, MorlaifError, RetriesExhaustedError
from morlaif.run_folder import POLICY, POLICY_MANIFEST, RunFolder
from morlaif.runs import StopRequest, defer_stop_signals, git_commit, progress
from policy_trainer.config import ConfigError, ModelConfig, TrainConfig, config_to_dict
from policy_trainer.data import read_prompts, render, split_prompts
from policy_trainer.ppo import PPOTrainer
from policy_trainer.rollout import check_backend

__all__ = [
    "POLICY_MANIFEST",
    "RewardUnavailableError",
    "RunDir",
    "RunResult",
    "load_policy",
    "load_trained_policy",
    "train",
    "prompt_batches",
]

logger = logging.getLogger(__name__)

# what a rerun may change and still continue the same run (a PM server that moved, a longer run)
_RESUMABLE_CHANGES = {
    ("run", "steps"),
    ("run", "save_every"),
    ("run", "tensorboard"),
    ("reward", "url"),
    ("reward", "api_key_env"),
    ("reward", "timeout"),
    ("reward", "max_retries"),
    ("model", "device"),
}


class RewardUnavailableError(MorlaifError):
    """The PM server could not give the rewards of a step; the run saved a checkpoint and stopped."""


@dataclass(kw_only=True)
class RunResult:
    steps_done: int
    resumed_from: int
    interrupted: bool
    out_dir: Path
    # 130 after Ctrl-C, 143 after SIGTERM (the checkpoint of the last finished step is saved); 0 otherwise
    exit_code: int = 0
    history: list[dict[str, float]]
    # False in the other processes of a data-parallel run: only the main one reports
    main: bool = True


# ------------------------------------------------------------------------------------------ models
def _resolve(name_or_path: str) -> str:
    from morlaif.models import SMOLLM2, smollm2_dir

    return str(smollm2_dir()) if name_or_path == SMOLLM2 else name_or_path


def load_policy(cfg: ModelConfig, device: torch.device | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) as the config says, on `device` (default: cfg.device); with LoRA a fresh adapter
    named "default" is attached."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _resolve(cfg.name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, cfg.dtype))
    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=0.0,  # dropout would make the rollout's log-probs differ from the update's at ratio 1
            target_modules=cfg.lora_target_modules,
            task_type="CAUSAL_LM",
        )
        with warnings.catch_warnings():
            # PEFT calls a transformers property that transformers 5 deprecated; nothing for us to change
            warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
            model = get_peft_model(model, lora)
    return model.to(device or resolve_device(cfg.device)), tokenizer


def load_trained_policy(path: str | Path, *, device: str = "auto") -> tuple[Any, Any]:
    """A policy to sample from: a run folder, its policy/ folder, `smollm2`, a model folder or a hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path)
    if (p / POLICY / POLICY_MANIFEST).is_file():
        p = p / POLICY
    if (p / POLICY_MANIFEST).is_file():
        manifest = json.loads((p / POLICY_MANIFEST).read_text())
        if manifest.get("lora"):
            from peft import PeftModel

            base = AutoModelForCausalLM.from_pretrained(_resolve(manifest["base"]), dtype=torch.float32)
            model = PeftModel.from_pretrained(base, str(p)).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(p))
    else:
        src = _resolve(str(path))
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(src)
    return model.to(resolve_device(device)).eval(), tokenizer


# -------------------------------------------------------------------------------------------- data
def prompt_batches(n_prompts: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Indices of step `step`'s prompts: epochs of seeded permutations, so a resumed run sees the same order."""
    if n_prompts < batch_size:
        raise ValueError(f"{n_prompts} training prompts are fewer than one batch ({batch_size})")
    per_epoch = n_prompts // batch_size  # a partial last batch is dropped, as a DataLoader with drop_last
    epoch, k = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_prompts, generator=g)
    return order[k * batch_size : (k + 1) * batch_size].tolist()


# ----------------------------------------------------------------------------------------- run dir
class RunDir:
    """The run folder (`morlaif.run_folder.RunFolder`) as a run writes it; with several processes every method
    is called by every rank and only the main one writes (a save is a collective under FSDP / ZeRO-3, and all
    ranks wait for it to be complete)."""

    def __init__(self, root: Path, dist: Distributed | None = None) -> None:
        self.root = root
        self.dist = dist or Distributed(torch.device("cpu"))
        self.folder = RunFolder(root)
        self.ckpt = self.folder.checkpoint
        self.metrics = self.folder.metrics_path
        self.config = self.folder.config_path

    def check_config(self, cfg: TrainConfig) -> None:
        """Write config.yaml, or refuse a rerun whose config differs in more than the run's length."""
        new = config_to_dict(cfg)
        if not self.config.is_file():
            self.dist.barrier()  # every rank has looked before the main one writes
            if self.dist.is_main:
                self.folder.write_config(new)
            self.dist.barrier()
            return
        old = self.folder.read_config() or {}
        diffs = [
            f"{s}.{k}: {old.get(s, {}).get(k)!r} -> {v!r}"
            for s, sub in new.items()
            for k, v in sub.items()
            if (s, k) not in _RESUMABLE_CHANGES and old.get(s, {}).get(k) != v
        ]
        if diffs:
            raise ConfigError(
                f"{self.root} holds a run with another configuration ({'; '.join(diffs[:3])}); "
                "use another run.out_dir, or delete the folder to start over"
            )
        self.dist.barrier()
        if self.dist.is_main:
            self.folder.write_config(new)
        self.dist.barrier()

    def save(self, trainer: PPOTrainer, rng: dict[str, Any]) -> None:
        """Write the checkpoint (`Checkpoint.write`: a crash never leaves half a checkpoint)."""
        weights = trainer.trainable_state()  # every rank: a collective when parameters are sharded
        if self.dist.is_main:
            self.ckpt.write(weights, {**trainer.state_dict(), "rng": rng})
        self.dist.barrier()

    def load(self, trainer: PPOTrainer) -> int:
        """Restore the last checkpoint into `trainer`; the number of steps it had done (0: none)."""
        if not self.ckpt.exists():
            self._truncate_metrics(0)  # steps logged before a stop that saved nothing will be run again
            return 0
        state = self.ckpt.read_state()
        trainer.load_state(self.ckpt.read_weights(), state)
        set_rng_state(state["rng"])
        self._truncate_metrics(trainer.steps_done)
        return trainer.steps_done

    def _truncate_metrics(self, steps_done: int) -> None:
        """Drop lines of steps after the checkpoint (they will be run again)."""
        self.dist.barrier()  # every rank has read the checkpoint
        if self.dist.is_main:
            self.folder.truncate_metrics(steps_done)

    def log(self, row: dict[str, Any]) -> None:
        if self.dist.is_main:
            self.folder.append_metrics(row)

    def save_policy(self, trainer: PPOTrainer, tokenizer: Any, cfg: TrainConfig) -> Path:
        state = trainer.lm_state_dict()  # every rank: a collective when parameters are sharded
        if self.dist.is_main:
            self._write_policy(trainer, state, tokenizer, cfg)
        self.dist.barrier()
        return self.folder.policy_path

    def _write_policy(self, trainer: PPOTrainer, state: dict[str, Any], tokenizer: Any, cfg: TrainConfig) -> None:
        out = self.folder.policy_path
        tmp = out.with_name(f"{out.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        trainer.policy.lm.save_pretrained(str(tmp), state_dict=state)
        tokenizer.save_pretrained(str(tmp))
        manifest = {
            "base": cfg.model.name_or_path,
            "lora": cfg.model.lora,
            "steps": trainer.steps_done,
            "git_commit": git_commit(),
            "written": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        (tmp / POLICY_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)


def _tensorboard(root: Path, purge_step: int) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(RunFolder(root).tensorboard_path), purge_step=purge_step + 1)


def _check_principles(client: MorlaifClient, cfg: TrainConfig) -> None:
    """Fail before loading the policy when the server lacks a principle the rewards need."""
    served = {p.name for p in client.principles().principles}
    r = cfg.reward
    wanted = [*(r.principles or []), *((r.weights or {}).keys())]
    missing = sorted({p for p in wanted if p not in served})
    if missing:
        raise ConfigError(
            f"reward: the PM server at {r.url} does not serve {', '.join(missing)} "
            f"(it serves {', '.join(sorted(served))})"
        )


# --------------------------------------------------------------------------------------------- run
def train(
    cfg: TrainConfig,
    *,
    progress_bar: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    client: MorlaifClient | None = None,
) -> RunResult:
    """Run (or resume) the PPO run `cfg` describes; returns when run.steps are done or Ctrl-C stopped it."""
    cfg = dataclasses.replace(cfg, reward=cfg.reward.resolved())
    dist = Distributed.from_env(cfg.model.device)
    if dist.enabled and dist.is_main:
        logger.warning("data parallel: %s", dist.describe())
    run = RunDir(Path(cfg.run.out_dir), dist)
    # 1. prompts (fail on bad data before anything slow)
    prompts = read_prompts(cfg.data.prompts)
    train_prompts, held_out = split_prompts(prompts, cfg.data.eval_fraction, salt=cfg.data.split_salt)
    logger.info("%d prompts: %d for training, %d held out", len(prompts), len(train_prompts), len(held_out))
    prompt_batches(len(train_prompts), cfg.ppo.batch_size, cfg.run.seed, 0)  # enough prompts for a batch?
    for key in ("batch_size", "mini_batch_size"):  # global sizes: each rank takes an equal share
        dist.check_divides(getattr(cfg.ppo, key), f"ppo.{key}")
    check_backend(cfg.generation.backend)  # vllm without vllm or a GPU: said now, not after loading a model
    # 2. the PM server (before the policy: a wrong URL or principle fails in a second, not a minute)
    own_client = client is None
    if client is None:
        retry = RetryPolicy(max_retries=cfg.reward.max_retries)
        key = os.environ.get(cfg.reward.api_key_env)
        client = MorlaifClient(cfg.reward.url, api_key=key, timeout=cfg.reward.timeout, retry=retry)
    try:
        try:
            _check_principles(client, cfg)
        except RetriesExhaustedError as e:
            raise RewardUnavailableError(f"cannot reach the PM server at {cfg.reward.url}: {e}") from e
        except APIStatusError as e:
            raise RewardUnavailableError(f"the PM server at {cfg.reward.url} refused: {e}") from e
        run.check_config(cfg)
        # 3. the policy, the trainer, and the checkpoint if there is one
        torch.manual_seed(cfg.run.seed)
        with dist.local_main_first():  # one rank per node fills the model cache, the others then read it
            model, tokenizer = load_policy(cfg.model, dist.device)
        trainer = PPOTrainer(
            model, tokenizer, client, config=cfg.ppo, generation=cfg.generation, reward=cfg.reward, dist=dist,
            seed=cfg.run.seed,
        )  # fmt: skip
        resumed_from = run.load(trainer)
        if resumed_from and dist.is_main:
            logger.warning("resuming %s from step %d", run.root, resumed_from)
        queries = [render(p, tokenizer, chat_template=cfg.data.chat_template) for p in train_prompts]
        return _loop(cfg, run, trainer, tokenizer, train_prompts, queries, resumed_from, progress_bar, on_step)
    finally:
        if own_client:
            client.close()


def _loop(
    cfg: TrainConfig,
    run: RunDir,
    trainer: PPOTrainer,
    tokenizer: Any,
    prompts: list[str],
    queries: list[str],
    resumed_from: int,
    progress_bar: bool,
    on_step: Callable[[int, dict[str, float]], None] | None,
) -> RunResult:
    interrupted = StopRequest()
    dist = run.dist
    history: list[dict[str, float]] = []
    tb = _tensorboard(run.root, resumed_from) if cfg.run.tensorboard and dist.is_main else None
    bar = progress(cfg.run.steps, resumed_from, "ppo", progress_bar and dist.is_main)
    try:
        with defer_stop_signals(interrupted):
            while trainer.steps_done < cfg.run.steps:
                # the ranks agree before each step: a signal that reached any of them stops them all here
                if dist.agree_on_stop(interrupted):
                    break
                step = trainer.steps_done
                idx = prompt_batches(len(prompts), cfg.ppo.batch_size, cfg.run.seed, step)
                rng = rng_state()  # the state a resumed run must start this step from
                try:
                    stats = trainer.step([prompts[i] for i in idx], [queries[i] for i in idx])
                except ClientError as e:
                    run.save(trainer, rng)
                    raise RewardUnavailableError(
                        f"step {step + 1}: no rewards from the PM server at {cfg.reward.url} ({e}); "
                        f"saved a checkpoint at step {step} in {run.root}: run the same command again to resume"
                    ) from e
                row = {"step": trainer.steps_done, "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
                row.update(stats)
                run.log(row)
                history.append(stats)
                if tb is not None:
                    for k, v in stats.items():
                        tb.add_scalar(k if "/" in k else f"ppo/{k}", v, trainer.steps_done)
                bar.update(1)
                bar.set_postfix(reward=f"{stats['reward']:.3f}", kl=f"{stats['kl']:.2f}", beta=f"{stats['beta']:.3f}")
                if on_step is not None and dist.is_main:
                    on_step(trainer.steps_done, stats)
                if trainer.steps_done % cfg.run.save_every == 0 or trainer.steps_done == cfg.run.steps:
                    run.save(trainer, rng_state())
            if interrupted.is_set():
                run.save(trainer, rng_state())
    finally:
        bar.close()
        if tb is not None:
            tb.close()
    if trainer.steps_done == cfg.run.steps:
        run.save_policy(trainer, tokenizer, cfg)
    return RunResult(
        steps_done=trainer.steps_done,
        resumed_from=resumed_from,
        interrupted=interrupted.is_set(),
        exit_code=interrupted.exit_code,
        out_dir=run.root,
        history=history,
        main=dist.is_main,
    )
