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
from pm_server.model.base import BaseModel, cpu_computes_bf16, load_base, resolve_dtype, score_head
from pm_server.model.engine import collate
from pm_server.model.grouped import layer_stack
from pm_server.model.package import PackageManifest, save_head_package, save_package
from pm_server.model.template import Encoded, InputTemplate, TemplateEncoder
from pm_server.training.pairs import Pair, split_by_prompt, summarize

__all__ = [
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "bradley_terry_loss",
    "calibrate",
    "length_balance_weights",
    "length_correlation",
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
    target_modules: list[str] | str | None = None
    """Modules of those layers that get LoRA: None, PEFT's default for the architecture (BERT's query and value,
    Llama's q_proj and v_proj); "all-linear", every linear layer of the blocks (attention and MLP; not the score
    head); or a list of module names, e.g. ["query", "key", "value"]."""
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
    length_balance: bool = True
    """Weight each pair so that, within each data source, pairs whose chosen response is the longer one weigh as
    much in the loss as pairs whose chosen response is the shorter one: "longer wins" then earns nothing."""
    length_penalty: float = 0.0
    """Coefficient of a length-decorrelation term added to the loss: the squared Pearson correlation, over the
    batch's chosen and rejected responses, of score and response length in tokens (after ODIN's decorrelation of
    the reward from length; Chen et al., 2024, arXiv:2402.07319). 0 turns it off."""
    bf16: bool | None = False
    """bfloat16 autocast for training forwards (weights, optimizer state and the loss stay float32). None: where
    the device computes bfloat16 (a CUDA device that supports it, a CPU with AVX512-BF16 or AMX), as the server's
    `dtype=auto`. How a run computes, like its device, not what it learns: a run resumes in another precision."""
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
            (self.length_penalty >= 0, "length_penalty must be >= 0"),
            (self.patience >= 0, "patience must be >= 0"),
            (self.save_every >= 1, "save_every must be >= 1"),
            (not (self.head_only and self.full_finetune), "head_only and full_finetune exclude each other"),
            (not (self.head_only and self.layers_to_transform), "head_only trains no layers: drop layers_to_transform"),
            (not ((self.head_only or self.full_finetune) and self.target_modules), "target_modules is for LoRA"),
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
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    p: torch.Tensor,
    margin: torch.Tensor | float = 0.0,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean soft Bradley-Terry loss: -p log s(d - m) - (1 - p) log s(-d - m), d = chosen - rejected.

    p = 1 (a hard label) gives the usual reward-model loss -log s(d - m); p = 0.5 pulls d towards 0. With
    `weight` (B,), the mean of each pair's loss times its weight.
    """
    d = chosen - rejected  # (B,)
    losses = -(p * F.logsigmoid(d - margin) + (1.0 - p) * F.logsigmoid(-d - margin))
    return (losses * weight).mean() if weight is not None else losses.mean()


def length_correlation(scores: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of `scores` (N,) with `lengths` (N,); 0 when either is constant. Differentiable in
    `scores`: its square is the length-decorrelation term of `TrainConfig.length_penalty`."""
    s = scores - scores.mean()
    n = lengths.to(scores.dtype) - lengths.to(scores.dtype).mean()
    denom = s.norm() * n.norm()
    if float(denom.detach()) <= 1e-12:
        return scores.new_zeros(())
    return (s * n).sum() / denom


def length_balance_weights(
    chosen_lengths: Sequence[int], rejected_lengths: Sequence[int], groups: Sequence[str]
) -> list[float]:
    """Per-pair loss weights under which, within each group (data source), the pairs whose chosen response is
    longer and those whose chosen response is shorter carry equal total weight; pairs of equal length, and every
    pair of a group that has only one kind, weigh 1. Scaled to mean 1 over all pairs."""
    kinds = [(c > r) - (c < r) for c, r in zip(chosen_lengths, rejected_lengths, strict=True)]
    count: dict[tuple[str, int], int] = {}
    for g, k in zip(groups, kinds, strict=True):
        count[(g, k)] = count.get((g, k), 0) + 1
    weights = []
    for g, k in zip(groups, kinds, strict=True):
        longer, shorter = count.get((g, 1), 0), count.get((g, -1), 0)
        if k == 0 or not longer or not shorter:
            weights.append(1.0)
        else:
            weights.append((longer + shorter) / (2 * (longer if k > 0 else shorter)))
    mean = sum(weights) / len(weights) if weights else 1.0
    return [w / mean for w in weights]


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


def lora_targets(model: torch.nn.Module, target: list[str] | str | None) -> list[str] | str | None:
    """`target` with "all-linear" spelt out as the names of the linear layers in the transformer blocks (PEFT
    takes the string itself only without layers_to_transform)."""
    if target != "all-linear":
        return target
    _, blocks = layer_stack(model)
    names = {n.rsplit(".", 1)[-1] for b in blocks for n, m in b.named_modules() if isinstance(m, torch.nn.Linear)}
    if not names:
        raise TrainError(f"all-linear: found no linear layers in the blocks of {type(model).__name__}")
    return sorted(names)


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
        target_modules=lora_targets(model, config.target_modules),
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
    weight: float = 1.0  # the pair's loss weight (length balancing)


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
    settings = {k: v for k, v in config.to_dict().items() if k not in ("device", "save_every", "bf16")}
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
        self._drop_legacy()
        self.write_state(state)

    def save(self, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any, state: dict[str, Any]) -> None:
        # state.pt is read back with weights_only=True: tensors and plain containers, never code
        blob = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": rng_state()}
        self.ckpt.write(_trainable(model), blob, meta=state)
        self.write_state(state)
        self._drop_legacy()

    def _drop_legacy(self) -> None:
        """Remove the checkpoint files of the layout before the shared checkpoint (a run begun before it)."""
        for f in (self.legacy_weights, self.legacy_optim):
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
    # 1. the processes, the split by prompt and the run's state: a new run, or the run directory's to resume
    dist = _distributed(config)
    if config.bf16 is None:
        config = dataclasses.replace(config, bf16=resolve_dtype("auto", dist.device) == torch.bfloat16)
    train, val = _split(pairs, principle, config)
    rd = _RunDir(run_dir)
    state = _open_run(rd, config, train, val, principle=principle, version=version, fresh=fresh)
    began_bf16 = state.get("bf16")  # None: a new run, or one begun before runs recorded their precision
    if began_bf16 is not None and began_bf16 != config.bf16 and dist.is_main:
        name = {True: "bfloat16 autocast", False: "float32"}
        logger.warning("%s began in %s and resumes in %s", run_dir, name[began_bf16], name[bool(config.bf16)])
    state["bf16"] = config.bf16
    pkg_dir = out_root / principle / state["version"]
    if pkg_dir.exists():
        raise TrainError(f"package {pkg_dir} already exists; give another --version")
    # 2. the base, the encoded pairs, the model for the mode (LoRA, full, head only), its optimizer and schedule
    torch.manual_seed(config.seed)
    if base is None:
        base = _load_base(config, dist)
    if config.bf16 and base.device.type == "cpu" and not cpu_computes_bf16() and dist.is_main:
        logger.warning(
            "bf16 autocast on a CPU without bfloat16 instructions (AVX512-BF16 or AMX) is emulated: training is "
            "about 10x slower than in float32 here; drop --bf16"
        )
    inputs = _encode_pairs(base, config, train, val)
    model, opt, sched = _build_training(base, config, _steps_per_epoch(len(inputs.train), config) * config.epochs)
    # 3. resume from the run directory's checkpoint, or begin the run there
    resumed_from = _resume_or_begin(rd, state, model, opt, sched, dist)
    # 4. the epochs: steps, validation, early stopping, checkpoints and stop signals
    loop = _Loop(config, dist, rd, state, model, opt, sched, inputs, on_step)
    loop.run(f"train {principle}", progress, resumed_from)
    # 5. the best epoch's weights, calibrated on the validation set, written as a package by the main rank
    rd.load_best(model)
    val_loss, val_acc, raw = loop.evaluate()
    if not dist.is_main:
        dist.barrier()  # the main rank writes the package
        return TrainResult(
            package_dir=pkg_dir, version=state["version"], metrics={}, resumed_from_step=resumed_from, main=False
        )
    metrics = _metrics(state, val_loss, val_acc, len(inputs.val), len(inputs.train), loop.seconds())
    calibration = calibrate(raw)
    manifest = _manifest(
        principle, state["version"], base, config, inputs.template, calibration, metrics, train, val, data_sources
    )
    pkg_dir = _write_package(model, base, config, pkg_dir, manifest)
    state["finished"], state["package"] = True, str(pkg_dir)
    rd.write_state(state)
    dist.barrier()
    logger.info("wrote %s (val accuracy %.3f on %d pairs)", pkg_dir, val_acc, len(inputs.val))
    return TrainResult(
        package_dir=pkg_dir,
        version=state["version"],
        metrics=metrics,
        history=list(state["history"]),
        resumed_from_step=resumed_from,
    )


# 1. the processes, the split and the run's state
def _distributed(config: TrainConfig) -> Distributed:
    try:
        return Distributed.from_env(config.device)
    except ValueError as e:
        raise TrainError(f"device: {e}") from None


def _split(pairs: Sequence[Pair], principle: str, config: TrainConfig) -> tuple[list[Pair], list[Pair]]:
    """(train, validation): `config.val_fraction` of the prompts, with all their pairs, held out."""
    if not pairs:
        raise TrainError(f"no training pairs for principle {principle!r}")
    train, val = split_by_prompt(pairs, config.val_fraction, salt=f"val{config.seed}")
    if not train or not val:
        raise TrainError(
            f"{len(pairs)} pairs over {len({p.prompt for p in pairs})} prompts are too few to split "
            f"{config.val_fraction:.0%} of the prompts off for validation"
        )
    return train, val


def _open_run(
    rd: _RunDir,
    config: TrainConfig,
    train: Sequence[Pair],
    val: Sequence[Pair],
    *,
    principle: str,
    version: str | None,
    fresh: bool,
) -> dict[str, Any]:
    """The run's state: the run directory's when it holds this run (same data and settings) unfinished, else a
    new one at step 0 (`fresh` ignores the directory's)."""
    run_dir = rd.path
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
    return state


# 2. the inputs, the model, its optimizer and schedule
def _load_base(config: TrainConfig, dist: Distributed) -> BaseModel:
    device_name = str(dist.device) if dist.enabled else config.device
    with dist.local_main_first():  # one rank per node fills the model cache, the others then read it
        return load_base(config.base, max_length=config.max_length, seed=config.seed, device=device_name)


@dataclass(frozen=True, slots=True)
class _Inputs:
    """The pairs as the model reads them, and how they are batched onto it."""

    template: InputTemplate
    train: list[_Encoded]
    val: list[_Encoded]
    pad_id: int
    device: torch.device


def _encode_pairs(base: BaseModel, config: TrainConfig, train: Sequence[Pair], val: Sequence[Pair]) -> _Inputs:
    template = _template(base, config)
    encoder = TemplateEncoder(base.tokenizer, template)
    pad_id = base.tokenizer.pad_token_id if base.tokenizer.pad_token_id is not None else 0
    device = base.device

    def encode(part: Sequence[Pair]) -> list[_Encoded]:
        return [
            _Encoded(encoder.encode(x.prompt, x.chosen), encoder.encode(x.prompt, x.rejected), x.p, x.margin)
            for x in part
        ]

    train_enc = encode(train)
    if config.length_balance:
        w = length_balance_weights(
            [e.chosen.response_tokens for e in train_enc],
            [e.rejected.response_tokens for e in train_enc],
            [x.source for x in train],
        )
        train_enc = [dataclasses.replace(e, weight=wi) for e, wi in zip(train_enc, w, strict=True)]
    return _Inputs(template=template, train=train_enc, val=encode(val), pad_id=pad_id, device=device)


def _steps_per_epoch(n_train: int, config: TrainConfig) -> int:
    return math.ceil(n_train / config.batch_size)


def _build_training(
    base: BaseModel, config: TrainConfig, total_steps: int
) -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
    """(model in train mode, AdamW over its trainable weights, linear warm-up then decay over `total_steps`)."""
    model = build_model(base, config)
    model.train()
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.learning_rate, weight_decay=config.weight_decay
    )
    from transformers import get_linear_schedule_with_warmup

    sched = get_linear_schedule_with_warmup(opt, int(config.warmup_ratio * total_steps), total_steps)
    return model, opt, sched


# 3. resume
def _resume_or_begin(
    rd: _RunDir,
    state: dict[str, Any],
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    dist: Distributed,
) -> int:
    """The step the run resumes from (0: a new run, begun in the run directory). Every rank calls it."""
    resumed_from = int(state["step"])
    if resumed_from > 0:
        rd.restore(model, opt, sched)
        if dist.is_main:
            logger.warning("resuming %s at step %d (epoch %d)", rd.path, resumed_from, state["epoch"] + 1)
    dist.barrier()  # every rank has read the run directory before the main one writes to it
    if resumed_from == 0 and dist.is_main:
        rd.begin(state)
    return resumed_from


# 4. the epochs
class _Loop:
    """The epochs of one run, from the position in `state` on: every rank runs them in step, and the collectives
    (gradient all-reduce, loss mean, agreed stop, validation gather, checkpoint barrier) happen on all of them."""

    def __init__(
        self,
        config: TrainConfig,
        dist: Distributed,
        rd: _RunDir,
        state: dict[str, Any],
        model: torch.nn.Module,
        opt: torch.optim.Optimizer,
        sched: Any,
        inputs: _Inputs,
        on_step: Callable[[int, float], None] | None,
    ) -> None:
        self.config, self.dist, self.rd, self.state = config, dist, rd, state
        self.model, self.sched, self.inputs, self.on_step = model, sched, inputs, on_step
        self.steps_per_epoch = _steps_per_epoch(len(inputs.train), config)
        # the model the steps run through: DDP under a launcher (DDP broadcasts rank 0's weights), the model alone
        self.ddp_model, self.opt = dist.prepare(model, opt, micro_batch_size=-(-config.batch_size // dist.world_size))
        if dist.enabled:
            torch.manual_seed(config.seed * 1000 + dist.rank + 1)  # each rank its own LoRA dropout masks
        self.started = time.monotonic()
        self.elapsed_before = float(state["seconds"])
        self.interrupted = StopRequest()
        self.agreed_stop = False

    def seconds(self) -> float:
        """Training time of the run so far, sessions before a resume included."""
        return self.elapsed_before + time.monotonic() - self.started

    def checkpoint(self) -> None:
        self.state["seconds"] = self.seconds()
        if self.dist.is_main:
            self.rd.save(self.model, self.opt, self.sched, self.state)
        self.dist.barrier()

    def evaluate(self) -> tuple[float, float, torch.Tensor]:
        i = self.inputs
        return _evaluate(self.model, i.val, i.pad_id, i.device, self.config.batch_size, self.dist)

    def run(self, desc: str, progress: bool, resumed_from: int) -> None:
        """Every epoch left, or until early stopping. KeyboardInterrupt (Ctrl-C, SIGTERM) after a checkpoint."""
        config, dist, state = self.config, self.dist, self.state
        stack = contextlib.ExitStack()
        bar = progress_bar(self.steps_per_epoch * config.epochs, resumed_from, desc, progress and dist.is_main)
        try:
            stack.enter_context(defer_stop_signals(self.interrupted))
            while state["epoch"] < config.epochs and not state.get("stopped_early"):
                epoch = int(state["epoch"])
                running = self._steps(epoch, bar)
                self._validate(epoch, running, bar)
                state["epoch"], state["batch_in_epoch"] = epoch + 1, 0
                self.checkpoint()
        except KeyboardInterrupt:
            if self.agreed_stop or not dist.enabled:  # a second signal mid-step: the ranks are not at one point
                self.checkpoint()
            bar.close()
            if dist.is_main:
                logger.warning("interrupted at step %d; the checkpoint is in %s", state["step"], self.rd.path)
            raise
        finally:
            stack.close()
        bar.close()

    def _steps(self, epoch: int, bar: Any) -> float:
        """The rest of `epoch`: one optimizer step per batch of pairs. Returns the running training loss."""
        config, dist, state = self.config, self.dist, self.state
        # The order of an epoch depends only on (seed, epoch): a resumed run sees the same batches.
        order = torch.randperm(
            len(self.inputs.train), generator=torch.Generator().manual_seed(config.seed * 1000 + epoch)
        )
        running = 0.0
        for b in range(int(state["batch_in_epoch"]), self.steps_per_epoch):
            batch = [self.inputs.train[int(i)] for i in order[b * config.batch_size : (b + 1) * config.batch_size]]
            loss = self._step(batch)
            state["step"] += 1
            state["batch_in_epoch"] = b + 1
            lv = dist.mean([loss.detach().item()])[0]
            running = 0.9 * running + 0.1 * lv if b else lv
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{running:.3f}")
            if self.on_step is not None and dist.is_main:
                self.on_step(int(state["step"]), lv)
            # Ctrl-C or SIGTERM lands here, between steps, and a signal to any rank stops them all
            if dist.agree_on_stop(self.interrupted):
                self.agreed_stop = True
                self.interrupted.raise_stopped()
            if state["step"] % config.save_every == 0:
                self.checkpoint()
        return running

    def _step(self, batch: list[_Encoded]) -> torch.Tensor:
        """One optimizer step on `batch`, chosen and rejected in one forward. Returns this rank's weighted loss."""
        dist, device = self.dist, self.inputs.device
        # this rank's share; weighted so that the mean over ranks of the gradients is the global mean's
        mine = batch[dist.split(len(batch))]
        weight = len(mine) * dist.world_size / len(batch)
        if not mine:  # a last batch smaller than the ranks: a forward for DDP's sake, weighted 0
            mine = batch[:1]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(self.config.bf16)):
            chosen, rejected = _forward_pairs(self.ddp_model, mine, self.inputs.pad_id, device)
        p = torch.tensor([x.p for x in mine], device=device)
        m = torch.tensor([x.margin + self.config.margin for x in mine], device=device)
        w = torch.tensor([x.weight for x in mine], device=device)
        loss = bradley_terry_loss(chosen, rejected, p, m, w)
        if self.config.length_penalty > 0:
            lengths = torch.tensor(
                [x.chosen.response_tokens for x in mine] + [x.rejected.response_tokens for x in mine], device=device
            )
            loss = loss + self.config.length_penalty * length_correlation(torch.cat([chosen, rejected]), lengths) ** 2
        loss = loss * weight
        self.opt.zero_grad(set_to_none=True)
        dist.backward(loss)
        dist.clip_grad_norm_([q for q in self.ddp_model.parameters() if q.requires_grad], 1.0)
        self.opt.step()
        self.sched.step()
        return loss

    def _validate(self, epoch: int, running: float, bar: Any) -> None:
        """Validate after `epoch`, keep the best weights, stop when the validation loss stops falling."""
        dist, state = self.dist, self.state
        val_loss, val_acc, _ = self.evaluate()
        state["history"].append(
            {"epoch": epoch + 1, "train_loss": running, "val_loss": val_loss, "val_accuracy": val_acc}
        )
        logger.info("epoch %d: val loss %.4f, val accuracy %.3f", epoch + 1, val_loss, val_acc)
        if dist.is_main:
            bar.write(f"epoch {epoch + 1}: val loss {val_loss:.4f}, val accuracy {val_acc:.3f}")
        if state["best_val_loss"] is None or val_loss < state["best_val_loss"]:
            state["best_val_loss"], state["best_epoch"], state["bad_epochs"] = val_loss, epoch + 1, 0
            if dist.is_main:
                self.rd.save_best(self.model)
        else:
            state["bad_epochs"] += 1
            if state["bad_epochs"] > self.config.patience:
                state["stopped_early"] = True


# 5. calibration, metrics and the package
def calibrate(raw: torch.Tensor) -> Calibration:
    """Mean and standard deviation of the raw validation scores (std 1 when there is no spread)."""
    std = float(raw.std()) if len(raw) > 1 else 1.0
    return Calibration(mean=float(raw.mean()), std=std if std > 1e-6 else 1.0)


def _metrics(
    state: dict[str, Any], val_loss: float, val_acc: float, n_val: int, n_train: int, seconds: float
) -> dict[str, Any]:
    return {
        "val_accuracy": round(val_acc, 4),
        "val_accuracy_ci95": [round(x, 4) for x in wilson_interval(val_acc * n_val, n_val)],
        "val_loss": round(val_loss, 4),
        "val_pairs": n_val,
        "train_pairs": n_train,
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "stopped_early": bool(state.get("stopped_early")),
        "history": state["history"],
        "train_seconds": round(seconds, 1),
    }


def _manifest(
    principle: str,
    version: str,
    base: BaseModel,
    config: TrainConfig,
    template: InputTemplate,
    calibration: Calibration,
    metrics: dict[str, Any],
    train: Sequence[Pair],
    val: Sequence[Pair],
    data_sources: Sequence[dict[str, Any]],
) -> PackageManifest:
    try:
        phrase = get_principle(principle).judge_phrase
    except KeyError:
        phrase = ""
    import peft
    import transformers

    return PackageManifest(
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
            "version": version,
        },
    )


def _write_package(
    model: torch.nn.Module, base: BaseModel, config: TrainConfig, pkg_dir: Path, manifest: PackageManifest
) -> Path:
    """Write the package for the mode: a full model folder, a head package or a LoRA adapter package."""
    if config.full_finetune:
        return _save_full(model, base, pkg_dir, manifest)
    if config.head_only:
        save_head_package(score_head(model), pkg_dir, manifest)
    else:
        save_package(model, "default", pkg_dir, manifest)
    return pkg_dir


def _save_full(model: torch.nn.Module, base: BaseModel, pkg_dir: Path, manifest: PackageManifest) -> Path:
    """A fully fine-tuned PM: a model folder (safetensors + tokenizer + principle.json), servable as a base."""
    from pm_server.model.package import write_manifest

    pkg_dir.mkdir(parents=True)
    model.save_pretrained(pkg_dir, safe_serialization=True)  # type: ignore[operator]
    base.tokenizer.save_pretrained(pkg_dir)
    write_manifest(pkg_dir, manifest)
    return pkg_dir
