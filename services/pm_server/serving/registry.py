"""Which principle is served by what, with reference counts so that hot swaps never fail a request.

A request acquires its principles' entries when it is admitted and releases them when it is answered.
Replacing or unloading a principle takes it out of the table at once (new requests see the new state),
but an adapter still referenced by requests in flight is deleted from the model only after the last of
them releases it.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from morlaif.protocol import Calibration, PrincipleInfo
from pm_server.model.template import InputTemplate
from pm_server.serving.errors import UnknownPrinciple
from pm_server.serving.rules import LengthRule, RegexRule

__all__ = ["Entry", "Registry"]


@dataclass(eq=False, kw_only=True)
class Entry:
    info: PrincipleInfo
    adapter_id: str | None = None  # the engine's name for it; None for rules
    template: InputTemplate | None = None
    rule: LengthRule | RegexRule | None = None
    refs: int = 0
    retired: bool = False

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def version(self) -> str:
        return self.info.version

    @property
    def calibration(self) -> Calibration:
        return self.info.calibration


class Registry:
    def __init__(self, on_retired: Callable[[Entry], None]) -> None:
        self._lock = threading.Lock()
        self._active: dict[str, Entry] = {}
        self._on_retired = on_retired
        self._ids = itertools.count(1)

    def new_adapter_id(self) -> str:
        return f"pm{next(self._ids)}"

    def names(self) -> list[str]:
        with self._lock:
            return list(self._active)

    def entries(self) -> list[Entry]:
        with self._lock:
            return list(self._active.values())

    def get(self, name: str) -> Entry | None:
        with self._lock:
            return self._active.get(name)

    def acquire(self, names: Sequence[str]) -> list[Entry]:
        with self._lock:
            unknown = [n for n in names if n not in self._active]
            if unknown:
                loaded = ", ".join(self._active) or "none"
                raise UnknownPrinciple(
                    f"unknown principle(s) {', '.join(unknown)}; loaded: {loaded}", field="principles"
                )
            got = [self._active[n] for n in names]
            for e in got:
                e.refs += 1
            return got

    def release(self, entries: Sequence[Entry]) -> None:
        done = []
        with self._lock:
            for e in entries:
                e.refs -= 1
                if e.retired and e.refs == 0:
                    done.append(e)
        for e in done:
            self._on_retired(e)

    def put(self, entry: Entry) -> Entry | None:
        """Serve `entry` under its name; the previous entry (if any) is retired and returned."""
        with self._lock:
            old = self._active.get(entry.name)
            self._active[entry.name] = entry
            idle = old is not None and self._retire(old)
        if old is not None and idle:
            self._on_retired(old)
        return old

    def remove(self, name: str) -> Entry | None:
        with self._lock:
            old = self._active.pop(name, None)
            idle = old is not None and self._retire(old)
        if old is not None and idle:
            self._on_retired(old)
        return old

    @staticmethod
    def _retire(e: Entry) -> bool:
        e.retired = True
        return e.refs == 0
