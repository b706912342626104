"""The PPO run folder: its layout, and the metrics log that `morlaif ppo train` writes and the console reads.

A run folder holds::

    config.yaml          the configuration the run was started with (YAML)
    metrics.jsonl        one JSON object a step, with an integer "step" (1, 2, ...) and the step's figures;
                         appended and fsync'ed line by line, so a reader may see a torn last line
    checkpoint/          the last checkpoint (`morlaif.checkpoint.Checkpoint`: weights.safetensors + state.pt)
    tb/                  TensorBoard events
    policy/              the trained policy (a PEFT adapter or a full model) + tokenizer + morlaif_policy.json

The writer is `policy_trainer.train` (`RunDir`, which adds the multi-process rules); the readers are the PM
server's console (`find_runs`, `RunFolder.read_metrics`, `RunFolder.read_config`), `morlaif ppo plot` and
`morlaif eval winrate`. Nothing here knows about processes: with several ranks the caller writes from the main
rank only.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from morlaif.checkpoint import Checkpoint

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "METRICS",
    "POLICY",
    "POLICY_MANIFEST",
    "RUN_NAME",
    "TENSORBOARD",
    "MetricsLog",
    "RunFolder",
    "find_runs",
]

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint"
TENSORBOARD = "tb"
POLICY = "policy"
#: in policy/: {"base", "lora", "steps", "git_commit", "written"}
POLICY_MANIFEST = "morlaif_policy.json"
#: the names `find_runs` lists: a letter or digit, then up to 127 letters, digits, ".", "_" or "-"
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(kw_only=True)
class MetricsLog:
    """What `RunFolder.read_metrics` read."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    """The JSON objects with an integer (not boolean) "step", in file order."""
    bad: list[tuple[int, str]] = field(default_factory=list)
    """(line number in the file, what is wrong) of every other non-blank line read."""
    total_lines: int = 0
    """Lines in the file (a bad line numbered so is its last: a torn line of a write in progress)."""


class RunFolder:
    """The run folder at `root` (its layout: the module's docstring). `metrics` overrides the metrics file's
    path (the console passes the resolved path it checked)."""

    def __init__(self, root: str | Path, *, metrics: Path | None = None) -> None:
        self.root = Path(root)
        self.config_path = self.root / CONFIG
        self.metrics_path = metrics if metrics is not None else self.root / METRICS
        self.checkpoint = Checkpoint(self.root / CHECKPOINT)
        self.tensorboard_path = self.root / TENSORBOARD
        self.policy_path = self.root / POLICY

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"

    # ----------------------------------------------------------------------------------------- config
    def read_config(self) -> Any:
        """config.yaml parsed (whatever YAML it holds), or None when there is none.

        Raises OSError when it cannot be read and yaml.YAMLError when it is not YAML."""
        if not self.config_path.is_file():
            return None
        return yaml.safe_load(self.config_path.read_text())

    def write_config(self, config: dict[str, Any]) -> None:
        """Write config.yaml (keys in the given order), creating the folder."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    # ---------------------------------------------------------------------------------------- metrics
    def append_metrics(self, row: dict[str, Any]) -> None:
        """Append `row` (a JSON object with the integer "step") as one line, flushed and fsync'ed."""
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_metrics_lines(self, max_lines: int | None = None) -> list[str]:
        """The metrics file's lines (the last `max_lines` only, when given), undecodable bytes replaced.

        Raises OSError (FileNotFoundError when there is no metrics file)."""
        with self.metrics_path.open("rb") as f:
            lines = f.read().splitlines()
        if max_lines is not None:
            lines = lines[-max_lines:]
        return [ln.decode("utf-8", "replace") for ln in lines]

    def read_metrics(self, max_lines: int | None = None) -> MetricsLog:
        """The steps logged (the last `max_lines` lines only, when given); a line that is not a JSON object
        with an integer "step" (e.g. one being written) is listed in `bad`, never raised.

        Raises OSError (FileNotFoundError when there is no metrics file)."""
        with self.metrics_path.open("rb") as f:
            raw = f.read().splitlines()
        first = 0 if max_lines is None else max(0, len(raw) - max_lines)
        log = MetricsLog(total_lines=len(raw))
        for n, data in enumerate(raw[first:], start=first + 1):
            line = data.decode("utf-8", "replace")
            if not line.strip():
                continue
            row = _step_row(line)
            if isinstance(row, str):
                log.bad.append((n, row))
            else:
                log.rows.append(row)
        return log

    def truncate_metrics(self, steps_done: int) -> None:
        """Keep only the lines of steps up to `steps_done` (those after a checkpoint will be run again); a torn
        or otherwise unreadable line goes too. Nothing to do without a metrics file."""
        if not self.metrics_path.is_file():
            return
        keep = []
        for line in self.metrics_path.read_text().splitlines():
            row = _step_row(line)
            if not isinstance(row, str) and row["step"] <= steps_done:
                keep.append(line)
        self.metrics_path.write_text("".join(f"{x}\n" for x in keep))

    # ----------------------------------------------------------------------------------------- policy
    def read_policy_manifest(self) -> dict[str, Any] | None:
        """policy/morlaif_policy.json, or None when the run has not written its policy (yet)."""
        f = self.policy_path / POLICY_MANIFEST
        return json.loads(f.read_text()) if f.is_file() else None


def _step_row(line: str) -> dict[str, Any] | str:
    """The row of a metrics line, or what is wrong with it."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        return f"invalid JSON: {e.msg}"
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    if isinstance(row.get("step"), bool) or not isinstance(row.get("step"), int):
        return 'no integer "step"'
    return row


def find_runs(root: str | Path, name: re.Pattern[str] = RUN_NAME) -> dict[str, RunFolder]:
    """name -> run of every folder directly under `root` whose name matches `name` and whose metrics.jsonl
    is a file whose real path (symbolic links followed) stays inside `root`'s real path. The runs' metrics
    paths are those real paths. {} when `root` cannot be listed."""
    try:
        real_root = Path(root).resolve(strict=True)
        children = sorted(real_root.iterdir())
    except OSError:
        return {}
    out = {}
    for child in children:
        if not name.match(child.name):
            continue
        try:
            real = (child / METRICS).resolve(strict=True)
        except OSError:
            continue
        if real.is_file() and real.is_relative_to(real_root):
            out[child.name] = RunFolder(real.parent, metrics=real)
    return out
