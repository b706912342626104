"""PM training: one LoRA adapter + score head per principle, soft Bradley-Terry loss, written as a package.

The model is built by the same code the server serves with (`load_base`, `TemplateEncoder`), so a
package scores identically in training, in `morlaif pm eval` and behind the HTTP API.

Usage::

    from pm_server.training.pairs import read_pairs
    from pm_server.training.trainer import TrainConfig, train_pm
    result = train_pm(read_pairs("../shared/data/factuality_truthfulqa.jsonl"), principle="factuality",
                      config=TrainConfig(), out_root=Path("var/adapters"), run_dir=Path("var/runs/factuality"))

The run directory (`_RunDir`) holds a checkpoint (`morlaif.checkpoint`: trainable weights, optimizer, scheduler,
RNG, position in the epoch) saved every `save_every` steps, at each epoch's end and on Ctrl-C: running the same
command again resumes where it stopped and ends with the same weights as a run that was never interrupted.

Under `accelerate launch --num_processes N` (`morlaif.distributed`) training is data parallel: `batch_size` is
the global batch; each rank runs the forward and backward of its contiguous share of every batch, weighted so
that DDP's mean of the ranks' gradients is the gradient of the global batch's mean loss; validation is split
over the ranks and gathered; only the main rank writes the run directory and the package. The checkpoint
holds full tensors and no rank count, so a run saved with N processes resumes with M.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from morlaif.checkpoint import Checkpoint, CheckpointError, load_tensors, rng_state, save_tensors, set_rng_state
from morlaif.distributed import Distributed
from morlaif.errors import MorlaifError
from morlaif.principles import get_principle
from morlaif.protocol import Calibration
from morlaif.runs import StopRequest, defer_stop_signals, git_commit
from morlaif.runs import progress as progress_bar
from morlaif.stats import wilson_interval
from pm_server.model.base import BaseModel, load_base, score_head
from pm_server.model.engine import collate
from pm_server.model.package import PackageManifest, save_head_package, save_package
from pm_server.model.template import Encoded, InputTemplate, TemplateEncoder
from pm_server.training.pairs import Pair, split_by_prompt, summarize

__all__ = [
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "bradley_terry_loss",
    "build_model",
    "default_layers",
    "pair_accuracy",
    "train_pm",
]

logger = logging.getLogger(__name__)


class TrainError(MorlaifError):
    """Training cannot start or resume; the message says what to change."""


@dataclass(kw_only=True)
class TrainConfig:
    """How one preference model is trained. Every field is recorded in the package's provenance."""

    base: str = "minilm"
    """Base model: `minilm` (embedded), a path or a hub id. Must be the PM server's base."""
    max_length: int = 256
    """Most tokens the PM sees (prompt cut from the left); stored in the package's template."""
    template_text: str | None = None
    """Decoders only: the text template with {prompt} and {response} (default: Human/Assistant)."""
    full_finetune: bool = False
    """Train every weight instead of LoRA; writes a full model folder, not an adapter package."""
    head_only: bool = False
    """Train the score head alone on the frozen base: a head package, which the server scores together with
    every other head-only principle in one base forward per item."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA input during training."""
    layers_to_transform: list[int] | None = None
    """Layers that get LoRA; default: the upper half, so the server can share the lower half."""
    learning_rate: float = 2e-3
    """Peak AdamW learning rate (linear warm-up, then linear decay)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    warmup_ratio: float = 0.06
    """Fraction of all steps spent warming the learning rate up."""
    epochs: int = 3
    """Most passes over the training pairs."""
    batch_size: int = 16
    """Pairs per step (twice as many sequences)."""
    margin: float = 0.0
    """Margin m added to every pair's own: loss = -p log s(d - m) - (1 - p) log s(-d - m)."""
    val_fraction: float = 0.15
    """Fraction of prompts held out for validation, calibration and early stopping."""
    patience: int = 1
    """Epochs without a better validation loss before stopping early."""
    seed: int = 0
    """Seeds the split, the head, LoRA's init, the batch order and dropout."""
    device: str = "auto"
    """cpu, cuda or auto."""
    save_every: int = 100
    """Steps between checkpoints (also saved at each epoch's end and on Ctrl-C)."""

    def __post_init__(self) -> None:
        checks = [
            (self.max_length >= 16, "max_length must be >= 16"),
            (self.lora_r >= 1, "lora_r must be >= 1"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (0.0 < self.val_fraction < 1.0, "val_fraction must be in (0, 1)"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.margin >= 0, "margin must be >= 0"),
            (self.patience >= 0, "patience must be >= 0"),
            (self.save_every >= 1, "save_every must be >= 1"),
            (not (self.head_only and self.full_finetune), "head_only and full_finetune exclude each other"),
            (not (self.head_only and self.layers_to_transform), "head_only trains no layers: drop layers_to_transform"),
        ]
        for ok, msg in checks:
            if not ok:
                raise TrainError(msg)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(kw_only=True)
class TrainResult:
    package_dir: Path
    version: str
    metrics: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from_step: int = 0
    # False in the other processes of a data-parallel run: only the main one reports and publishes
    main: bool = True


# --------------------------------------------------------------------------------------------- maths
def bradley_terry_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, p: torch.Tensor, margin: torch.Tensor | float = 0.0
) -> torch.Tensor:
    """Mean soft Bradley-Terry loss: -p log s(d - m) - (1 - p) log s(-d - m), d = chosen - rejected.

    p = 1 (a hard label) gives the usual reward-model loss -log s(d - m); p = 0.5 pulls d towards 0.
    """
    d = chosen - rejected  # (B,)
    return -(p * F.logsigmoid(d - margin) + (1.0 - p) * F.logsigmoid(-d - margin)).mean()


def pair_accuracy(chosen: torch.Tensor, rejected: torch.Tensor, p: torch.Tensor) -> float:
    """Agreement with the label's side (p >= 0.5: chosen); a tie counts half."""
    d = chosen - rejected
    d = torch.where(p >= 0.5, d, -d)
    return float(((d > 0).float() + 0.5 * (d == 0).float()).mean())


def default_layers(num_layers: int) -> list[int]:
    """The upper half of the layers: the lower half stays the base's, shared by every principle."""
    return list(range(num_layers // 2, num_layers))


# ----------------------------------------------------------------------------------------- the model
def _num_layers(model: torch.nn.Module) -> int:
    n = getattr(model.config, "num_hidden_layers", None)
    if not isinstance(n, int) or n < 1:
        raise TrainError(f"cannot tell how many layers {type(model).__name__} has (config.num_hidden_layers)")
    return n


def build_model(base: BaseModel, config: TrainConfig) -> torch.nn.Module:
    """The trainable model: the base with a LoRA adapter named "default" (or all weights, full fine-tuning)."""
    model = base.model
    if config.full_finetune:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if config.head_only:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in score_head(model).parameters():
            p.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    n = _num_layers(model)
    layers = config.layers_to_transform if config.layers_to_transform is not None else default_layers(n)
    bad = [i for i in layers if not 0 <= i < n]
    if bad or not layers:
        raise TrainError(f"layers_to_transform {layers} must be a non-empty subset of 0..{n - 1}")
    lora = LoraConfig(
        task_type="SEQ_CLS",
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        layers_to_transform=sorted(layers),
    )
    torch.manual_seed(config.seed)
    with warnings.catch_warnings():
        # PEFT 0.21 calls a transformers method that transformers 5 deprecated; nothing for us to change
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, lora)  # adapter "default": see package.save_package


def _template(base: BaseModel, config: TrainConfig) -> InputTemplate:
    t = base.default_template
    length = min(config.max_length, t.max_length)
    if t.kind == "text" and config.template_text is not None:
        return InputTemplate(kind="text", text=config.template_text, max_length=length)
    return InputTemplate(kind=t.kind, text=t.text, max_length=length)


@dataclass(frozen=True, slots=True)
class _Encoded:
    chosen: Encoded
    rejected: Encoded
    p: float
    margin: float


def _forward_pairs(
    model: torch.nn.Module, batch: Sequence[_Encoded], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [b.chosen for b in batch] + [b.rejected for b in batch]
    logits = model(**collate(rows, pad_id, device)).logits[:, 0].float()  # (2B,)
    return logits[: len(batch)], logits[len(batch) :]


@torch.no_grad()
def _evaluate(
    model: torch.nn.Module,
    data: Sequence[_Encoded],
    pad_id: int,
    device: torch.device,
    batch_size: int,
    dist: Distributed | None = None,
) -> tuple[float, float, torch.Tensor]:
    """(loss, accuracy, raw scores of every chosen and rejected response) on `data`, in eval mode.

    With several processes each scores every N-th pair (by length) and the scores are gathered: every rank
    returns the same figures."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(data)), key=lambda i: len(data[i].chosen) + len(data[i].rejected))
    if dist is not None:
        order = order[dist.rank :: dist.world_size]
    ch = torch.empty(len(data))
    rj = torch.empty(len(data))
    for s in range(0, len(order), batch_size * 2):
        idx = order[s : s + batch_size * 2]
        c, r = _forward_pairs(model, [data[i] for i in idx], pad_id, device)
        ch[idx], rj[idx] = c.cpu(), r.cpu()
    if dist is not None and dist.enabled:
        for idx, c, r in dist.gather_objects((order, ch[order].tolist(), rj[order].tolist())):
            ch[idx], rj[idx] = torch.tensor(c), torch.tensor(r)
    model.train(was_training)
    p = torch.tensor([d.p for d in data])
    m = torch.tensor([d.margin for d in data])
    loss = float(bradley_terry_loss(ch, rj, p, m))
    return loss, pair_accuracy(ch, rj, p), torch.cat([ch, rj])


# -------------------------------------------------------------------------------------- checkpoints
def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable(model: torch.nn.Module, saved: dict[str, torch.Tensor], source: Path) -> None:
    params = _trainable(model)
    if set(saved) != set(params):
        raise TrainError(f"{source} does not match the model being trained (different settings?)")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(saved[n].to(p.device))


def _fingerprint(config: TrainConfig, train: Sequence[Pair], val: Sequence[Pair], principle: str) -> str:
    h = hashlib.sha256()
    settings = {k: v for k, v in config.to_dict().items() if k not in ("device", "save_every")}
    h.update(json.dumps({"principle": principle, "config": settings}, sort_keys=True).encode())
    for part in (train, val):
        h.update(b"\x01")
        for p in part:
            h.update(json.dumps([p.prompt, p.chosen, p.rejected, p.p, p.margin]).encode())
    return h.hexdigest()[:24]


class _RunDir:
    """The run directory::

        state.json          the run: fingerprint, version, position (step, epoch, batch_in_epoch), validation
                            history, finished, package; written at the start, at every checkpoint and at the end
        checkpoint/         the last checkpoint (`morlaif.checkpoint.Checkpoint`): weights.safetensors (trainable
                            tensors) + state.pt (optimizer, scheduler, RNG) + meta.json (state.json as it was)
        best.safetensors    the trainable tensors of the best epoch so far

    Run directories written before the shared checkpoint (weights.safetensors and optim.pt beside state.json)
    still resume; their first new checkpoint replaces those two files."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.state_file = path / "state.json"
        self.ckpt = Checkpoint(path / "checkpoint")
        self.best = path / "best.safetensors"
        # the layout before the shared checkpoint, read only
        self.legacy_weights = path / "weights.safetensors"
        self.legacy_optim = path / "optim.pt"

    def read_state(self) -> dict[str, Any] | None:
        """The run's state as of its last checkpoint; None when the directory holds no run."""
        if not self.state_file.is_file():
            return None
        try:
            state = json.loads(self.state_file.read_text())
            if not state.get("finished") and self.ckpt.exists():
                # the checkpoint's own copy: state.json may lag it by a crash between the two writes
                state = self.ckpt.read_meta() or state
        except (json.JSONDecodeError, CheckpointError) as e:
            raise TrainError(f"{self.state_file} is corrupt ({e}); delete the run directory or pass --fresh") from e
        return state

    def write_state(self, state: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_name(".state.json.tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state_file)

    def begin(self, state: dict[str, Any]) -> None:
        """Start a run at step 0: the checkpoint of an earlier one (--fresh) goes, then state.json is written."""
        self.ckpt.remove()
        for f in (self.legacy_weights, self.legacy_optim):
            f.unlink(missing_ok=True)
        self.write_state(state)

    def save(self, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any, state: dict[str, Any]) -> None:
        # state.pt is read back with weights_only=True: tensors and plain containers, never code
        blob = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": rng_state()}
        self.ckpt.write(_trainable(model), blob, meta=state)
        self.write_state(state)
        for f in (self.legacy_weights, self.legacy_optim):  # a run begun before the shared checkpoint
            f.unlink(missing_ok=True)

    def restore(self, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any) -> None:
        if self.ckpt.exists():
            weights, source = self.ckpt.read_weights(), self.ckpt.path
            blob = self.ckpt.read_state(map_location="cpu")
        else:  # the layout before the shared checkpoint
            weights, source = load_tensors(self.legacy_weights), self.legacy_weights
            blob = torch.load(self.legacy_optim, map_location="cpu", weights_only=True)
        _load_trainable(model, weights, source)
        opt.load_state_dict(blob["optimizer"])
        sched.load_state_dict(blob["scheduler"])
        set_rng_state(blob["rng"])

    def save_best(self, model: torch.nn.Module) -> None:
        save_tensors(_trainable(model), self.best)

    def load_best(self, model: torch.nn.Module) -> None:
        _load_trainable(model, load_tensors(self.best), self.best)


# ------------------------------------------------------------------------------------------ training
def train_pm(
    pairs: Sequence[Pair],
    *,
    principle: str,
    config: TrainConfig,
    out_root: Path,
    run_dir: Path,
    version: str | None = None,
    data_sources: Sequence[dict[str, Any]] = (),
    base: BaseModel | None = None,
    fresh: bool = False,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train a PM for `principle` on `pairs` and write its package to `out_root/principle/version`.

    `base` may be passed in (tests, benchmarks); it is trained in place, so do not reuse it afterwards.
    `on_step(step, loss)` is called after every optimizer step (on the main process).
    """
    try:
        dist = Distributed.from_env(config.device)
    except ValueError as e:
        raise TrainError(f"device: {e}") from None
    if not pairs:
        raise TrainError(f"no training pairs for principle {principle!r}")
    train, val = split_by_prompt(pairs, config.val_fraction, salt=f"val{config.seed}")
    if not train or not val:
        raise TrainError(
            f"{len(pairs)} pairs over {len({p.prompt for p in pairs})} prompts are too few to split "
            f"{config.val_fraction:.0%} of the prompts off for validation"
        )
    rd = _RunDir(run_dir)
    fp = _fingerprint(config, train, val, principle)
    state = None if fresh else rd.read_state()
    if state is not None and state.get("fingerprint") != fp:
        raise TrainError(
            f"{run_dir} holds a run with other data or settings; pass --fresh to start over, or --run-dir to keep both"
        )
    if state is not None and state.get("finished"):
        raise TrainError(f"{run_dir} holds a finished run (package {state['package']}); pass --fresh to train again")
    if state is None:
        state = {
            "fingerprint": fp,
            "principle": principle,
            "version": version or dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S"),
            "step": 0,
            "epoch": 0,
            "batch_in_epoch": 0,
            "best_val_loss": None,
            "best_epoch": None,
            "bad_epochs": 0,
            "history": [],
            "finished": False,
            "seconds": 0.0,
        }
    elif version is not None and version != state["version"]:
        raise TrainError(f"{run_dir} is a run for version {state['version']}, not {version}")
    pkg_dir = out_root / principle / state["version"]
    if pkg_dir.exists():
        raise TrainError(f"package {pkg_dir} already exists; give another --version")

    torch.manual_seed(config.seed)
    if base is None:
        device_name = str(dist.device) if dist.enabled else config.device
        with dist.local_main_first():  # one rank per node fills the model cache, the others then read it
            base = load_base(config.base, max_length=config.max_length, seed=config.seed, device=device_name)
    template = _template(base, config)
    encoder = TemplateEncoder(base.tokenizer, template)
    pad_id = base.tokenizer.pad_token_id if base.tokenizer.pad_token_id is not None else 0
    device = base.device

    def encode(part: Sequence[Pair]) -> list[_Encoded]:
        return [
            _Encoded(encoder.encode(x.prompt, x.chosen), encoder.encode(x.prompt, x.rejected), x.p, x.margin)
            for x in part
        ]

    enc_train, enc_val = encode(train), encode(val)
    model = build_model(base, config)
    model.train()
    steps_per_epoch = math.ceil(len(enc_train) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.learning_rate, weight_decay=config.weight_decay
    )
    from transformers import get_linear_schedule_with_warmup

    sched = get_linear_schedule_with_warmup(opt, int(config.warmup_ratio * total_steps), total_steps)
    resumed_from = int(state["step"])
    if resumed_from > 0:
        rd.restore(model, opt, sched)
        if dist.is_main:
            logger.warning("resuming %s at step %d (epoch %d)", run_dir, resumed_from, state["epoch"] + 1)
    dist.barrier()  # every rank has read the run directory before the main one writes to it
    if resumed_from == 0 and dist.is_main:
        rd.begin(state)
    # the model the steps run through: DDP under a launcher (DDP broadcasts rank 0's weights), the model alone
    ddp_model, opt = dist.prepare(model, opt, micro_batch_size=-(-config.batch_size // dist.world_size))
    if dist.enabled:
        torch.manual_seed(config.seed * 1000 + dist.rank + 1)  # each rank its own LoRA dropout masks
    started = time.monotonic()
    elapsed_before = float(state["seconds"])

    def checkpoint() -> None:
        state["seconds"] = elapsed_before + time.monotonic() - started
        if dist.is_main:
            rd.save(model, opt, sched, state)
        dist.barrier()

    stack = contextlib.ExitStack()
    bar = progress_bar(total_steps, resumed_from, f"train {principle}", progress and dist.is_main)
    interrupted = StopRequest()
    agreed_stop = False
    try:
        stack.enter_context(defer_stop_signals(interrupted))
        while state["epoch"] < config.epochs and not state.get("stopped_early"):
            epoch = int(state["epoch"])
            # The order of an epoch depends only on (seed, epoch): a resumed run sees the same batches.
            order = torch.randperm(len(enc_train), generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
            running = 0.0
            # 1. one optimizer step per batch of pairs: chosen and rejected in one forward
            for b in range(int(state["batch_in_epoch"]), steps_per_epoch):
                batch = [enc_train[int(i)] for i in order[b * config.batch_size : (b + 1) * config.batch_size]]
                # this rank's share; weighted so that the mean over ranks of the gradients is the global mean's
                mine = batch[dist.split(len(batch))]
                weight = len(mine) * dist.world_size / len(batch)
                if not mine:  # a last batch smaller than the ranks: a forward for DDP's sake, weighted 0
                    mine = batch[:1]
                chosen, rejected = _forward_pairs(ddp_model, mine, pad_id, device)
                p = torch.tensor([x.p for x in mine], device=device)
                m = torch.tensor([x.margin + config.margin for x in mine], device=device)
                loss = bradley_terry_loss(chosen, rejected, p, m) * weight
                opt.zero_grad(set_to_none=True)
                dist.backward(loss)
                dist.clip_grad_norm_([q for q in ddp_model.parameters() if q.requires_grad], 1.0)
                opt.step()
                sched.step()
                state["step"] += 1
                state["batch_in_epoch"] = b + 1
                lv = dist.mean([loss.detach().item()])[0]
                running = 0.9 * running + 0.1 * lv if b else lv
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{running:.3f}")
                if on_step is not None and dist.is_main:
                    on_step(int(state["step"]), lv)
                # Ctrl-C or SIGTERM lands here, between steps, and a signal to any rank stops them all
                if dist.agree_on_stop(interrupted):
                    agreed_stop = True
                    interrupted.raise_stopped()
                if state["step"] % config.save_every == 0:
                    checkpoint()
            # 2. validate, keep the best weights, stop when the validation loss stops falling
            val_loss, val_acc, _ = _evaluate(model, enc_val, pad_id, device, config.batch_size, dist)
            state["history"].append(
                {"epoch": epoch + 1, "train_loss": running, "val_loss": val_loss, "val_accuracy": val_acc}
            )
            logger.info("epoch %d: val loss %.4f, val accuracy %.3f", epoch + 1, val_loss, val_acc)
            if dist.is_main:
                bar.write(f"epoch {epoch + 1}: val loss {val_loss:.4f}, val accuracy {val_acc:.3f}")
            if state["best_val_loss"] is None or val_loss < state["best_val_loss"]:
                state["best_val_loss"], state["best_epoch"], state["bad_epochs"] = val_loss, epoch + 1, 0
                if dist.is_main:
                    rd.save_best(model)
            else:
                state["bad_epochs"] += 1
                if state["bad_epochs"] > config.patience:
                    state["stopped_early"] = True
            state["epoch"], state["batch_in_epoch"] = epoch + 1, 0
            checkpoint()
    except KeyboardInterrupt:
        if agreed_stop or not dist.enabled:  # a second signal mid-step: the ranks are not at one point
            checkpoint()
        bar.close()
        if dist.is_main:
            logger.warning("interrupted at step %d; the checkpoint is in %s", state["step"], run_dir)
        raise
    finally:
        stack.close()
    bar.close()

    # 3. the best epoch's weights, calibrated on the validation set, written as a package
    rd.load_best(model)
    val_loss, val_acc, raw = _evaluate(model, enc_val, pad_id, device, config.batch_size, dist)
    if not dist.is_main:
        dist.barrier()  # the main rank writes the package
        return TrainResult(
            package_dir=pkg_dir, version=state["version"], metrics={}, resumed_from_step=resumed_from, main=False
        )
    std = float(raw.std()) if len(raw) > 1 else 1.0
    calibration = Calibration(mean=float(raw.mean()), std=std if std > 1e-6 else 1.0)
    n_val = len(enc_val)
    metrics: dict[str, Any] = {
        "val_accuracy": round(val_acc, 4),
        "val_accuracy_ci95": [round(x, 4) for x in wilson_interval(val_acc * n_val, n_val)],
        "val_loss": round(val_loss, 4),
        "val_pairs": n_val,
        "train_pairs": len(enc_train),
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "stopped_early": bool(state.get("stopped_early")),
        "history": state["history"],
        "train_seconds": round(elapsed_before + time.monotonic() - started, 1),
    }
    try:
        phrase = get_principle(principle).judge_phrase
    except KeyError:
        phrase = ""
    import peft
    import transformers

    manifest = PackageManifest(
        name=principle,
        judge_phrase=phrase,
        base_model=base.model_id,
        base_config_hash=base.config_hash,
        kind="head" if config.head_only else "lora",
        template=template,
        calibration=calibration,
        metrics=metrics,
        provenance={
            "data": list(data_sources),
            "train": summarize(train),
            "validation": summarize(val),
            "split": {"by": "prompt", "val_fraction": config.val_fraction, "salt": f"val{config.seed}"},
            "git_commit": git_commit(),
            "settings": config.to_dict(),
            "versions": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "peft": peft.__version__,
            },
            "trainer": "morlaif pm train",
            "version": state["version"],
        },
    )
    if config.full_finetune:
        pkg_dir = _save_full(model, base, pkg_dir, manifest)
    elif config.head_only:
        save_head_package(score_head(model), pkg_dir, manifest)
    else:
        save_package(model, "default", pkg_dir, manifest)
    state["finished"], state["package"] = True, str(pkg_dir)
    rd.write_state(state)
    dist.barrier()
    logger.info("wrote %s (val accuracy %.3f on %d pairs)", pkg_dir, val_acc, n_val)
    return TrainResult(
        package_dir=pkg_dir,
        version=state["version"],
        metrics=metrics,
        history=list(state["history"]),
        resumed_from_step=resumed_from,
    )


def _save_full(model: torch.nn.Module, base: BaseModel, pkg_dir: Path, manifest: PackageManifest) -> Path:
    """A fully fine-tuned PM: a model folder (safetensors + tokenizer + principle.json), servable as a base."""
    from pm_server.model.package import write_manifest

    pkg_dir.mkdir(parents=True)
    model.save_pretrained(pkg_dir, safe_serialization=True)  # type: ignore[operator]
    base.tokenizer.save_pretrained(pkg_dir)
    write_manifest(pkg_dir, manifest)
    return pkg_dir
