"""Data parallelism for `morlaif ppo train` and `morlaif pm train`, on Hugging Face accelerate.

A trainer asks `Distributed.from_env(device)` for its process group. A plain command gets the one-process
group, which wraps nothing and talks to no one, so it runs exactly as it always did. Started by
`accelerate launch --num_processes N` (or `torchrun`; anything that sets ``WORLD_SIZE`` > 1, or asks for
FSDP or DeepSpeed), the trainer gets accelerate's `Accelerator`: torch DDP by default, FSDP or DeepSpeed
ZeRO as the launch configuration says (`configs/accelerate/`), the gloo backend on CPUs and NCCL on GPUs.

Every rank reads the same configuration and the same global batch and takes its own contiguous shard of it
(`shard`); the collectives here (`gather_padded`, `gather_objects`, `max`, `mean`, `agree_on_stop`,
`barrier`) are the only points where the ranks meet, and every rank reaches each of them in the same order,
so a failure on one rank is first agreed on (gathered) and then acted on by all: nothing waits forever on a
rank that left.

Usage::

    dist = Distributed.from_env("auto")
    model, optimizer = dist.prepare(model, optimizer)
    rows = dist.shard(batch_size)            # this rank's slice of the global batch
    ...
    dist.backward(loss)                      # DDP all-reduces (averages) the gradients here
    if dist.is_main:
        save_checkpoint()
    dist.barrier()
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["Distributed", "error_once", "is_main_process", "launched", "let_main_report", "resolve_device"]

# what `accelerate launch` sets when its configuration asks for a sharded engine (one process may use one)
_SHARDED_ENV = ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED")


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def launched() -> bool:
    """True when this process is one of several (WORLD_SIZE > 1) or was asked for FSDP / DeepSpeed."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 or any(_flag(k) for k in _SHARDED_ENV)


def is_main_process() -> bool:
    """False in every process of a launched run but rank 0 (the one that reports), before or after setup."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def error_once(msg: str, *, every_process: bool = False) -> None:
    """Print `error: msg` to stderr: in a launched run only from rank 0 (every rank fails alike), unless
    `every_process`; another rank then gives rank 0 a moment to print first (`let_main_report`)."""
    if every_process or is_main_process():
        print(f"error: {msg}", file=sys.stderr, flush=True)
    else:
        let_main_report()


def let_main_report(seconds: float = 2.0) -> None:
    """In a non-main rank about to exit with an error or a stop status that every rank agreed on: wait a moment,
    so the main rank prints the reason first (torchrun SIGTERMs the other ranks as soon as one exits non-zero)."""
    if launched() and not is_main_process():
        import time

        time.sleep(seconds)


def resolve_device(device: str) -> torch.device:
    """`auto` is the first CUDA device when there is one, else the CPU; anything else is taken as given.

    Raises ValueError for a CUDA device where torch sees none."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device")
    return d


class Distributed:
    """The processes one training run spans: `world_size` ranks, rank 0 the main one.

    Attributes: `rank` (0-based), `world_size`, `is_main`, `device` (where this rank's model lives),
    `accelerator` (None in a plain one-process run).
    """

    def __init__(self, device: torch.device, accelerator: Any = None) -> None:
        self.accelerator = accelerator
        self.device = device
        self.rank = 0 if accelerator is None else int(accelerator.process_index)
        self.world_size = 1 if accelerator is None else int(accelerator.num_processes)
        self.is_main = self.rank == 0

    @classmethod
    def from_env(cls, device: str = "auto") -> Distributed:
        """The process group this process was started in (see the module's docstring).

        `device` is the run's setting (auto, cpu, cuda, cuda:N); under a launcher each rank takes the device
        the launcher gave it (cuda:LOCAL_RANK), or the CPU when `device` is cpu or no GPU is present.
        """
        want = resolve_device(device)
        if not launched():
            return cls(want)
        from accelerate import Accelerator

        # device_placement off: the trainers move their models themselves (a frozen reference, LoRA's base)
        accelerator = Accelerator(cpu=want.type == "cpu", device_placement=False)
        return cls(accelerator.device, accelerator)

    @property
    def enabled(self) -> bool:
        return self.accelerator is not None

    @property
    def sharded(self) -> bool:
        """Whether parameters are split across ranks (FSDP, DeepSpeed ZeRO-3): every rank must then run the
        same number of forward passes, also in generation (`synced_gpus`)."""
        if self.accelerator is None:
            return False
        from accelerate.utils import DistributedType

        acc = self.accelerator
        if acc.distributed_type == DistributedType.FSDP:
            return True
        plugin = getattr(acc.state, "deepspeed_plugin", None)
        return acc.distributed_type == DistributedType.DEEPSPEED and plugin is not None and plugin.zero_stage == 3

    def describe(self) -> str:
        if self.accelerator is None:
            return f"1 process on {self.device}"
        kind = str(self.accelerator.distributed_type).split(".")[-1]
        return f"{self.world_size} processes ({kind}), rank {self.rank} on {self.device}"

    # ------------------------------------------------------------------------------------------ shards
    def check_divides(self, n: int, what: str) -> None:
        """Raise ValueError unless `n` (a global batch size named `what`) splits evenly over the ranks."""
        if n % self.world_size:
            raise ValueError(f"{what} = {n} must be a multiple of the number of processes ({self.world_size})")

    def shard(self, n: int) -> slice:
        """This rank's contiguous part of `n` items: rank r of N gets [r*n/N, (r+1)*n/N) (n % N == 0)."""
        self.check_divides(n, "the batch")
        k = n // self.world_size
        return slice(self.rank * k, (self.rank + 1) * k)

    def split(self, n: int) -> slice:
        """This rank's contiguous part of `n` items when `n` need not divide: the first n % N ranks get one
        more (as `torch.tensor_split`); a rank may get none."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    @contextlib.contextmanager
    def local_main_first(self) -> Iterator[None]:
        """Run the block on each node's first rank, then on the node's others: what it writes to a local cache
        (the SmolLM2 copy made from its GGUF) is complete before they read it. Alone: just the block."""
        if self.accelerator is None:
            yield
            return
        with self.accelerator.local_main_process_first():
            yield

    # ------------------------------------------------------------------------------------------ model
    def prepare(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, micro_batch_size: int = 1
    ) -> tuple[Any, Any]:
        """(model, optimizer) wrapped for the launch configuration (DDP, FSDP, DeepSpeed); unchanged alone.

        `micro_batch_size` (rows per rank per optimizer step) fills DeepSpeed's `train_micro_batch_size_per_gpu`
        where its configuration says "auto" (there is no DataLoader for accelerate to read it from)."""
        if self.accelerator is None:
            return model, optimizer
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        if plugin is not None and plugin.deepspeed_config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
            plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = max(1, micro_batch_size)
        return self.accelerator.prepare(model, optimizer)

    def unwrap(self, model: Any) -> Any:
        return model if self.accelerator is None else self.accelerator.unwrap_model(model)

    def backward(self, loss: torch.Tensor) -> None:
        """loss.backward(); under DDP the gradients are then the mean over ranks of each rank's gradients."""
        if self.accelerator is None:
            loss.backward()
        else:
            self.accelerator.backward(loss)

    def clip_grad_norm_(self, parameters: Any, max_norm: float) -> None:
        if self.accelerator is None:
            torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        else:
            self.accelerator.clip_grad_norm_(parameters, max_norm)

    def full_state_dict(self, model: Any) -> dict[str, torch.Tensor]:
        """Every parameter of `model` in full on the main rank (gathered under FSDP / ZeRO-3)."""
        if self.accelerator is None:
            return model.state_dict()
        return self.accelerator.get_state_dict(model)

    @contextlib.contextmanager
    def generation(self, model: Any) -> Iterator[Any]:
        """The bare model to call `generate` on: unwrapped, with DeepSpeed ZeRO-3's parameters gathered for the
        duration (TRL's `unwrap_model_for_generation`, which GRPOTrainer uses the same way)."""
        if self.accelerator is None:
            yield model
            return
        from trl.models.utils import unwrap_model_for_generation

        with unwrap_model_for_generation(model, self.accelerator) as unwrapped:
            yield unwrapped

    # ------------------------------------------------------------------------------------- collectives
    def gather_padded(self, x: torch.Tensor, *, dim: int = 1, pad: float = 0, pad_first: bool = False) -> torch.Tensor:
        """Every rank's `x` concatenated along dim 0, in rank order; dimension `dim` is first padded to the
        longest rank's with `pad` (before the data when `pad_first`, as left-padded prompts)."""
        if self.accelerator is None:
            return x
        if x.dim() > dim:
            x = self.accelerator.pad_across_processes(x, dim=dim, pad_index=pad, pad_first=pad_first)
        return self.accelerator.gather(x.contiguous())

    def gather_objects(self, obj: Any) -> list[Any]:
        """[rank 0's obj, rank 1's obj, ...] on every rank (picklable objects of our own making only)."""
        if self.accelerator is None:
            return [obj]
        from accelerate.utils import gather_object

        return list(gather_object([obj]))

    def _reduce(self, values: list[float], op: str) -> list[float]:
        if self.accelerator is None:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        return [float(v) for v in self.accelerator.reduce(t, reduction=op)]

    def max(self, value: float) -> float:
        if self.accelerator is None:
            return value
        return max(float(v) for v in self.gather_objects(value))

    def mean(self, values: list[float]) -> list[float]:
        """The mean over ranks of each of `values` (every rank passes as many)."""
        if self.accelerator is None:
            return values
        return [v / self.world_size for v in self._reduce(values, "sum")]

    def agree_on_stop(self, stop: Any) -> bool:
        """Whether any rank's `StopRequest` is set; if so, it is set on every rank with the same signal (the
        highest one asked), so all stop after the same step and exit alike."""
        signum = int(self.max(float(stop.signum or 0)))
        if signum:
            stop.request(signum)
        return bool(signum)

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()
