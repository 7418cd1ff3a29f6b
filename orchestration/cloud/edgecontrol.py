"""The edge controller (kubeedge.md §1.1, §1.3, §2.7): what each edge node gets, and what it
may send back.

Downstream: every pod bound to a connected node goes to that node, with exactly the
ConfigMaps and Secrets its pods reference (volumes, projected sources, env, envFrom, image
pull secrets) and nothing else; a ConfigMap or Secret that no pod on the node references any
longer is deleted there. Devices (``devices.kubeedge.io``) are bound the same way by their
``spec.nodeName`` and bring the DeviceModel they reference. Messages are KubeEdge's (``source:
edgecontroller``, group ``resource``, ``<ns>/<type>/<name>``, the object as content, its
resourceVersion in the header) and go through one ``NodeQueue`` per connected node, so each
node gets the newest version of each object, with a window of un-ACKed messages (one per
object); ACKs become ObjectSync records, and the sync loop repairs whatever a lost message or
a disconnect left behind (a node that connects gets a full resync at once).

Upstream (``handle``): ACKs; pod status (``podstatus``/``podpatch``), applied only to pods
bound to the sending node; queries for ConfigMaps and Secrets, answered only when a pod of
the node references them. Everything refused is logged and answered with ``error``.

Wiring: ``CloudHub(ctx, handler=lambda node, msg: controller.handle(node, msg))``, then
``EdgeController(client, hub)``; ``start()`` creates the ObjectSync CRDs if needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from ..apis import DEVICES as DEVICES_CRDS
from ..apis import load_crds
from ..client import (
    CONFIGMAPS,
    DEVICEMODELS,
    DEVICES,
    NODES,
    PODS,
    SECRETS,
    Client,
    ClientError,
    NotFoundError,
)
from ..protocol import (
    DELETE,
    ERROR,
    GROUP_RESOURCE,
    INSERT,
    PATCH,
    QUERY,
    RESPONSE,
    UPDATE,
    Message,
    MessageError,
    parse_resource,
    resource_path,
)
from .controlling import Informers, being_deleted, meta
from .delivery import NoAckQueue, NodeQueue, Verdict, is_delete, resource_version
from .installing import install_crds
from .objectsyncs import ObjectSyncs, SyncRecord, ensure_crds, parse_rv
from .sessions import ENVELOPED
from .syncloop import SyncLoop

log = logging.getLogger(__name__)

SOURCE = "edgecontroller"
POD, CONFIGMAP, SECRET = "pod", "configmap", "secret"
DEVICE, DEVICEMODEL = "device", "devicemodel"
_RESOURCES = {
    POD: PODS,
    CONFIGMAP: CONFIGMAPS,
    SECRET: SECRETS,
    DEVICE: DEVICES,
    DEVICEMODEL: DEVICEMODELS,
}
_TYPE_OF = {(res.api_version, res.kind): t for t, res in _RESOURCES.items()}
_BOUND = (POD, DEVICE)  # bound to a node by spec.nodeName; the rest go where they are used

Ref = tuple[str, str, str]  # (configmap|secret|devicemodel, namespace, name)
BoundKey = tuple[str, str, str]  # (pod|device, namespace, name)
NodeCallback = Callable[[str], Awaitable[None] | None]


class Hub(Protocol):
    """What the controller needs of ``CloudHub``."""

    @property
    def sessions(self) -> frozenset[str]: ...

    def on_connect(self, callback: NodeCallback) -> None: ...

    def on_disconnect(self, callback: NodeCallback) -> None: ...

    async def send(self, node: str, message: Message) -> None: ...

    async def disconnect(self, node: str, reason: str) -> None: ...


def pod_references(pod: dict[str, Any]) -> frozenset[Ref]:
    """The ConfigMaps and Secrets a pod needs on its node."""
    ns = meta(pod).get("namespace") or ""
    spec = pod.get("spec") or {}
    found: set[tuple[str, Any]] = set()
    for volume in spec.get("volumes") or []:
        found.add((CONFIGMAP, (volume.get("configMap") or {}).get("name")))
        found.add((SECRET, (volume.get("secret") or {}).get("secretName")))
        for source in (volume.get("projected") or {}).get("sources") or []:
            found.add((CONFIGMAP, (source.get("configMap") or {}).get("name")))
            found.add((SECRET, (source.get("secret") or {}).get("name")))
    containers = [
        *(spec.get("initContainers") or []),
        *(spec.get("containers") or []),
        *(spec.get("ephemeralContainers") or []),
    ]
    for container in containers:
        for env in container.get("env") or []:
            source = env.get("valueFrom") or {}
            found.add((CONFIGMAP, (source.get("configMapKeyRef") or {}).get("name")))
            found.add((SECRET, (source.get("secretKeyRef") or {}).get("name")))
        for env_from in container.get("envFrom") or []:
            found.add((CONFIGMAP, (env_from.get("configMapRef") or {}).get("name")))
            found.add((SECRET, (env_from.get("secretRef") or {}).get("name")))
    for pull in spec.get("imagePullSecrets") or []:
        found.add((SECRET, pull.get("name")))
    return frozenset((kind, ns, name) for kind, name in found if isinstance(name, str) and name)


def device_references(device: dict[str, Any]) -> frozenset[Ref]:
    """The DeviceModel a Device needs on its node."""
    name = ((device.get("spec") or {}).get("deviceModelRef") or {}).get("name")
    if not isinstance(name, str) or not name:
        return frozenset()
    return frozenset({(DEVICEMODEL, meta(device).get("namespace") or "", name)})


_REFERENCES = {POD: pod_references, DEVICE: device_references}
_VOLATILE = frozenset({"resourceVersion", "managedFields"})


def _status_only(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether ``new`` differs from ``old`` in status (and resourceVersion) alone."""

    def rest(obj: dict[str, Any]) -> dict[str, Any]:
        m = {k: v for k, v in meta(obj).items() if k not in _VOLATILE}
        return {**{k: v for k, v in obj.items() if k != "status"}, "metadata": m}

    return rest(old) == rest(new)


@dataclass(frozen=True, slots=True)
class _Placement:
    node: str
    refs: frozenset[Ref]


@dataclass(frozen=True, slots=True)
class _Link:
    queue: NodeQueue
    replies: NoAckQueue


class EdgeController:
    """``informers``: shared informers to register on (the caller starts them, after
    ``ensure_crds``); by default the controller makes and runs its own. ``sync_period``:
    seconds between sync loop passes; ``resend_interval``/``retry_backoff``: the per-node
    queue's (``NodeQueue``)."""

    def __init__(
        self,
        client: Client,
        hub: Hub,
        *,
        informers: Informers | None = None,
        sync_period: float = 5.0,
        resend_interval: float = 5.0,
        retry_backoff: tuple[float, float] = (5.0, 300.0),
        max_objects: int = 10_000,
        flush_delay: float = 0.05,
    ) -> None:
        self.client = client
        self.hub = hub
        self._own_informers = informers is None
        self.informers = informers if informers is not None else Informers(client)
        self._queue_options: dict[str, Any] = {
            "resend_interval": resend_interval,
            "retry_backoff": retry_backoff,
            "max_objects": max_objects,
            # The ObjectSync records are the memory of what was ACKed; the queue's own would
            # refuse a ConfigMap deleted from a node and later referenced there again.
            "remember": 0,
        }
        self.syncs = ObjectSyncs(client, self.informers, flush_delay=flush_delay)
        self.sync_loop = SyncLoop(self.syncs, self, period=sync_period)
        self.caches = {t: self.informers(res) for t, res in _RESOURCES.items()}
        for kind in _BOUND:
            self.caches[kind].on_event(functools.partial(self._on_bound, kind))
        for kind in (CONFIGMAP, SECRET, DEVICEMODEL):
            self.caches[kind].on_event(functools.partial(self._on_config, kind))
        self.informers(NODES).on_event(self._on_node)
        self._placed: dict[BoundKey, _Placement] = {}  # bound objects and what they reference
        self._node_bound: dict[str, set[BoundKey]] = {}
        self._node_refs: dict[str, dict[Ref, int]] = {}  # node -> ref -> pods using it
        self._ref_nodes: dict[Ref, set[str]] = {}
        self._links: dict[str, _Link] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._running = False
        hub.on_connect(self._connected)
        hub.on_disconnect(self._close)

    async def start(self) -> None:
        if self._running:
            return
        try:
            await ensure_crds(self.client)
            await install_crds(self.client, load_crds(DEVICES_CRDS))
            await self.informers.start()  # starts those not yet started, waits for their lists
            if removed := self.syncs.collect_garbage():
                log.info("removing %d ObjectSyncs of nodes that no longer exist", removed)
            await self.syncs.start()
            self._running = True
            for node in self.hub.sessions:  # connected before we were ready
                await self._open(node)
            await self.sync_loop.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        self._running = False
        await self.sync_loop.stop()
        for node in list(self._links):
            await self._close(node)
        tasks, self._tasks = list(self._tasks), set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.syncs.stop()
        if self._own_informers:
            await self.informers.stop()

    async def __aenter__(self) -> EdgeController:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- node sessions -------------------------------------------------------------------

    async def _connected(self, node: str) -> None:
        if self._running:
            await self._open(node)

    async def _open(self, node: str) -> None:
        await self._close(node)
        deliver = functools.partial(self.hub.send, node)
        queue = NodeQueue(
            deliver,
            acked_rv=functools.partial(self.syncs.acked_rv, node),
            on_acked=functools.partial(self._acked, node),
            name=node,
            **self._queue_options,
        )
        self._links[node] = _Link(queue, NoAckQueue(deliver, name=node))
        await queue.start()
        await self._links[node].replies.start()
        await self.sync_loop.check_node(node)  # a full resync: the queue drops what is ACKed

    async def _close(self, node: str) -> None:
        link = self._links.pop(node, None)
        if link is not None:  # what was queued is dropped; the ObjectSyncs remember
            await link.queue.close()
            await link.replies.close()

    # -- downstream ----------------------------------------------------------------------

    async def _send(
        self, node: str, kind: str, obj: dict[str, Any], *, delete: bool = False
    ) -> None:
        """Queue ``obj`` (or its deletion) for ``node`` if it is connected."""
        link = self._links.get(node)
        if link is None:
            return
        res, m = _RESOURCES[kind], meta(obj)
        obj.setdefault("apiVersion", res.api_version)
        obj.setdefault("kind", res.kind)
        uid = str(m.get("uid", ""))
        if delete:
            operation = DELETE
        else:
            operation = INSERT if self.syncs.acked_rv(node, uid) is None else UPDATE
        message = Message(
            source=SOURCE,
            group=GROUP_RESOURCE,
            operation=operation,
            resource=resource_path(m.get("namespace"), kind, str(m.get("name", ""))),
            content=obj,
            resource_version=str(m.get("resourceVersion") or ""),
        )
        verdict = await link.queue.enqueue(message, uid)
        if verdict is Verdict.OVERFLOW:
            log.warning("node %s: queue full, %s waits for the sync loop", node, message.resource)
        elif verdict in (Verdict.QUEUED, Verdict.REPLACED) and not is_delete(message):
            self.syncs.record_sent(node, obj)

    async def _acked(self, node: str, uid: str, message: Message) -> None:
        obj = message.content
        if not isinstance(obj, dict):
            return
        if not is_delete(message):
            self.syncs.record_ack(node, obj, resource_version(message) or 0)
            return
        self.syncs.record_deleted(node, obj)
        # A ConfigMap deleted there for want of users may have found a new one meanwhile.
        with contextlib.suppress(MessageError):
            _, kind, _ = parse_resource(message.resource)
            m = meta(obj)
            now = self._cached(kind, m.get("namespace"), str(m.get("name", "")))
            if now is not None and not being_deleted(now) and self._wanted(node, kind, now):
                await self._send(node, kind, now)

    async def _on_bound(
        self, kind: str, etype: str, obj: dict[str, Any], old: dict[str, Any] | None
    ) -> None:
        """A pod or a Device: it goes to the node its spec.nodeName names, after what it uses."""
        m = meta(obj)
        key: BoundKey = (kind, m.get("namespace") or "", str(m.get("name", "")))
        node = str((obj.get("spec") or {}).get("nodeName") or "")
        before = self._placed.pop(key, None)
        if etype == "MODIFIED" and before and old is not None and _status_only(old, obj):
            # The node reported this status itself: sending the object back would cost a
            # message, a write and an ACK per report (per twin report, for a Device).
            self._placed[key] = before
            self._status_changed(before.node, old, obj)
            return
        refs = _REFERENCES[kind](obj)
        after = _Placement(node, refs) if node and etype != "DELETED" else None
        # Count the new references before dropping the old: one kept never touches zero.
        gained = self._count(after, +1)
        lost = self._count(before, -1)
        if before is not None:
            self._place(before.node, key, add=False)
        if after is not None:
            self._placed[key] = after
            self._place(after.node, key, add=True)
        if before is not None and old is not None and meta(old).get("uid") != m.get("uid"):
            await self._send(before.node, kind, old, delete=True)  # replaced while unwatched
        if after is not None:
            for ref in gained:  # what it needs first, then the object
                await self._send_ref(after.node, ref)
            await self._send(after.node, kind, obj)
        elif before is not None:
            await self._send(before.node, kind, obj, delete=True)
        if before is not None:
            for ref in lost:
                used = self._cached(*ref)
                if used is not None:
                    await self._send(before.node, ref[0], used, delete=True)

    def _status_changed(self, node: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        """The node holds ``old``, which differs from ``new`` only in status: it is as good as
        ``new``, so its ObjectSync moves on with it (else the sync loop would resend it)."""
        link = self._links.get(node)
        uid = str(meta(new).get("uid", ""))
        if link is None or link.queue.pending(uid) is not None:
            return  # the sync loop (or the message on its way) brings the node up to date
        old_rv = parse_rv(meta(old).get("resourceVersion"))
        if old_rv and self.syncs.acked_rv(node, uid) == old_rv:
            self.syncs.record_ack(node, new, parse_rv(meta(new).get("resourceVersion")))

    def _count(self, placement: _Placement | None, delta: int) -> list[Ref]:
        """Count a pod's references on its node up or down; those that crossed zero."""
        if placement is None:
            return []
        node = placement.node
        counts = self._node_refs.setdefault(node, {})
        crossed = []
        for ref in placement.refs:
            n = counts.get(ref, 0) + delta
            if n > 0:
                counts[ref] = n
            else:
                counts.pop(ref, None)
            if delta > 0 and n == 1:
                self._ref_nodes.setdefault(ref, set()).add(node)
                crossed.append(ref)
            elif delta < 0 and n <= 0:
                users = self._ref_nodes.get(ref, set())
                users.discard(node)
                if not users:
                    self._ref_nodes.pop(ref, None)
                crossed.append(ref)
        if not counts:
            del self._node_refs[node]
        return crossed

    def _place(self, node: str, key: BoundKey, *, add: bool) -> None:
        bound = self._node_bound.setdefault(node, set())
        if add:
            bound.add(key)
        else:
            bound.discard(key)
            if not bound:
                del self._node_bound[node]

    async def _send_ref(self, node: str, ref: Ref) -> None:
        obj = self._cached(*ref)
        if obj is not None:  # not there yet: its creation will reach every user
            await self._send(node, ref[0], obj)

    async def _on_config(
        self, kind: str, etype: str, obj: dict[str, Any], old: dict[str, Any] | None
    ) -> None:
        m = meta(obj)
        ref: Ref = (kind, m.get("namespace") or "", str(m.get("name", "")))
        replaced = old is not None and meta(old).get("uid") != m.get("uid")
        for node in list(self._ref_nodes.get(ref, ())):
            if replaced and old is not None:
                await self._send(node, kind, old, delete=True)
            await self._send(node, kind, obj, delete=etype == "DELETED")

    async def _on_node(self, etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        name = str(meta(obj).get("name", ""))
        if etype == "DELETED" and self._running and name in self._links:
            # As KubeEdge: a deleted node loses its session, and its ObjectSyncs go (again,
            # now that no ACK can come in to record one).
            await self._close(name)
            self.syncs.forget_node(name)
            task = asyncio.create_task(self.hub.disconnect(name, "its Node was deleted"))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # -- what each node should have ------------------------------------------------------

    def _cached(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        cache = self.caches.get(kind)
        return cache.get(name, namespace) if cache is not None else None

    def _wanted(self, node: str, kind: str, obj: dict[str, Any]) -> bool:
        m = meta(obj)
        if kind in _BOUND:
            return bool((obj.get("spec") or {}).get("nodeName") == node)
        ref = (kind, m.get("namespace") or "", str(m.get("name", "")))
        return self._node_refs.get(node, {}).get(ref, 0) > 0

    def _desired(self, node: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """What the node should hold: what is referenced (ConfigMaps, Secrets, DeviceModels),
        then pods and Devices."""
        for (kind, ns, name), count in list(self._node_refs.get(node, {}).items()):
            obj = self._cached(kind, ns, name) if count > 0 else None
            if obj is not None:
                yield kind, obj
        for kind, ns, name in list(self._node_bound.get(node, ())):
            bound = self._cached(kind, ns, name)
            if bound is not None:
                yield kind, bound

    # SyncTarget, for the sync loop

    def connected_nodes(self) -> Iterable[str]:
        return list(self._links)

    def manages(self, record: SyncRecord) -> bool:
        return (record.api_version, record.kind) in _TYPE_OF

    def current(self, node: str, record: SyncRecord) -> dict[str, Any] | None:
        kind = _TYPE_OF[record.api_version, record.kind]
        obj = self._cached(kind, record.namespace, record.name)
        return obj if obj is not None and self._wanted(node, kind, obj) else None

    async def resend(self, node: str, record: SyncRecord, obj: dict[str, Any] | None) -> None:
        link = self._links.get(node)
        if link is None or link.queue.pending(record.uid) is not None:
            return  # on its way already
        kind = _TYPE_OF[record.api_version, record.kind]
        await self._send(node, kind, obj or record.stub(), delete=obj is None)

    async def send_unsynced(self, node: str) -> None:
        link = self._links.get(node)
        if link is None:
            return
        for kind, obj in self._desired(node):
            uid = str(meta(obj).get("uid", ""))
            if being_deleted(obj) or link.queue.pending(uid) is not None:
                continue  # a terminating object is sent by its events, not resent forever
            if self.syncs.acked_rv(node, uid) is None:
                await self._send(node, kind, obj)

    # -- upstream ------------------------------------------------------------------------

    async def handle(self, node: str, message: Message) -> None:
        """An upstream message from ``node`` (give this to ``CloudHub`` as its handler)."""
        if message.operation == RESPONSE:
            link = self._links.get(node)
            if link is None or not link.queue.ack(message):
                log.debug(
                    "node %s: response to %s matches nothing in flight", node, message.resource
                )
            return
        if message.operation == ERROR:
            log.warning(
                "node %s reports an error on %s: %s", node, message.resource, message.content
            )
            return
        try:
            ns, kind, name = parse_resource(message.resource)
        except MessageError as exc:
            await self._reply(node, message.error(f"bad request: {exc}", source=SOURCE))
            return
        if message.group != GROUP_RESOURCE or not ns or not name:
            reply = message.error(f"not supported: {message.operation} {message.resource}")
        elif kind in ("podstatus", "podpatch") and message.operation in (UPDATE, PATCH):
            reply = await self._pod_status(node, message, ns, name, kind)
        elif kind in (CONFIGMAP, SECRET) and message.operation == QUERY:
            reply = await self._query(node, message, kind, ns, name)
        else:
            reply = message.error(f"not supported: {message.operation} {message.resource}")
        reply.source = SOURCE
        await self._reply(node, reply)

    async def _pod_status(
        self, node: str, message: Message, ns: str, name: str, kind: str
    ) -> Message:
        pod = self._cached(POD, ns, name)
        if pod is None:
            try:
                pod = await self.client.get(PODS, name, ns)
            except NotFoundError:
                return message.error(f"not found: pod {ns}/{name}")
        bound = (pod.get("spec") or {}).get("nodeName")
        if bound != node:
            log.warning(
                "refused: node %s may not update the status of pod %s/%s (bound to %r)",
                node,
                ns,
                name,
                bound,
            )
            return message.error(f"forbidden: node {node} may not update pod {ns}/{name}")
        content = message.content
        status = content.get("status") if isinstance(content, dict) else None
        status = status if isinstance(status, dict) else content
        if not isinstance(status, dict):
            return message.error("bad request: the content must be a pod status")
        # The uid pins the pod the node knows: a new pod of the same name is not its to touch.
        body = {"metadata": {"uid": meta(pod).get("uid")}, "status": status}
        try:
            updated = await self.client.patch(
                PODS,
                name,
                body,
                ns,
                patch_type="strategic" if kind == "podpatch" else "merge",
                subresource="status",
            )
        except ClientError as exc:
            return message.error(f"{exc.reason}: {exc.message}")
        return message.response(updated)

    async def _query(self, node: str, message: Message, kind: str, ns: str, name: str) -> Message:
        if node not in self._ref_nodes.get((kind, ns, name), ()):
            log.warning(
                "refused: node %s asked for %s %s/%s, which none of its pods use",
                node,
                kind,
                ns,
                name,
            )
            return message.error(f"forbidden: no pod on node {node} references {kind} {ns}/{name}")
        obj = self._cached(kind, ns, name)
        if obj is None:
            try:
                obj = await self.client.get(_RESOURCES[kind], name, ns)
            except NotFoundError:
                return message.error(f"not found: {kind} {ns}/{name}")
        reply = message.response(obj)
        reply.resource_version = str(meta(obj).get("resourceVersion") or "")
        return reply

    async def _reply(self, node: str, reply: Message) -> None:
        if ENVELOPED.get():  # its answer is the envelope's ACK
            if reply.operation == ERROR:
                log.warning("node %s: refused %s: %s", node, reply.resource, reply.content)
            return
        link = self._links.get(node)
        if link is not None:
            link.replies.enqueue(reply)
            return
        with contextlib.suppress(ConnectionError):
            await self.hub.send(node, reply)
