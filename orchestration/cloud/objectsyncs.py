"""ObjectSync bookkeeping: which version of each object each edge node has ACKed (kubeedge.md §2.7).

One ``ObjectSync`` (namespaced objects, in the object's namespace) or ``ClusterObjectSync``
(cluster-scoped objects) per (node, object), named ``<node>.<object uid>``, whose
``status.objectResourceVersion`` is the newest version the node has ACKed ("0": sent, no ACK
yet). Records are read from informer caches; writes are coalesced: every ACK lands in a
per-node pending map (the newest per object wins) that one flusher task writes in batches, so
a burst of ACKs costs at most one create plus one status write per object, never one write per
message. Until the informers show a write, lookups answer from the pending and written layers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, replace
from typing import Any

from ..client import Client, ConflictError, Informer, NotFoundError, Resource
from .controlling import Informers, meta
from .installing import install_crds

log = logging.getLogger(__name__)

GROUP, VERSION = "reliablesyncs.kubeedge.io", "v1alpha1"
OBJECTSYNCS = Resource(GROUP, VERSION, "objectsyncs", "ObjectSync")
CLUSTEROBJECTSYNCS = Resource(
    GROUP, VERSION, "clusterobjectsyncs", "ClusterObjectSync", namespaced=False
)
_NODES = Resource("", "v1", "nodes", "Node", namespaced=False)


def _crd(res: Resource, what: str) -> dict[str, Any]:
    """KubeEdge's CRD (build/crds/reliablesyncs/*_v1alpha1.yaml), descriptions shortened."""

    def string(description: str) -> dict[str, Any]:
        return {"description": description, "type": "string"}

    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{res.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": res.kind,
                "listKind": f"{res.kind}List",
                "plural": res.plural,
                "singular": res.kind.lower(),
            },
            "scope": "Namespaced" if res.namespaced else "Cluster",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "description": f"{res.kind} stores the state of the {what} object "
                            "that was successfully persisted to the edge node; its name is "
                            "<node name>.<object UID>.",
                            "type": "object",
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": {
                                    "description": "The object persisted to the edge.",
                                    "type": "object",
                                    "properties": {
                                        "objectAPIVersion": string("The object's APIVersion."),
                                        "objectKind": string("The object's kind."),
                                        "objectName": string("The object's name."),
                                    },
                                },
                                "status": {
                                    "type": "object",
                                    "properties": {
                                        "objectResourceVersion": string(
                                            "The object's resourceVersion the node has ACKed."
                                        ),
                                    },
                                },
                            },
                        }
                    },
                }
            ],
        },
    }


# The same two documents as deploy/crds/reliablesyncs.yaml (a test keeps them equal).
RELIABLESYNCS_CRDS: tuple[dict[str, Any], ...] = (
    _crd(OBJECTSYNCS, "namespaced"),
    _crd(CLUSTEROBJECTSYNCS, "cluster-scoped"),
)


async def ensure_crds(client: Client) -> None:
    """Create or update the ObjectSync CRDs; idempotent (call at cloud start, before the
    informers of ``OBJECTSYNCS``/``CLUSTEROBJECTSYNCS`` start)."""
    await install_crds(client, RELIABLESYNCS_CRDS)


def parse_rv(value: Any) -> int:
    """A resourceVersion as an integer (KubeEdge compares them numerically); 0 if not one."""
    text = str(value or "")
    return int(text) if text.isascii() and text.isdigit() else 0


def sync_name(node: str, uid: str) -> str:
    return f"{node}.{uid}"


@dataclass(frozen=True, slots=True)
class SyncRecord:
    """What one ObjectSync says: ``node`` has ACKed version ``rv`` of an object."""

    node: str
    uid: str
    api_version: str
    kind: str
    name: str
    namespace: str | None  # None: cluster-scoped (a ClusterObjectSync)
    rv: int

    @property
    def resource(self) -> Resource:
        return OBJECTSYNCS if self.namespace else CLUSTEROBJECTSYNCS

    def stub(self) -> dict[str, Any]:
        """The object as a delete message carries it when it is gone: names and uid."""
        m: dict[str, Any] = {"name": self.name, "uid": self.uid}
        if self.namespace:
            m["namespace"] = self.namespace
        return {"apiVersion": self.api_version, "kind": self.kind, "metadata": m}

    @classmethod
    def of(cls, node: str, obj: dict[str, Any], rv: int) -> SyncRecord:
        m = meta(obj)
        return cls(
            node,
            str(m.get("uid", "")),
            str(obj.get("apiVersion", "")),
            str(obj.get("kind", "")),
            str(m.get("name", "")),
            m.get("namespace") or None,
            rv,
        )

    @classmethod
    def from_sync(cls, sync: dict[str, Any]) -> SyncRecord | None:
        m = meta(sync)
        node, dot, uid = str(m.get("name", "")).rpartition(".")  # node names may hold dots
        if not dot or not node or not uid:
            return None
        spec = sync.get("spec") or {}
        rv = parse_rv((sync.get("status") or {}).get("objectResourceVersion"))
        return cls(
            node,
            uid,
            str(spec.get("objectAPIVersion", "")),
            str(spec.get("objectKind", "")),
            str(spec.get("objectName", "")),
            m.get("namespace") or None,
            rv,
        )


@dataclass(frozen=True, slots=True)
class _Write:
    record: SyncRecord
    deleted: bool = False
    reset: bool = False  # an upsert after a delete: its rv stands even if lower than stored
    attempts: int = 0
    version: int = 0  # written layer: the ObjectSync's own resourceVersion after the write


_Layer = dict[str, dict[str, _Write]]  # node -> uid -> write


class ObjectSyncs:
    """The ObjectSync records of every node, read from informers and written coalesced.

    ``flush_delay``: seconds the flusher lets ACKs gather before writing a batch;
    ``concurrency``: writes in flight at once; ``max_attempts``: tries per write.
    """

    def __init__(
        self,
        client: Client,
        informers: Informers,
        *,
        flush_delay: float = 0.05,
        concurrency: int = 8,
        max_attempts: int = 5,
        retry_delay: float = 1.0,
    ) -> None:
        self.client = client
        self.flush_delay = flush_delay
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.retry_delay = retry_delay
        self._informers: dict[Resource, Informer] = {
            res: informers(res) for res in (OBJECTSYNCS, CLUSTEROBJECTSYNCS)
        }
        for informer in self._informers.values():
            informer.on_event(self._on_sync)
        self.nodes = informers(_NODES)
        self.nodes.on_event(self._on_node)
        self._index: dict[str, dict[str, SyncRecord]] = {}  # from the informers
        self._pending: _Layer = {}  # recorded, not yet taken by the flusher
        self._writing: _Layer = {}  # the batch being written
        self._written: _Layer = {}  # written, not yet shown by the informers
        self._wake = asyncio.Event()
        self._settled = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self.writes = 0  # API writes made (creates, status patches, deletes)

    # -- reading -------------------------------------------------------------------------

    def lookup(self, node: str, uid: str) -> SyncRecord | None:
        """The newest record for (node, uid), whether written yet or not."""
        for layer in (self._pending, self._writing):
            w = layer.get(node, {}).get(uid)
            if w is not None:
                return None if w.deleted else w.record
        return self._stored(node, uid)

    def _stored(self, node: str, uid: str) -> SyncRecord | None:
        """The record as the API has it: our last write, or the informers once they show it."""
        w = self._written.get(node, {}).get(uid)
        if w is not None:
            if not self._caught_up(w):
                return None if w.deleted else w.record
            _discard(self._written, node, uid)
        return self._index.get(node, {}).get(uid)

    def acked_rv(self, node: str, uid: str) -> int | None:
        """The version ``node`` has ACKed of object ``uid`` (0: sent, not ACKed), or None."""
        record = self.lookup(node, uid)
        return None if record is None else record.rv

    def records(self, node: str) -> list[SyncRecord]:
        uids: set[str] = set(self._index.get(node, ()))
        for layer in (self._pending, self._writing, self._written):
            uids.update(layer.get(node, ()))
        found = (self.lookup(node, uid) for uid in uids)
        return [r for r in found if r is not None]

    def node_names(self) -> set[str]:
        """Nodes that have records."""
        names: set[str] = set(self._index)
        for layer in (self._pending, self._writing, self._written):
            names.update(layer)
        return names

    # -- recording -----------------------------------------------------------------------

    def record_sent(self, node: str, obj: dict[str, Any]) -> None:
        """An object is on its way to ``node``: make sure a record exists ("0" if new), so
        the sync loop can take it back should the object go before the node ACKs it."""
        uid = str(meta(obj).get("uid", ""))
        pending = self._pending.get(node, {}).get(uid)
        if pending is not None:
            if pending.deleted:
                self._put(_Write(SyncRecord.of(node, obj, 0), reset=True))
        elif self.lookup(node, uid) is None:
            self._put(_Write(SyncRecord.of(node, obj, 0)))

    def record_ack(self, node: str, obj: dict[str, Any], rv: int) -> None:
        """``node`` ACKed version ``rv`` of ``obj`` (its apiVersion, kind and metadata)."""
        record = SyncRecord.of(node, obj, rv)
        pending = self._pending.get(node, {}).get(record.uid)
        if pending is not None:
            if pending.deleted:
                self._put(_Write(record, reset=True))
            elif rv > pending.record.rv:
                self._put(replace(pending, record=record, attempts=0))
            return
        known = self.lookup(node, record.uid)
        if known is None or known.rv < rv:
            self._put(_Write(record))

    def record_deleted(self, node: str, obj: dict[str, Any]) -> None:
        """``node`` ACKed the deletion of ``obj``: its record goes."""
        uid = str(meta(obj).get("uid", ""))
        known = self.lookup(node, uid)
        if known is not None:
            self._put(_Write(known, deleted=True))

    def forget_node(self, node: str) -> int:
        """Delete every record of ``node`` (the Node is gone); how many."""
        records = self.records(node)
        for record in records:
            self._put(_Write(record, deleted=True))
        return len(records)

    def collect_garbage(self) -> int:
        """Delete the records of nodes that no longer exist; how many (call once the Node
        informer has synced)."""
        present = {meta(n).get("name") for n in self.nodes.items()}
        return sum(self.forget_node(node) for node in self.node_names() - present)

    def _put(self, write: _Write) -> None:
        self._pending.setdefault(write.record.node, {})[write.record.uid] = write
        self._wake.set()

    # -- informer events -----------------------------------------------------------------

    async def _on_sync(self, etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        record = SyncRecord.from_sync(obj)
        if record is None:
            return
        if etype == "DELETED":
            _discard(self._index, record.node, record.uid)
        else:
            self._index.setdefault(record.node, {})[record.uid] = record

    async def _on_node(self, etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        if etype == "DELETED":
            name = str(meta(obj).get("name", ""))
            if removed := self.forget_node(name):
                log.info("node %s was deleted: removing its %d ObjectSyncs", name, removed)

    def _caught_up(self, w: _Write) -> bool:
        """Whether the informers already reflect this write (or something newer)."""
        return parse_rv(self._informers[w.record.resource].resource_version) >= w.version

    # -- writing -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="objectsync-flusher")

    async def stop(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Write what is pending (within ``timeout``), then stop."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.flush()
        task, self._task = self._task, None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def flush(self) -> None:
        """Wait until every record made so far is written (or given up)."""
        if self._task is None:
            raise RuntimeError("the ObjectSync flusher is not running")
        async with self._settled:
            await self._settled.wait_for(lambda: not self._pending and not self._writing)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if self.flush_delay:
                await asyncio.sleep(self.flush_delay)  # let a burst of ACKs coalesce
            self._wake.clear()
            batch, self._pending = self._pending, {}
            self._writing = batch
            gate = asyncio.Semaphore(self.concurrency)
            writes = [w for per_node in batch.values() for w in per_node.values()]
            try:
                done = await asyncio.gather(*(self._write(w, gate) for w in writes))
            finally:
                self._writing = {}
            retry = False
            for w, ok in zip(writes, done, strict=True):
                if ok or w.record.uid in self._pending.get(w.record.node, {}):
                    continue  # written, or a newer record has replaced it
                if w.attempts + 1 >= self.max_attempts:
                    log.error("giving up on ObjectSync %s", sync_name(w.record.node, w.record.uid))
                    continue
                self._put(replace(w, attempts=w.attempts + 1))
                retry = True
            async with self._settled:
                self._settled.notify_all()
            if retry:
                await asyncio.sleep(self.retry_delay)

    async def _write(self, w: _Write, gate: asyncio.Semaphore) -> bool:
        async with gate:
            try:
                await self._write_one(w)
            except Exception as exc:
                log.warning(
                    "writing ObjectSync %s failed: %s", sync_name(w.record.node, w.record.uid), exc
                )
                return False
            return True

    async def _write_one(self, w: _Write) -> None:
        rec = w.record
        res, name, client = rec.resource, sync_name(rec.node, rec.uid), self.client
        version = 0
        if w.deleted:
            try:
                gone = await client.delete(res, name, rec.namespace)
                version = parse_rv(meta(gone).get("resourceVersion"))
            except NotFoundError:
                pass
            self.writes += 1
            self._remember(replace(w, version=version))
            return
        stored = self._stored(rec.node, rec.uid)
        if stored is None:
            body = {
                "apiVersion": res.api_version,
                "kind": res.kind,
                "metadata": {"name": name},
                "spec": {
                    "objectAPIVersion": rec.api_version,
                    "objectKind": rec.kind,
                    "objectName": rec.name,
                },
            }
            try:
                created = await client.create(res, body, rec.namespace)
                version = parse_rv(meta(created).get("resourceVersion"))
                stored = replace(rec, rv=0)
            except ConflictError:  # it exists; the informer has not shown it yet
                stored = replace(rec, rv=-1)
            self.writes += 1
        if stored.rv < rec.rv or (w.reset and stored.rv != rec.rv):
            patch = {"status": {"objectResourceVersion": str(rec.rv)}}
            updated = await client.patch(res, name, patch, rec.namespace, subresource="status")
            version = parse_rv(meta(updated).get("resourceVersion"))
            self.writes += 1
        if version:
            self._remember(_Write(rec, version=version))

    def _remember(self, w: _Write) -> None:
        node, uid = w.record.node, w.record.uid
        self._written.setdefault(node, {})[uid] = w
        if self._caught_up(w):
            _discard(self._written, node, uid)
        if w.deleted:
            _discard(self._index, node, uid)


def _discard(layer: dict[str, dict[str, Any]], node: str, uid: str) -> None:
    per_node = layer.get(node)
    if per_node is not None:
        per_node.pop(uid, None)
        if not per_node:
            del layer[node]
