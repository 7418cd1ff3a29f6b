"""The garbage collector: ``ownerReferences`` decide what outlives what.

Every watched object is indexed by the owners it names. An object whose owners are all gone
(not found, or found with another uid) is deleted; dangling references next to a live owner
are removed. An owner deleted with the ``foregroundDeletion`` finalizer has its dependents
deleted (in the foreground too) and keeps the finalizer until no dependent that blocks owner
deletion is left; with the ``orphan`` finalizer its dependents lose their references to it
first. Resources served by CustomResourceDefinitions are watched as their CRDs appear.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..client import (
    CONFIGMAPS,
    CRDS,
    DEPLOYMENTS,
    EVENTS,
    LEASES,
    NAMESPACES,
    NODES,
    PODS,
    REPLICASETS,
    SECRETS,
    SERVICEACCOUNTS,
    Client,
    Informer,
    NotFoundError,
    Resource,
)
from .controlling import (
    SERVICES,
    Controller,
    Informers,
    being_deleted,
    crd_resource,
    meta,
)

log = logging.getLogger(__name__)

FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"

# Resources watched for owner references by default.
DEFAULT_RESOURCES: tuple[Resource, ...] = (
    PODS,
    REPLICASETS,
    DEPLOYMENTS,
    CONFIGMAPS,
    SECRETS,
    SERVICES,
    SERVICEACCOUNTS,
)
# Kinds an owner reference may name, beyond the watched ones and the CRDs'.
_KNOWN: tuple[Resource, ...] = (NAMESPACES, NODES, EVENTS, LEASES, CRDS)
_ABSENT_MEMORY = 10_000  # owner uids known to be gone (uids never come back)


@dataclass(frozen=True, slots=True)
class ObjectKey:
    res: Resource
    namespace: str  # "" when cluster-scoped
    name: str


GCKey = ObjectKey | str  # an object, or the name of a CRD whose resource to (un)watch


def _uid(obj: dict[str, Any]) -> str:
    return str(meta(obj).get("uid", ""))


def _refs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in meta(obj).get("ownerReferences") or [] if r.get("uid")]


def _finalizers(obj: dict[str, Any]) -> list[str]:
    return list(meta(obj).get("finalizers") or [])


class GarbageCollector(Controller[GCKey]):
    name = "garbage-collector"

    def __init__(
        self,
        client: Client,
        informers: Informers,
        *,
        workers: int = 2,
        resync: float | None = 300.0,
        resources: Iterable[Resource] = DEFAULT_RESOURCES,
        custom_resources: bool = True,
    ) -> None:
        super().__init__(client, informers, workers=workers, resync=resync)
        self.resources = list(resources)
        self._kinds = {(r.group, r.kind): r for r in (*_KNOWN, *self.resources)}
        self._uids: dict[str, ObjectKey] = {}  # uid -> the watched object
        self._key_uid: dict[ObjectKey, str] = {}
        self._owners: dict[ObjectKey, tuple[dict[str, Any], ...]] = {}  # its owner references
        self._dependents: dict[str, set[ObjectKey]] = collections.defaultdict(set)
        self._finalizing: set[ObjectKey] = set()  # deleting with orphan/foreground finalizers
        self._absent: set[str] = set()
        self._custom: dict[str, Resource] = {}  # CRD name -> the resource watched for it
        # Custom resources whose informer another controller made (and owns): hooked once,
        # never discarded here.
        self._shared: set[Resource] = set()
        for res in self.resources:
            self._watch(res)
        self.crds = informers(CRDS) if custom_resources else None
        if self.crds is not None:
            self.crds.on_event(self._on_crd)

    def keys(self) -> Iterable[GCKey]:
        keys: list[GCKey] = [*self._owners, *self._finalizing]
        if self.crds is not None:
            keys += [meta(crd)["name"] for crd in self.crds.items()]
        return keys

    # --- the dependency index -----------------------------------------------------------

    def _watch(self, res: Resource) -> None:
        async def on_event(etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
            self._on_object(res, etype, obj)

        self.informers(res).on_event(on_event)

    def _on_object(self, res: Resource, etype: str, obj: dict[str, Any]) -> None:
        m = meta(obj)
        key = ObjectKey(res, m.get("namespace") or "", m.get("name", ""))
        uid = _uid(obj)
        before = self._owners.get(key, ())
        if etype == "DELETED":
            self._unindex(key)
            self._wake_after_removal(uid, before)
            return
        replaced = self._key_uid.get(key, uid)
        if replaced != uid:  # a namesake replaced it unseen (a relist): the old one is gone
            self._unindex(key)
            self._wake_after_removal(replaced, before)
            before = ()
        refs = tuple(_refs(obj))
        self._index(key, uid, refs)
        if being_deleted(obj) and {FOREGROUND, ORPHAN} & set(_finalizers(obj)):
            self._finalizing.add(key)
            self.enqueue(key)
        else:
            self._finalizing.discard(key)
        if refs != before:
            if refs:
                self.enqueue(key)  # new or changed owners: check they exist
            for ref in before:  # owners that may have been waiting on this reference
                self._enqueue_uid(ref["uid"])

    def _wake_after_removal(self, uid: str, owner_refs: Iterable[dict[str, Any]]) -> None:
        """An object is gone: its dependents may be orphans now, and its owners may have been
        waiting for it."""
        for dependent in list(self._dependents.get(uid, ())):
            self.enqueue(dependent)
        for ref in owner_refs:
            self._enqueue_uid(ref["uid"])

    def _enqueue_uid(self, uid: str) -> None:
        key = self._uids.get(uid)
        if key is not None:
            self.enqueue(key)

    def _index(self, key: ObjectKey, uid: str, refs: tuple[dict[str, Any], ...]) -> None:
        self._key_uid[key] = uid
        self._uids[uid] = key
        before = {r["uid"] for r in self._owners.get(key, ())}
        after = {r["uid"] for r in refs}
        for owner in before - after:
            self._drop_dependent(owner, key)
        for owner in after:
            self._dependents[owner].add(key)
        if refs:
            self._owners[key] = refs
        else:
            self._owners.pop(key, None)

    def _unindex(self, key: ObjectKey) -> None:
        uid = self._key_uid.pop(key, None)
        if uid is not None and self._uids.get(uid) == key:
            del self._uids[uid]
        for ref in self._owners.pop(key, ()):
            self._drop_dependent(ref["uid"], key)
        self._finalizing.discard(key)

    def _drop_dependent(self, owner: str, key: ObjectKey) -> None:
        dependents = self._dependents.get(owner)
        if dependents is not None:
            dependents.discard(key)
            if not dependents:
                del self._dependents[owner]

    # --- custom resources ---------------------------------------------------------------

    async def _on_crd(self, etype: str, crd: dict[str, Any], old: dict[str, Any] | None) -> None:
        self.enqueue(meta(crd)["name"])

    async def _sync_crd(self, name: str) -> None:
        crd = self.crds.get(name) if self.crds is not None else None
        res = crd_resource(crd) if crd is not None else None
        current = self._custom.get(name)
        if res == current:
            return
        if current is not None:
            del self._custom[name]
            await self._unwatch(current)
        if res is None or res in self.resources:
            return
        # Kept after the CRD goes: a reference to its kind then reads as a missing owner.
        self._kinds[(res.group, res.kind)] = res
        self._custom[name] = res
        if res in self.informers:
            # Another controller's informer (e.g. the AI controllers' on their own kinds): it
            # may have listed already, so index what it holds; events after this come here.
            informer = self.informers(res)
            if res not in self._shared:
                self._shared.add(res)
                self._watch(res)
            for obj in informer.items():
                self._on_object(res, "ADDED", obj)
            return
        self._watch(res)
        await self.informers(res).start()

    async def _unwatch(self, res: Resource) -> None:
        if res in self._shared:
            informer: Informer | None = self.informers(res)  # its owner's: keep it running
        else:
            informer = await self.informers.discard(res)
        for obj in informer.items() if informer is not None else []:
            m = meta(obj)
            key = ObjectKey(res, m.get("namespace") or "", m.get("name", ""))
            before = self._owners.get(key, ())
            self._unindex(key)
            self._wake_after_removal(_uid(obj), before)

    # --- reconciling --------------------------------------------------------------------

    async def reconcile(self, key: GCKey) -> float | None:
        if isinstance(key, str):
            await self._sync_crd(key)
            return None
        obj = self._cached(key)
        if obj is None:
            return None
        if being_deleted(obj):
            finalizers = _finalizers(obj)
            if ORPHAN in finalizers:
                await self._orphan_dependents(key, obj)
            elif FOREGROUND in finalizers:
                return await self._delete_dependents(key, obj)
            return None
        if _refs(obj):
            await self._check_owners(key, obj)
        return None

    def _cached(self, key: ObjectKey) -> dict[str, Any] | None:
        if key.res not in self.informers:
            return None
        return self.informers(key.res).get(key.name, key.namespace or None)

    async def _owner_state(self, ref: dict[str, Any], namespace: str) -> str:
        """ "solid", "waiting" (being deleted in the foreground), "absent" or "unknown"."""
        uid = ref["uid"]
        if uid in self._absent:
            return "absent"
        group = str(ref.get("apiVersion", "")).rpartition("/")[0]
        res = self._kinds.get((group, str(ref.get("kind", ""))))
        if res is None or (res.namespaced and not namespace):
            return "unknown"  # a kind not known here: leave the dependent alone
        ns = namespace if res.namespaced else None
        owner = self.informers(res).get(ref["name"], ns) if res in self.informers else None
        if owner is None or _uid(owner) != uid:
            # Not cached (or a namesake): the cache may lag, so ask the server.
            try:
                owner = await self.client.get(res, ref["name"], ns)
            except NotFoundError:
                owner = None
        if owner is None or _uid(owner) != uid:
            if len(self._absent) >= _ABSENT_MEMORY:
                self._absent.clear()
            self._absent.add(uid)
            return "absent"
        if being_deleted(owner) and FOREGROUND in _finalizers(owner):
            return "waiting"
        return "solid"

    async def _classify(self, obj: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
        states: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for ref in _refs(obj):
            states[await self._owner_state(ref, meta(obj).get("namespace") or "")].append(ref)
        return states

    async def _check_owners(self, key: ObjectKey, obj: dict[str, Any]) -> None:
        """Kubernetes' attemptToDeleteItem."""
        states = await self._classify(obj)
        if not states["absent"] and not states["waiting"]:
            return
        # About to act: decide again on the live object, not the cached one.
        try:
            obj = await self.client.get(key.res, key.name, key.namespace or None)
        except NotFoundError:
            return
        if being_deleted(obj):
            return
        states = await self._classify(obj)
        m = meta(obj)
        if states["solid"] or states["unknown"]:
            # Keep it for its live owners; drop references to the gone and the departing.
            dropped = {r["uid"] for r in states["absent"] + states["waiting"]}
            if dropped:
                await self._set_owners(key, obj, [r for r in _refs(obj) if r["uid"] not in dropped])
            return
        if states["waiting"]:
            policy = "Foreground"
        elif ORPHAN in _finalizers(obj):
            policy = "Orphan"
        elif FOREGROUND in _finalizers(obj):
            policy = "Foreground"
        else:
            policy = "Background"
        log.debug("deleting %s %s/%s: its owners are gone", key.res.plural, key.namespace, key.name)
        with contextlib.suppress(NotFoundError):
            await self.client.delete(
                key.res,
                key.name,
                key.namespace or None,
                propagation_policy=policy,
                preconditions={"uid": m["uid"], "resourceVersion": m["resourceVersion"]},
            )

    def _dependents_of(self, uid: str) -> list[tuple[ObjectKey, dict[str, Any], dict[str, Any]]]:
        """(key, cached object, its reference to ``uid``) of each cached dependent."""
        found = []
        for key in list(self._dependents.get(uid, ())):
            obj = self._cached(key)
            ref = next((r for r in _refs(obj) if r["uid"] == uid), None) if obj else None
            if obj is not None and ref is not None:
                found.append((key, obj, ref))
        return found

    async def _delete_dependents(self, key: ObjectKey, owner: dict[str, Any]) -> float | None:
        """Foreground deletion: each dependent decides (attemptToDeleteItem) while the owner
        waits; the finalizer goes once no dependent blocks it."""
        blocking = 0
        for dep_key, dep, ref in self._dependents_of(_uid(owner)):
            if not being_deleted(dep):
                self.enqueue(dep_key)
            if ref.get("blockOwnerDeletion"):
                blocking += 1
        if blocking:
            return 5.0  # a dependent's removal wakes this sooner; this is a safety net
        await self._remove_finalizer(key, owner, FOREGROUND)
        return None

    async def _orphan_dependents(self, key: ObjectKey, owner: dict[str, Any]) -> None:
        uid = _uid(owner)
        for dep_key, dep, _ in self._dependents_of(uid):
            await self._set_owners(dep_key, dep, [r for r in _refs(dep) if r["uid"] != uid])
        await self._remove_finalizer(key, owner, ORPHAN)

    async def _set_owners(
        self, key: ObjectKey, obj: dict[str, Any], refs: list[dict[str, Any]]
    ) -> None:
        patch = {
            "metadata": {
                "resourceVersion": meta(obj)["resourceVersion"],  # a stale read must fail
                "ownerReferences": refs or None,
            }
        }
        with contextlib.suppress(NotFoundError):
            await self.client.patch(key.res, key.name, patch, key.namespace or None)

    async def _remove_finalizer(self, key: ObjectKey, obj: dict[str, Any], name: str) -> None:
        kept = [f for f in _finalizers(obj) if f != name]
        patch = {
            "metadata": {
                "resourceVersion": meta(obj)["resourceVersion"],
                "finalizers": kept or None,
            }
        }
        with contextlib.suppress(NotFoundError):
            await self.client.patch(key.res, key.name, patch, key.namespace or None)
