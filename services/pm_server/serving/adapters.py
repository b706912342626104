"""Adapter management: which principles the server serves, and loading, replacing and unloading them.

`AdapterManager` fills the `Registry` that `ScoringService` scores from: the rules, the base's own head (a base
folder written by ``morlaif pm train --full``), and adapter packages from the adapter root, at start-up and on the
admin routes. A replaced or unloaded adapter is retired; the model thread deletes it once the last request in
flight that uses it is answered (`Registry` counts them).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import anyio
from pydantic import ValidationError

from morlaif.protocol import AdapterAction, LoadAdapterRequest, PrincipleInfo
from pm_server.model.base import BaseModel, resolve_base_id
from pm_server.model.engine import BASE_ADAPTER, ScoringEngine
from pm_server.model.package import (
    MANIFEST,
    PackageError,
    PackageManifest,
    check_package,
    find_packages,
    resolve_package_dir,
)
from pm_server.model.template import InputTemplate
from pm_server.serving.batcher import Batcher
from pm_server.serving.config import ServerSettings
from pm_server.serving.errors import NotFound
from pm_server.serving.metrics import Metrics
from pm_server.serving.registry import Entry, Registry
from pm_server.serving.rules import DEFAULT_RULES, LengthRule, RegexRule, load_rules

__all__ = ["AdapterManager"]

logger = logging.getLogger(__name__)


class AdapterManager:
    """The served principles (`registry`) and the admin actions on them.

    `check_template` is called with each learned principle's input template before it is served, so that a
    template the base's tokenizer cannot encode fails the load, not a later request (`ScoringService` passes its
    encoder cache). Loads and unloads of one principle are serialised; other principles are not blocked.
    """

    def __init__(
        self, settings: ServerSettings, metrics: Metrics, *, check_template: Callable[[InputTemplate], object]
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.registry = Registry(on_retired=self._delete_retired)
        self._check_template = check_template
        self._admin_locks: dict[str, asyncio.Lock] = {}
        self._base: BaseModel | None = None
        self._engine: ScoringEngine | None = None
        self._batcher: Batcher | None = None

    # ----------------------------------------------------------------------------------- lifecycle
    def start(self, base: BaseModel, engine: ScoringEngine, batcher: Batcher) -> None:
        """Serve the rules (`rules_file`, else `DEFAULT_RULES`), the base's own head if it has one and, with
        `load_on_start`, the newest version of every package in the adapter root. Blocking.

        A package that fails its checks is logged and left out; the others are served. Raises `RuleError` for
        an invalid rules file.
        """
        self._base, self._engine, self._batcher = base, engine, batcher
        s = self.settings
        rules = load_rules(s.rules_file) if s.rules_file is not None else DEFAULT_RULES
        for rule in rules:
            self._add_rule(rule)
        self._add_full_finetuned()
        if s.load_on_start:
            for name, version in find_packages(s.adapter_root):
                try:
                    self._load_package_blocking(LoadAdapterRequest(name=name, version=version))
                except Exception as e:  # one bad package must not keep the others from serving
                    logger.error("not serving %s/%s: %s", name, version, e)
        self.metrics.loaded.set(len(self.registry.names()))

    def _add_rule(self, rule: LengthRule | RegexRule) -> None:
        info = PrincipleInfo(
            name=rule.name,
            kind="rule",
            version=rule.version,
            description=rule.description,
            calibration=rule.calibration,
            metrics={},
            provenance={"rule": rule.model_dump()},
        )
        self.registry.put(Entry(info=info, rule=rule))

    def _add_full_finetuned(self) -> None:
        """A base folder written by `morlaif pm train --full` is itself a PM: serve its head as that principle."""
        assert self._base is not None
        base = self._base
        manifest_file = Path(resolve_base_id(base.model_id)) / MANIFEST
        if not manifest_file.is_file():
            return
        try:
            m = PackageManifest.model_validate_json(manifest_file.read_bytes())
        except ValidationError as e:
            logger.error("not serving the base's own head: %s is invalid: %s", manifest_file, e.errors()[0]["msg"])
            return
        if m.base_config_hash != base.config_hash:
            logger.error("not serving %s: %s does not match the base it sits in", m.name, manifest_file)
            return
        self._check_template(m.template)
        info = PrincipleInfo(
            name=m.name,
            kind="full",
            version=str(m.provenance.get("version", "full")),
            judge_phrase=m.judge_phrase,
            description=m.description,
            calibration=m.calibration,
            metrics=m.metrics,
            provenance=m.provenance,
        )
        self.registry.put(Entry(info=info, adapter_id=BASE_ADAPTER, template=m.template))

    def _delete_retired(self, entry: Entry) -> None:
        """`Registry`'s callback for an entry no request uses any more: its adapter leaves the model thread."""
        if entry.adapter_id is not None and self._batcher is not None:
            adapter_id = entry.adapter_id
            assert self._engine is not None
            engine = self._engine
            self._batcher.call(lambda: engine.delete_adapter(adapter_id))

    # ---------------------------------------------------------------------------------------- admin
    def _admin_lock(self, name: str) -> asyncio.Lock:
        lock = self._admin_locks.get(name)
        if lock is None:
            lock = self._admin_locks[name] = asyncio.Lock()
        return lock

    def _load_package_blocking(self, req: LoadAdapterRequest) -> AdapterAction:
        """Check a package, load it on the model thread, then swap it in. Blocking; not on the event loop."""
        assert self._base is not None and self._batcher is not None and self._engine is not None
        root = Path(self.settings.adapter_root)
        pkg_dir = resolve_package_dir(root, req.name, version=req.version, path=req.path)
        pkg = check_package(root, pkg_dir, expect_name=req.name, base_config_hash=self._base.config_hash)
        self._check_template(pkg.manifest.template)  # a template the tokenizer cannot serve fails here, not later
        adapter_id = self.registry.new_adapter_id()
        engine = self._engine
        try:
            self._batcher.call(lambda: engine.load_adapter(pkg.path, adapter_id)).result()
        except Exception as e:  # weights that parse but do not fit this model
            raise PackageError(
                f"{pkg.relative_path}: could not load the package on this base: {type(e).__name__}: {e}",
                code="invalid_package",
            ) from e
        m = pkg.manifest
        info = PrincipleInfo(
            name=m.name,
            kind="head" if m.kind == "head" else "adapter",
            version=pkg.version,
            judge_phrase=m.judge_phrase,
            description=m.description,
            calibration=m.calibration,
            metrics=m.metrics,
            provenance=m.provenance,
            path=pkg.relative_path,
        )
        old = self.registry.put(Entry(info=info, adapter_id=adapter_id, template=m.template))
        self.metrics.loaded.set(len(self.registry.names()))
        logger.info(
            "serving %s version %s%s",
            m.name,
            pkg.version,
            f" (replacing {old.version})" if old is not None else "",
        )
        return AdapterAction(
            action="replaced" if old is not None else "loaded",
            principle=info,
            previous_version=None if old is None else old.version,
        )

    async def load(self, req: LoadAdapterRequest) -> AdapterAction:
        """Load, or replace, a principle from a package inside the adapter root (POST /v1/adapters).

        Requests already admitted finish on the version they acquired. Raises `PackageError` for a package
        that is not there (status 404), outside the root, invalid, or that does not fit the base (400).
        """
        async with self._admin_lock(req.name):
            return await anyio.to_thread.run_sync(self._load_package_blocking, req)

    async def unload(self, name: str) -> AdapterAction:
        """Stop serving a principle (DELETE /v1/adapters/{name}); requests already admitted still finish with it.

        Raises `NotFound` (``unknown_principle``) when it is not served.
        """
        async with self._admin_lock(name):
            old = self.registry.remove(name)
            if old is None:
                raise NotFound(
                    f"principle {name!r} is not loaded; loaded: {', '.join(self.registry.names())}",
                    field="name",
                    code="unknown_principle",
                )
            self.metrics.loaded.set(len(self.registry.names()))
            logger.info("unloaded %s version %s", name, old.version)
            return AdapterAction(action="unloaded", principle=old.info)
