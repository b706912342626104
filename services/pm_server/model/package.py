"""Adapter packages: `<adapter_root>/<principle>/<version>/` with PEFT safetensors and principle.json.

Two kinds: `lora` (a PEFT LoRA adapter with its score head, adapter_config.json + adapter_model.safetensors)
and `head` (a score head alone on the frozen base, head.safetensors: `weight` (1, hidden) and `bias` (1,)).
The server scores every head-only principle of an item with one forward of the base.

A package is untrusted input until checked: its path must stay inside the adapter root (no `..`, no
symlink out), it may hold only safetensors weights (never a pickle), its base must match the server's
base, and its weights must parse. `check_package` does all of that without touching the model.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import safe_open

from morlaif.errors import MorlaifError
from morlaif.principles import PRINCIPLE_NAME_RE
from morlaif.protocol import Calibration
from pm_server.model.template import InputTemplate

__all__ = [
    "PackageError",
    "PackageManifest",
    "CheckedPackage",
    "MANIFEST",
    "check_package",
    "find_packages",
    "newest_version",
    "resolve_package_dir",
    "save_head_package",
    "write_manifest",
]

MANIFEST = "principle.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
HEAD_WEIGHTS = "head.safetensors"
_ALLOWED_FILES = {MANIFEST, ADAPTER_CONFIG, ADAPTER_WEIGHTS, HEAD_WEIGHTS, "README.md", "metrics.json"}
_KIND_FILES = {"lora": (ADAPTER_CONFIG, ADAPTER_WEIGHTS), "head": (HEAD_WEIGHTS,)}
_PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz"}
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class PackageError(MorlaifError):
    """A package path or its content is refused. `code` says why (for the HTTP error)."""

    def __init__(self, message: str, *, code: str, field: str | None = "path", status: int = 400) -> None:
        super().__init__(message, field=field)
        self.code = code
        self.status = status


class PackageManifest(BaseModel):
    """principle.json: what the server needs to serve an adapter, and where it came from."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = 1
    name: str = Field(pattern=PRINCIPLE_NAME_RE.pattern)
    kind: Literal["lora", "head"] = Field(
        default="lora", description="lora: LoRA adapter + score head; head: a score head on the frozen base."
    )
    judge_phrase: str = ""
    description: str = ""
    base_model: str
    base_config_hash: str
    template: InputTemplate
    calibration: Calibration = Field(default_factory=Calibration)
    metrics: dict[str, Any] = Field(default_factory=dict)
    provenance: dict[str, Any] = Field(default_factory=dict)


class CheckedPackage(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: Path  # resolved, inside the root
    relative_path: str
    version: str
    manifest: PackageManifest


def _inside(root: Path, path: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def resolve_package_dir(root: Path, name: str, *, version: str | None = None, path: str | None = None) -> Path:
    """The package directory for a load request, refusing anything that would leave `root`."""
    root = root.resolve()
    if path is not None and version is not None:
        raise PackageError("give version or path, not both", code="invalid_request", field="path")
    if path is not None:
        if "\x00" in path:
            raise PackageError("path must not contain NUL bytes", code="path_outside_root")
        raw = Path(path)
        candidate = raw if raw.is_absolute() else root / raw
        if ".." in raw.parts:
            raise PackageError(f"path {path!r} must not contain '..'", code="path_outside_root")
        resolved = candidate.resolve()
        if not _inside(root, resolved):
            raise PackageError(f"path {path!r} resolves outside the adapter root", code="path_outside_root")
        if not resolved.is_dir():
            raise PackageError(f"no package directory at {path!r}", code="package_not_found", status=404)
        return resolved
    principle_dir = root / name
    if version is None:
        version = newest_version(principle_dir)
        if version is None:
            raise PackageError(
                f"no package versions under {name}/ in the adapter root",
                code="package_not_found",
                field="name",
                status=404,
            )
    elif not VERSION_RE.match(version):
        raise PackageError(f"invalid version {version!r}", code="invalid_request", field="version")
    resolved = (principle_dir / version).resolve()
    if not _inside(root, resolved):
        raise PackageError(
            f"{name}/{version} resolves outside the adapter root", code="path_outside_root", field="version"
        )
    if not resolved.is_dir():
        raise PackageError(
            f"no package {name}/{version} in the adapter root",
            code="package_not_found",
            field="version",
            status=404,
        )
    return resolved


def newest_version(principle_dir: Path) -> str | None:
    """The newest version directory (by name, so use sortable versions such as 20261122-1030 or v0003)."""
    if not principle_dir.is_dir():
        return None
    versions = sorted(p.name for p in principle_dir.iterdir() if p.is_dir() and VERSION_RE.match(p.name))
    return versions[-1] if versions else None


def find_packages(root: Path) -> list[tuple[str, str]]:
    """(principle, newest version) for every principle directory under `root` that holds a package."""
    found: list[tuple[str, str]] = []
    if not root.is_dir():
        return found
    for d in sorted(root.iterdir()):
        if d.is_dir() and PRINCIPLE_NAME_RE.match(d.name):
            v = newest_version(d)
            if v is not None and (d / v / MANIFEST).is_file():
                found.append((d.name, v))
    return found


def check_package(root: Path, pkg_dir: Path, *, expect_name: str, base_config_hash: str) -> CheckedPackage:
    """Validate everything about a package that can be known without loading it into the model."""
    root = root.resolve()
    pkg_dir = pkg_dir.resolve()
    if not _inside(root, pkg_dir):
        raise PackageError("package path resolves outside the adapter root", code="path_outside_root")
    rel = pkg_dir.relative_to(root).as_posix()
    with os.scandir(pkg_dir) as it:
        entries = sorted(it, key=lambda x: x.name)
    for entry in entries:
        p = Path(entry.path)
        if entry.is_symlink() and not _inside(root, p.resolve()):
            raise PackageError(f"{rel}/{entry.name} is a symlink out of the adapter root", code="path_outside_root")
        if p.suffix.lower() in _PICKLE_SUFFIXES:
            raise PackageError(
                f"{rel}/{entry.name}: pickle-based weight files are refused; save with safetensors",
                code="not_safetensors",
            )
        if entry.is_file() and entry.name not in _ALLOWED_FILES:
            raise PackageError(f"{rel}/{entry.name}: unexpected file in an adapter package", code="invalid_package")
    if not (pkg_dir / MANIFEST).is_file():
        raise PackageError(f"{rel}: missing {MANIFEST}", code="invalid_package")
    try:
        manifest = PackageManifest.model_validate_json((pkg_dir / MANIFEST).read_bytes())
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise PackageError(f"{rel}/{MANIFEST}: {loc}: {first['msg']}", code="invalid_package") from e
    for required in _KIND_FILES[manifest.kind]:
        if not (pkg_dir / required).is_file():
            code = "not_safetensors" if required.endswith(".safetensors") else "invalid_package"
            raise PackageError(f"{rel}: missing {required} (a {manifest.kind} package)", code=code)
    for kind, files in _KIND_FILES.items():
        stray = [f for f in files if kind != manifest.kind and (pkg_dir / f).exists()]
        if stray:
            raise PackageError(
                f"{rel}: {stray[0]} belongs in a {kind} package; principle.json says kind {manifest.kind!r}",
                code="invalid_package",
            )
    if manifest.name != expect_name:
        raise PackageError(
            f"{rel} is a package for principle {manifest.name!r}, not {expect_name!r}",
            code="principle_mismatch",
            field="name",
        )
    if manifest.base_config_hash != base_config_hash:
        raise PackageError(
            f"{rel} was trained on base {manifest.base_model!r} (config {manifest.base_config_hash}); "
            f"this server's base has config {base_config_hash}",
            code="base_mismatch",
        )
    if manifest.kind == "head":
        _check_head(pkg_dir, rel)
    else:
        _check_lora(pkg_dir, rel)
    return CheckedPackage(path=pkg_dir, relative_path=rel, version=pkg_dir.name, manifest=manifest)


def _read_all(path: Path, rel: str) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of a safetensors file, reading each (a truncated file fails here)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k)[:].shape) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as e:  # safetensors raises several types for corrupt files
        raise PackageError(f"{rel}/{path.name} is corrupt or truncated: {e}", code="corrupt_weights") from e
    if not shapes:
        raise PackageError(f"{rel}/{path.name} holds no tensors", code="corrupt_weights")
    return shapes


def _check_lora(pkg_dir: Path, rel: str) -> None:
    try:
        cfg = json.loads((pkg_dir / ADAPTER_CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PackageError(f"{rel}/{ADAPTER_CONFIG} is not valid JSON", code="invalid_package") from e
    if not isinstance(cfg, dict) or cfg.get("peft_type") != "LORA" or cfg.get("task_type") not in (None, "SEQ_CLS"):
        raise PackageError(f"{rel}/{ADAPTER_CONFIG}: need a LoRA adapter for SEQ_CLS", code="invalid_package")
    if cfg.get("use_dora"):
        raise PackageError(
            f"{rel}: DoRA adapters cannot share a mixed batch with other adapters; train plain LoRA",
            code="unsupported_adapter",
        )
    _read_all(pkg_dir / ADAPTER_WEIGHTS, rel)


def _check_head(pkg_dir: Path, rel: str) -> None:
    shapes = _read_all(pkg_dir / HEAD_WEIGHTS, rel)
    w, b = shapes.get("weight"), shapes.get("bias")
    if set(shapes) - {"weight", "bias"} or w is None or len(w) != 2 or w[0] != 1 or (b is not None and b != (1,)):
        got = ", ".join(f"{k} {list(v)}" for k, v in sorted(shapes.items()))
        raise PackageError(
            f"{rel}/{HEAD_WEIGHTS}: need `weight` [1, hidden] and optionally `bias` [1]; got {got}",
            code="invalid_package",
        )


def save_head_package(head: Any, pkg_dir: Path, manifest: PackageManifest) -> Path:
    """Write a score head (a Linear with one output) and its manifest (kind `head`) as a package at `pkg_dir`,
    atomically like `save_package`."""
    from safetensors.torch import save_file

    if manifest.kind != "head":
        raise ValueError("a head package needs a manifest of kind 'head'")
    tensors = {"weight": head.weight.detach().cpu().float().contiguous()}
    if head.bias is not None:
        tensors["bias"] = head.bias.detach().cpu().float().contiguous()
    return _publish(pkg_dir, manifest, lambda staging: save_file(tensors, str(staging / HEAD_WEIGHTS)))


def write_manifest(pkg_dir: Path, manifest: PackageManifest) -> None:
    """Write principle.json atomically (a reader never sees half a manifest)."""
    if "date" not in manifest.provenance:
        manifest.provenance["date"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    tmp = pkg_dir / f".{MANIFEST}.tmp"
    tmp.write_text(manifest.model_dump_json(indent=2))
    os.replace(tmp, pkg_dir / MANIFEST)


def save_package(
    model: Any,
    adapter_name: str,
    pkg_dir: Path,
    manifest: PackageManifest,
) -> Path:
    """Write a PEFT model's adapter `adapter_name` and its manifest as a package at `pkg_dir`.

    Files are written into a temporary sibling and renamed into place, so a server scanning the root
    never sees a half-written package. Train under PEFT's adapter name "default": PEFT mangles state-dict
    keys of adapters named like a parameter (a principle called "bias" would save unloadable weights).
    """
    if adapter_name in {"bias", "weight"}:
        raise ValueError(f"adapter name {adapter_name!r} collides with parameter names; use 'default'")
    import shutil

    def write(staging: Path) -> None:
        out = staging.parent / "peft"
        model.save_pretrained(out, selected_adapters=[adapter_name], safe_serialization=True)
        src = out / adapter_name if adapter_name != "default" else out
        for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
            shutil.move(str(src / name), staging / name)

    return _publish(pkg_dir, manifest, write)


def _publish(pkg_dir: Path, manifest: PackageManifest, write: Callable[[Path], None]) -> Path:
    """`write(staging)` the weights and the manifest into a temporary sibling of `pkg_dir`, then rename it into
    place, so a server scanning the root never sees a half-written package."""
    import tempfile

    pkg_dir.parent.mkdir(parents=True, exist_ok=True)
    if pkg_dir.exists():
        raise FileExistsError(f"package {pkg_dir} already exists; pick a new version")
    with tempfile.TemporaryDirectory(dir=pkg_dir.parent, prefix=".tmp-") as tmp:
        staging = Path(tmp) / "package"
        staging.mkdir()
        write(staging)
        write_manifest(staging, manifest)
        for f in staging.iterdir():  # safetensors writes 0600; a server running as another user must read it
            f.chmod(0o644)
        os.rename(staging, pkg_dir)
    return pkg_dir
