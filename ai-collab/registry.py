"""The algorithm registry: classes and functions registered by type and name, with aliases.

Sedna's ``ClassFactory`` with its duplicate bug fixed: a name or alias already taken within
a type is refused with a ``ValueError`` naming both registrants, where Sedna silently
overwrote the first (its duplicate check looked in the wrong dictionary)::

    from orbiter.collab.registry import ClassType, registry

    @registry.register(ClassType.HEM, alias="MyFilter")
    class Mine: ...

    registry.get_cls(ClassType.HEM, "MyFilter")  # -> Mine

Names and aliases share one namespace per type and are matched exactly (case-sensitive,
as in Sedna). The process-wide :data:`registry` imports the built-in algorithms (the
hard-example filters, the ``softmax`` callback) before its first lookup, so
``get_cls(ClassType.HEM, "CrossEntropy")`` works without importing them first.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

__all__ = ["ClassFactory", "ClassType", "Registry", "registry"]

T = TypeVar("T")


class ClassType(StrEnum):
    """Sedna's algorithm types, with Sedna's string values (a registry also takes plain
    strings, for types of its own)."""

    GENERAL = "general"
    HEM = "hard_example_mining"
    AGGREGATION = "aggregation"
    # Sedna spells it "multi_task_learening"; nothing outside the registry sees the value.
    MTL = "multi_task_learning"
    UTD = "unseen_task_detect"
    OF = "optical_flow"
    ALGORITHM = "algorithm"
    DATA_PROCESS = "data_process"
    CALLBACK = "post_process_callback"
    UTP = "unseen_task_processing"
    KM = "knowledge_management"
    STP = "seen_task_processing"


def _qualname(obj: object) -> str:
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or repr(obj)
    return f"{module}.{name}" if module else name


@dataclass
class _Entry:
    obj: Any
    name: str
    aliases: tuple[str, ...]


@dataclass
class _Namespace:
    entries: dict[str, _Entry] = field(default_factory=dict)  # canonical name -> entry
    lookup: dict[str, _Entry] = field(default_factory=dict)  # name or alias -> entry


class Registry:
    """Algorithms by type and name. ``builtins``: modules imported before the first lookup
    (they register themselves on import). Thread-safe."""

    def __init__(self, builtins: Sequence[str] = ()) -> None:
        self._types: dict[str, _Namespace] = {}
        self._builtins = tuple(builtins)
        self._builtins_loaded = not self._builtins
        self._lock = threading.RLock()

    def register(
        self, type_: str, alias: str | Iterable[str] | None = None, *, name: str | None = None
    ) -> Callable[[T], T]:
        """Decorator: registers a class or function under ``name`` (default: its
        ``__name__``) and ``alias`` (one or several); returns it unchanged."""

        def decorate(obj: T) -> T:
            return self.register_cls(obj, type_, alias, name=name)

        return decorate

    def register_cls(
        self,
        obj: T,
        type_: str,
        alias: str | Iterable[str] | None = None,
        *,
        name: str | None = None,
    ) -> T:
        """Registers ``obj``; ``ValueError`` if any of its names is taken by another object
        within ``type_``. Registering the same object under the same names again is a no-op
        (a module imported twice under one name is not a conflict)."""
        canonical = name or getattr(obj, "__name__", None)
        if not isinstance(canonical, str) or not canonical:
            raise ValueError(f"{obj!r} has no __name__: pass name=")
        aliases = (alias,) if isinstance(alias, str) else tuple(alias or ())
        names = list(dict.fromkeys((canonical, *aliases)))
        if not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"names must be non-empty strings, got {names!r}")
        with self._lock:
            space = self._types.setdefault(str(type_), _Namespace())
            existing = space.entries.get(canonical)
            same = existing if existing is not None and existing.obj is obj else None
            for n in names:
                taken = space.lookup.get(n)
                if taken is not None and taken is not same:
                    raise ValueError(
                        f"{type_}: cannot register {_qualname(obj)} as {n!r}: the name is "
                        f"already taken by {_qualname(taken.obj)}"
                    )
            if same is None:
                same = space.entries[canonical] = _Entry(obj, canonical, ())
            same.aliases = tuple(
                n for n in dict.fromkeys((*same.aliases, *names)) if n != canonical
            )
            for n in names:
                space.lookup[n] = same
        return obj

    def unregister(self, type_: str, name: str) -> None:
        """Removes the entry known as ``name`` (a name or an alias) with all its aliases:
        replacing an algorithm is explicit, never a side effect of registering."""
        with self._lock:
            space = self._types.get(str(type_))
            entry = space.lookup.get(name) if space is not None else None
            if space is None or entry is None:
                raise ValueError(self._unknown(type_, name))
            del space.entries[entry.name]
            for n in (entry.name, *entry.aliases):
                space.lookup.pop(n, None)

    def get_cls(self, type_: str, name: str) -> Any:
        """The object registered under ``name`` (or an alias of it) within ``type_``;
        ``ValueError`` listing the known names when there is none."""
        self._load_builtins()
        with self._lock:
            space = self._types.get(str(type_))
            entry = space.lookup.get(name) if space is not None else None
        if entry is None:
            raise ValueError(self._unknown(type_, name))
        return entry.obj

    def is_registered(self, type_: str, name: str) -> bool:
        self._load_builtins()
        with self._lock:
            space = self._types.get(str(type_))
            return space is not None and name in space.lookup

    def names(self, type_: str) -> dict[str, tuple[str, ...]]:
        """The canonical names registered within ``type_``, each with its aliases."""
        self._load_builtins()
        with self._lock:
            space = self._types.get(str(type_))
            if space is None:
                return {}
            return {n: space.entries[n].aliases for n in sorted(space.entries)}

    def _unknown(self, type_: str, name: str) -> str:
        known = [
            f"{n} (alias {', '.join(aliases)})" if aliases else n
            for n, aliases in self.names(type_).items()
        ]
        listing = "; ".join(known) if known else "none registered"
        return f"unknown {type_} {name!r}; known: {listing}"

    def _load_builtins(self) -> None:
        if self._builtins_loaded:
            return
        with self._lock:
            if self._builtins_loaded:
                return
            # Set first: the built-in modules register through this very registry.
            self._builtins_loaded = True
            for module in self._builtins:
                importlib.import_module(module)


registry = Registry(builtins=("orbiter.collab.mining", "orbiter.collab.estimators"))
# Sedna's name for it, so ported code reads ``ClassFactory.register(ClassType.HEM, ...)``.
ClassFactory = registry
