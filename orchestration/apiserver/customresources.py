"""CustomResourceDefinitions: serve what they define, validate their objects.

A CRD written here (or by another replica sharing the store) registers its group, version and
plural at once; its objects are pruned, defaulted and validated against the version's schema,
compiled once per CRD generation.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import orjson

from ..apis import ResourceType
from ..store import Event, KeyValue, StoreError
from .errors import APIError
from .following import PrefixFollower
from .handling import API, Options, now_rfc3339
from .schemas import CompiledSchema, compile_schema, crd_resource_types, validate_crd
from .storage import type_prefix

log = logging.getLogger(__name__)

_CRD_GROUP, _CRD_PLURAL = "apiextensions.k8s.io", "customresourcedefinitions"


def _is_crd(rt: ResourceType) -> bool:
    return rt.group == _CRD_GROUP and rt.plural == _CRD_PLURAL


class CustomResources:
    def __init__(self, api: API) -> None:
        self.api = api
        # (group, version, plural) -> (the schema's canonical JSON, compiled). Keyed by content:
        # every CRD event rebuilds the ResourceTypes, and recompiling each time is wasted work.
        self._schemas: dict[tuple[str, str, str], tuple[bytes, CompiledSchema]] = {}
        self._follower: PrefixFollower | None = None
        api.validators.append(self.validate)
        api.after_write.append(self.after_write)

    @property
    def _crd_rt(self) -> ResourceType:
        rt = self.api.registry.lookup(_CRD_GROUP, "v1", _CRD_PLURAL)
        assert rt is not None
        return rt

    async def start(self) -> None:
        """Serve every stored CRD, then follow changes made by other replicas."""
        rt = self._crd_rt
        self._follower = PrefixFollower(
            self.api.store,
            type_prefix(rt),
            on_list=self._on_list,
            on_event=self._on_event,
            name="crd-follower",
        )
        await self._follower.start()

    async def close(self) -> None:
        if self._follower is not None:
            await self._follower.close()

    def _on_list(self, kvs: list[KeyValue]) -> None:
        crds = [self.api.codec.decode(self._crd_rt, kv) for kv in kvs]
        present = {crd["metadata"]["name"] for crd in crds}
        for name in self.api.registry.custom_names() - present:
            self.api.registry.set_custom(name, [])
        for crd in crds:
            self._register(crd)

    def _on_event(self, event: Event) -> None:
        crd = self.api.codec.decode(self._crd_rt, event.kv)
        if event.type == "DELETED":
            self.api.registry.set_custom(crd["metadata"]["name"], [])
        else:
            self._register(crd)

    def _register(self, crd: dict[str, Any]) -> None:
        try:
            types = crd_resource_types(crd)
        except Exception:  # a stored CRD that no longer parses must not stop the server
            log.exception("cannot serve CRD %s", crd.get("metadata", {}).get("name"))
            return
        if crd["metadata"].get("deletionTimestamp"):
            types = []
        self.api.registry.set_custom(crd["metadata"]["name"], types)

    def _schema(self, rt: ResourceType) -> CompiledSchema | None:
        if rt.schema is None:
            return None
        key = (rt.group, rt.version, rt.plural)
        source = orjson.dumps(rt.schema, option=orjson.OPT_SORT_KEYS)
        cached = self._schemas.get(key)
        if cached is None or cached[0] != source:
            cached = (source, compile_schema(rt.schema))
            self._schemas[key] = cached
        return cached[1]

    async def validate(
        self, rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None, opts: Options
    ) -> tuple[list[tuple[str, str]], list[str]]:
        if _is_crd(rt):
            causes = [(e.path, e.body) for e in validate_crd(obj)]
            if not causes:
                _set_crd_status(obj, old)
            return causes, []
        schema = self._schema(rt) if rt.custom else None
        if schema is None:
            return [], []
        unknown = schema.prune(obj)
        if unknown and opts.field_validation == "Strict":
            fields = ", ".join(f'unknown field "{path}"' for path in unknown)
            raise APIError(
                400,
                f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: '
                f"strict decoding error: {fields}",
            )
        schema.default(obj)
        causes = [(e.path, e.body) for e in schema.validate(obj)]
        warnings = (
            [f'unknown field "{p}"' for p in unknown] if opts.field_validation == "Warn" else []
        )
        return causes, warnings

    async def after_write(
        self, rt: ResourceType, verb: str, old: dict[str, Any] | None, new: dict[str, Any] | None
    ) -> None:
        if not _is_crd(rt):
            return
        if new is not None:
            self._register(new)
            return
        assert old is not None
        # The CRD is gone: stop serving its type first, so nothing new is created under it,
        # then remove its objects, as Kubernetes does. (Their finalizers are not waited for.)
        self.api.registry.set_custom(old["metadata"]["name"], [])
        spec = old.get("spec") or {}
        names = spec.get("names") or {}
        prefix = type_prefix(
            ResourceType(str(spec.get("group", "")), "", "", str(names.get("plural", "")), "", True)
        )
        while True:
            listed = await self.api.store.list(prefix, limit=500)
            for kv in listed.kvs:
                with contextlib.suppress(StoreError):
                    await self.api.store.delete(kv.key)
            if not listed.more:
                break


def _set_crd_status(crd: dict[str, Any], old: dict[str, Any] | None) -> None:
    spec = crd.get("spec") or {}
    status = (
        crd.setdefault("status", {})
        if old is None
        else crd.setdefault("status", dict(old.get("status") or {}))
    )
    stored = list(status.get("storedVersions") or [])
    for v in spec.get("versions") or []:
        if v.get("storage") and v.get("name") not in stored:
            stored.append(v["name"])
    now = now_rfc3339()
    names = dict(spec.get("names") or {})
    names.setdefault("singular", str(names.get("kind", "")).lower())
    names.setdefault("listKind", f"{names.get('kind', '')}List")
    status.update(
        {
            "acceptedNames": names,
            "storedVersions": stored,
            "conditions": [
                {
                    "type": "NamesAccepted",
                    "status": "True",
                    "reason": "NoConflicts",
                    "message": "no conflicts found",
                    "lastTransitionTime": now,
                },
                {
                    "type": "Established",
                    "status": "True",
                    "reason": "InitialNamesAccepted",
                    "message": "the initial names have been accepted",
                    "lastTransitionTime": now,
                },
            ],
        }
    )
