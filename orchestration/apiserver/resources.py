"""The set of resources the server serves right now: built-ins plus what CRDs add."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ..apis import BUILTIN_RESOURCES, ResourceType


class ResourceRegistry:
    def __init__(self, builtins: Iterable[ResourceType] = BUILTIN_RESOURCES) -> None:
        self._builtin = {(r.group, r.version, r.plural): r for r in builtins}
        self._custom: dict[str, list[ResourceType]] = {}  # CRD name -> its served versions
        self._index: dict[tuple[str, str, str], ResourceType] = {}
        self.generation = 0  # bumped on every change, so caches of derived documents refresh
        self._reindex()

    def _reindex(self) -> None:
        index = dict(self._builtin)
        for types in self._custom.values():
            for rt in types:
                index.setdefault((rt.group, rt.version, rt.plural), rt)
        self._index = index
        self.generation += 1

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._index.get((group, version, plural))

    def by_kind(self, api_version: str, kind: str) -> ResourceType | None:
        for rt in self._index.values():
            if rt.api_version == api_version and rt.kind == kind:
                return rt
        return None

    def __iter__(self) -> Iterator[ResourceType]:
        return iter(self._index.values())

    def group_versions(self) -> dict[str, list[str]]:
        """group -> versions, core group first; the CRD's first listed version is preferred."""
        out: dict[str, list[str]] = {}
        for rt in self._index.values():
            versions = out.setdefault(rt.group, [])
            if rt.version not in versions:
                versions.append(rt.version)
        return out

    def set_custom(self, crd_name: str, types: list[ResourceType]) -> None:
        if types:
            self._custom[crd_name] = types
        else:
            self._custom.pop(crd_name, None)
        self._reindex()

    def custom_names(self) -> set[str]:
        """The CRDs whose types are served now."""
        return set(self._custom)
