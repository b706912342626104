"""The one checkpoint mechanism of the trainers (`morlaif pm train`, `morlaif ppo train`).

A checkpoint is a folder replaced as a whole::

    <name>/
        weights.safetensors   the trainable tensors (full tensors, CPU, contiguous)
        state.pt              a torch blob of tensors and plain containers: optimizer, scheduler, RNG, ...
                              (read back with ``weights_only=True``: loading it never runs code)
        meta.json             optional JSON: what a person or another program reads without torch

`Checkpoint.write` fills ``<name>.tmp`` and then swaps it in (``<name>`` -> ``<name>.old``, ``<name>.tmp`` ->
``<name>``, ``<name>.old`` removed): a crash at any point leaves one complete checkpoint, the new one or the
previous one, never half of one. A crash between the two renames leaves only ``<name>.old``; it is read as
the checkpoint until the next write replaces it.

`rng_state` / `set_rng_state` capture and restore the random generators a training step consumes, so a
resumed run draws the same numbers as one that never stopped; `save_tensors` writes one safetensors file
atomically (a best-so-far copy of the weights kept beside a checkpoint).

Nothing here knows about processes: with several ranks the caller writes from the main rank only.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from morlaif.errors import MorlaifError

if TYPE_CHECKING:  # torch is imported where a checkpoint is read or written: a run folder's reader needs none
    import torch

__all__ = [
    "META",
    "STATE",
    "WEIGHTS",
    "Checkpoint",
    "CheckpointError",
    "load_tensors",
    "rng_state",
    "save_tensors",
    "set_rng_state",
]

WEIGHTS = "weights.safetensors"
STATE = "state.pt"
META = "meta.json"


class CheckpointError(MorlaifError):
    """A checkpoint that cannot be read: a file is missing or not what it should be."""


class Checkpoint:
    """The checkpoint folder at `path` (see the module's docstring for its layout and guarantees)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f"{self.path.name}.tmp")
        self.old = self.path.with_name(f"{self.path.name}.old")

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r})"

    # ------------------------------------------------------------------------------------------ write
    def write(
        self, weights: Mapping[str, torch.Tensor], state: Mapping[str, Any], meta: Mapping[str, Any] | None = None
    ) -> None:
        """Write `weights` (name -> tensor; moved to CPU and made contiguous), `state` (torch.save) and `meta`
        (JSON, left out when None) as the new checkpoint, replacing the previous one atomically.

        Raises OSError when the disk refuses; the previous checkpoint is then still in place."""
        import torch

        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        save_tensors(weights, self.tmp / WEIGHTS)
        torch.save(dict(state), self.tmp / STATE)
        if meta is not None:
            (self.tmp / META).write_text(json.dumps(meta, indent=2))
        if self.path.exists():
            shutil.rmtree(self.old, ignore_errors=True)
            os.replace(self.path, self.old)
        # else: a crash between the renames of the last write may have left the only copy in .old: keep it
        # until the new one is in place
        os.replace(self.tmp, self.path)
        shutil.rmtree(self.old, ignore_errors=True)

    # ------------------------------------------------------------------------------------------- read
    def _folder(self) -> Path:
        """The committed folder: `path`, or `path.old` when a write stopped between its two renames."""
        if not (self.path / STATE).is_file() and (self.old / STATE).is_file():
            return self.old
        return self.path

    def exists(self) -> bool:
        """Whether a complete checkpoint is on disk."""
        return (self._folder() / STATE).is_file()

    def read_weights(self) -> dict[str, torch.Tensor]:
        """The saved tensors by name, on the CPU. Raises CheckpointError when there is no checkpoint."""
        f = self._folder() / WEIGHTS
        if not f.is_file():
            raise CheckpointError(f"{f}: no such checkpoint file")
        return load_tensors(f)

    def read_state(self, map_location: str | torch.device | None = None) -> dict[str, Any]:
        """The state blob, loaded with ``weights_only=True`` (tensors on `map_location`, default: where they
        were saved). Raises CheckpointError when there is no checkpoint."""
        f = self._folder() / STATE
        if not f.is_file():
            raise CheckpointError(f"{f}: no such checkpoint file")
        import torch

        return torch.load(f, map_location=map_location, weights_only=True)

    def read_meta(self) -> dict[str, Any] | None:
        """The JSON metadata; None when the checkpoint has none (or there is no checkpoint).

        Raises CheckpointError when the file is not JSON."""
        f = self._folder() / META
        if not f.is_file():
            return None
        try:
            return json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{f} is corrupt ({e})") from e

    def remove(self) -> None:
        """Delete the checkpoint and any leftover of an interrupted write."""
        for p in (self.path, self.tmp, self.old):
            shutil.rmtree(p, ignore_errors=True)


# ------------------------------------------------------------------------------------------ one file
def save_tensors(tensors: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Write `tensors` (name -> tensor; moved to CPU, contiguous) to the safetensors file `path` atomically
    (a temporary file beside it, then renamed over it)."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({n: t.detach().cpu().contiguous() for n, t in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file `path`, on the CPU."""
    from safetensors.torch import load_file

    return load_file(str(path))


# ----------------------------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    """The states of the generators a training step consumes: ``torch`` (CPU), ``python`` (`random`) and, when
    CUDA is available, ``cuda`` (one per device). Tensors and tuples only: it fits a ``weights_only`` blob."""
    import torch

    out: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what `rng_state` captured. Also reads the older form of PM training checkpoints, whose CPU state
    is under ``cpu`` and which has no ``python``; a ``cuda`` state is skipped on a machine without CUDA."""
    import torch

    torch.set_rng_state(state["torch"] if "torch" in state else state["cpu"])
    if "python" in state:
        random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
