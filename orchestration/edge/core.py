"""EdgeCore: one edge node's parts put together (kubeedge.md §1.2, §3).

Downstream, the cloud's ``resource`` messages go to MetaManager, and its ACK goes back only
after the write committed (many written at once, answered in arrival order: ``Applier``);
each committed pod (bound to this node) is then handed to the process runtime, a deleted one
killed, and a changed ConfigMap or Secret re-syncs the pods that use it.

Upstream, pod statuses, node status, Lease renewals, twin and extension reports go through
the node's store-and-forward spool (``protocol.syncing``): committed before they count as
sent, coalesced per object, so going offline (or restarting while offline) loses only
superseded reports, drained by priority class when the link is up, each kept until the cloud
acknowledges its ``(node, seq)`` and sent again after a reconnect or ``ack_timeout`` without
an ACK; the cloud applies each once. They travel as envelopes in binary frames, the message
inside unchanged. On start the pods in MetaManager are handed to the runtime, which adopts
their still-running processes: the node keeps working with no cloud at all (edge autonomy).

Upstream message shapes (all ``group: resource``):

* ``insert null/node/<node>`` (source ``edged``): the Node object, once per EdgeCore start.
* ``patch null/nodestatus/<node>`` (source ``edged``): ``{"status": NodeStatus}`` (a merge
  patch of ``nodes/<node>/status``), every ``status_interval``.
* ``update kube-node-lease/lease/<node>`` (source ``edged``): the Lease with a new
  ``spec.renewTime``, every ``status_interval``.
* ``update <ns>/podstatus/<pod>`` (source ``edged``):
  ``{"metadata": {name, namespace, uid}, "status": PodStatus}``.
* Each travels in an envelope (topic ``message``) and is answered by the envelope's ACK (a
  refusal is logged by the cloud: sending it again would not help).
* MetaServer writes, forwarded while online (source ``metaserver``): operation ``insert``
  (POST), ``update`` (PUT), ``patch`` (PATCH) or ``delete`` (DELETE), resource
  ``<ns>/<type>/<name>`` as far as the path names them, content ``{"method", "path",
  "query", "contentType", "body"}`` (body the request text). The cloud answers with a message
  whose ``parent_msg_id`` is the request's ``msg_id``: ``response`` with content
  ``{"code": int, "body": object}`` (or the bare object, meaning 200), or ``error`` with a
  reason string (``not found: ...`` → 404, ``forbidden: ...`` → 403, ``bad request: ...`` →
  400, else 500).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..protocol import (
    BUILTIN_SOURCES,
    ERROR,
    GROUP_RESOURCE,
    GROUP_USER,
    INSERT,
    PATCH,
    RESPONSE,
    UPDATE,
    Message,
    MessageError,
    parse_resource,
)
from ..protocol.envelopes import Priority
from ..protocol.syncing import MESSAGE_TOPIC, SyncEndpoint, pump
from ..protocol.transfers import Manifest
from ..store import SQLiteStore
from .applying import Applier
from .devices import DEFAULT_MQTT_PORT, Devices
from .extensions import (
    BlobCallback,
    EdgeContext,
    EdgeExtension,
    EdgeExtensionFactory,
    outbox_key,
)
from .forwarding import CloudForwarder
from .hub import EdgeHub, NotConnected, events_url
from .joining import CertificateRotator, NodeCredentials
from .metamanager import MetaManager, load_or_create_key
from .metaserver import DEFAULT_PORT, MetaServer
from .nodestatus import LEASE_NAMESPACE, lease_object, node_object, node_status
from .podlogs import PodLogServer
from .runtime import CONFIGMAP, SECRET, BackoffPolicy, ImageSpec, ProcessRuntime

__all__ = ["EdgeCore"]

log = logging.getLogger(__name__)

SOURCE = "edged"
DEVICE_KINDS = frozenset({"device", "devicemodel"})


class EdgeCore:
    """One edge node, run from ``data_dir`` (holding the join's ca.crt, node.crt, node.key).

    ``cloud_url`` is CloudHub's ``wss://HOST:PORT`` (the KubeEdge events path is added when
    it has none); ``join_address`` (``HOST:PORT`` of the join endpoint) enables certificate
    rotation. ``stop()`` leaves the pods running for the next EdgeCore to adopt;
    ``shutdown()`` stops them first. ``extensions``: factories of what layers above run
    inside the node (see :mod:`.extensions`), built at each start and listed in
    ``extensions`` while it runs.
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        cloud_url: str,
        node_name: str | None = None,
        metaserver_port: int = DEFAULT_PORT,
        heartbeat: float = 15.0,
        status_interval: float = 10.0,
        images: Mapping[str, ImageSpec] | None = None,
        backoff: BackoffPolicy | None = None,
        reconnect_backoff: tuple[float, float] = (1.0, 30.0),
        join_address: str | None = None,
        forward_timeout: float = 30.0,
        ack_timeout: float = 10.0,
        spool_quota: int | None = 1024**3,
        sync_window: int = 1024 * 1024,
        mqtt_port: int = DEFAULT_MQTT_PORT,
        mqtt_broker: str | None = None,
        dmi_socket: Path | str | None = None,
        extensions: Iterable[EdgeExtensionFactory] = (),
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.credentials = NodeCredentials.load(self.data_dir)
        if node_name is not None and node_name != self.credentials.node_name:
            raise ValueError(
                f"{self.data_dir} holds the credentials of node {self.credentials.node_name!r}, "
                f"not {node_name!r}"
            )
        self.node_name = self.credentials.node_name
        self.cloud_url = _events_url(cloud_url, self.node_name)
        self._metaserver_port = metaserver_port
        self._heartbeat = heartbeat
        self._status_interval = status_interval
        self._reconnect_backoff = reconnect_backoff
        self._join_address = join_address
        self._ack_timeout = ack_timeout
        self._spool_quota = spool_quota
        self._sync_window = sync_window
        self.store = SQLiteStore(str(self.data_dir / "edge.db"))
        self.meta = MetaManager(
            self.store, secret_key=load_or_create_key(self.data_dir / "secrets.key")
        )
        self.runtime = ProcessRuntime(self.data_dir / "runtime", images=images, backoff=backoff)
        self.sync: SyncEndpoint | None = None
        self._registration: int | None = None  # the seq of the node's registration
        self._blob_listeners: list[BlobCallback] = []
        self.hub = EdgeHub(
            self.cloud_url,
            self._ssl_context,
            self.node_name,
            handler=self._downstream,
            heartbeat=heartbeat,
            reconnect_backoff=reconnect_backoff,
            frames=self._frame,
        )
        self.forwarder = CloudForwarder(self.hub, timeout=forward_timeout)
        self.pods = PodSyncer(self.meta, self.runtime, self.node_name)
        self.applier = Applier(self._store, self._stored)
        self.devices = Devices(
            self.store,
            self.node_name,
            upstream=self._device_report,
            dmi_socket=dmi_socket if dmi_socket is not None else self.data_dir / "dmi.sock",
            mqtt_port=mqtt_port,
            mqtt_broker=mqtt_broker,
        )
        self.podlogs = PodLogServer(self.runtime, self.hub.send)
        self.metaserver = MetaServer(
            self.meta,
            port=metaserver_port,
            forward=self.forwarder,
            connected=lambda: self.hub.connected,
            forward_timeout=forward_timeout,
        )
        self._extension_factories = list(extensions)  # built anew at each start
        self.extensions: list[EdgeExtension] = []
        self._rotator: CertificateRotator | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._registered = False
        self._started = False
        self._stopping = False

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._stopping = False
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        log.info(
            "edge node %s: MetaServer at %s, cloud %s",
            self.node_name,
            self.metaserver.url,
            self.cloud_url,
        )

    async def _start(self) -> None:
        sync = self.sync = SyncEndpoint(
            self.node_name,
            self.data_dir / "sync",
            resend_after=self._ack_timeout,
            quota_bytes=self._spool_quota,
            on_activated=self._blob_activated,
        )
        await self.store.start()
        self.runtime.on_status_change(self._pod_status_changed)
        await self.runtime.start()  # adopts the processes a previous EdgeCore left running
        await self.pods.restore()
        await self.devices.start()
        await self.applier.start()
        await self.metaserver.start()
        self.hub.on_connection(self._connection_changed)
        await self.hub.start()
        self._tasks = [
            asyncio.create_task(self._flush_loop(), name="edgecore-sync"),
            asyncio.create_task(self._status_loop(), name="edgecore-nodestatus"),
        ]
        if self._join_address is not None:
            self._rotator = CertificateRotator(
                self.credentials, self._join_address, on_rotated=self._rotated
            )
            self._rotator.start()
        # Last: an extension may report at once, and its reports need the outbox and link.
        context = EdgeContext(
            self.node_name,
            self.data_dir,
            self._report,
            asyncio.get_running_loop(),
            self._blob_listeners.append,
            sync.receiver.directory / "blobs",
        )
        for factory in self._extension_factories:
            extension = factory(context)
            self.extensions.append(extension)  # listed before start: stop() stops it too
            await extension.start()

    async def stop(self) -> None:
        """Stop everything but the pods: their processes keep running (edge autonomy)."""
        if not self._started:
            return
        self._started = False
        extensions, self.extensions = self.extensions, []
        for extension in reversed(extensions):  # first: they may still report
            try:
                await extension.stop()
            except Exception:
                log.exception("edge node %s: an extension failed to stop", self.node_name)
        self._blob_listeners.clear()  # the next start's extensions register their own
        if self._rotator is not None:
            await self._rotator.stop()
        await self.hub.stop()
        await self.applier.stop()
        self.forwarder.fail_all()
        await self.podlogs.stop()
        await self.metaserver.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.pods.stop()
        await self.devices.stop()
        await self.runtime.close()
        await self.store.close()
        if self.sync is not None:
            self.sync.close()
            self.sync = None

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop every pod, then EdgeCore."""
        if self._started:
            self._stopping = True
            await self.applier.stop()  # nothing from the cloud starts a pod from here on
            await self.pods.stop()
            await self.runtime.shutdown_all(grace)
        await self.stop()

    async def __aenter__(self) -> EdgeCore:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def connected(self) -> bool:
        return self.hub.connected

    def _ssl_context(self) -> ssl.SSLContext:
        # Read at each dial: a rotated certificate is used from the next connection on.
        rotator = self._rotator
        creds = rotator.credentials if rotator is not None else self.credentials
        return creds.ssl_context()

    async def _rotated(self, creds: NodeCredentials) -> None:
        self.credentials = creds
        await self.hub.reconnect()

    # -- downstream ----------------------------------------------------------------------

    async def _downstream(self, message: Message) -> None:
        if self.forwarder.resolve(message):
            return  # the cloud's answer to a forwarded MetaServer write
        if self.podlogs.handle(message):
            return  # a kubectl logs stream (its own task)
        if message.operation in (RESPONSE, ERROR):
            # Reports are answered by envelope ACKs; a stray answer (an older cloud's, or
            # one to a message since superseded) is nothing to apply.
            if message.operation == ERROR:
                log.warning("the cloud refused %s: %s", message.resource, message.content)
            return
        if message.group == GROUP_USER:
            await self._routed(message)
            return
        if message.group != GROUP_RESOURCE:
            log.debug("ignored %s message %s", message.group, message.resource)
            return
        if self._stopping:
            return  # not ACKed: the cloud sends it again when the node is back
        await self.applier.submit(message)

    async def _routed(self, message: Message) -> None:
        """The cloud router: ``publish`` on ``node/<node>/<topic>``, ``subscribe`` with the
        node's list of topics to send up."""
        prefix = f"node/{self.node_name}/"
        if not message.resource.startswith(prefix):
            log.warning("ignored a router message for %s", message.resource[:256])
            return
        if message.operation == "publish" and isinstance(message.content, str):
            await self.devices.publish(message.resource[len(prefix) :], message.content)
        elif message.operation == "subscribe" and isinstance(message.content, list):
            await self.devices.forward(message.content)
        else:
            log.warning("ignored router message %s %s", message.operation, message.resource)

    async def _store(self, message: Message) -> tuple[dict[str, Any] | None, Message | None]:
        before = await self.pods.before(message)
        return before, await self.meta.handle(message)  # returns once the write has committed

    async def _stored(
        self, message: Message, result: tuple[dict[str, Any] | None, Message | None]
    ) -> None:
        before, reply = result
        if reply is None:
            return
        with contextlib.suppress(NotConnected):
            await self.hub.send(reply)  # no ACK on a lost link: the cloud resends
        if reply.operation == ERROR:
            return
        await self.pods.after(message, before)
        try:
            namespace, kind, name = parse_resource(message.resource)
        except MessageError:
            return
        if kind in DEVICE_KINDS and namespace is not None:
            obj = await self.meta.get(namespace, kind, name)
            await self.devices.changed(kind, namespace, name, obj)

    def _blob_activated(self, manifest: Manifest) -> None:
        assert self.sync is not None
        path = self.sync.receiver.blob_path(manifest.name, manifest.version)
        log.info("edge node %s: %s verified and active", self.node_name, manifest.key)
        for callback in list(self._blob_listeners):
            try:
                callback(manifest.name, manifest.version, path)
            except Exception:
                log.exception("a blob callback failed on %s", manifest.key)

    async def _frame(self, data: bytes) -> None:
        """A store-and-forward envelope from the cloud: ACKs for the spool, blobs, control."""
        if self.sync is None:
            return
        self.sync.incoming_frame(data, time.time())
        if self._registration is not None and self._registration not in self.sync.spool:
            self._registration = None
            self._registered = True
        self._wake.set()  # ACKs free the window; receipts want acknowledging

    # -- upstream ------------------------------------------------------------------------

    def _enqueue(
        self,
        key: str,
        message: Message,
        *,
        first: bool = False,
        priority: Priority = Priority.STATUS,
        ttl: float | None = None,
        coalesce: bool = True,
    ) -> int | None:
        """Spool ``message`` for the cloud (committed before this returns). ``first``: the
        node's registration, which later status patches depend on, goes as control."""
        if self.sync is None:
            return None
        seq = self.sync.send(
            MESSAGE_TOPIC,
            message.encode(),
            priority=Priority.CONTROL if first else priority,
            now=time.time(),
            key=key if coalesce else "",
            ttl=ttl,
        )
        self._wake.set()
        return seq

    def _device_report(self, key: str, message: Message) -> None:
        """A twin's report: kept per key, like a status."""
        self._enqueue(key, message)

    def _report(
        self,
        key: str,
        source: str,
        content: dict[str, Any],
        *,
        priority: Priority = Priority.STATUS,
        ttl: float | None = None,
        coalesce: bool = True,
    ) -> None:
        """``EdgeContext.report``: an extension's report, through the spool."""
        if source in BUILTIN_SOURCES:
            raise ValueError(f"source {source!r} is EdgeCore's own")
        message = Message(source, GROUP_RESOURCE, UPDATE, key, content)
        self._enqueue(outbox_key(key), message, priority=priority, ttl=ttl, coalesce=coalesce)

    def _pod_status_changed(self, uid: str, status: dict[str, Any]) -> None:
        meta = self.pods.identity(uid)
        if meta is None:
            return
        resource = f"{meta['namespace']}/podstatus/{meta['name']}"
        content = {"metadata": meta, "status": status}
        self._enqueue(resource, Message(SOURCE, GROUP_RESOURCE, UPDATE, resource, content))

    def _connection_changed(self, connected: bool) -> None:
        if not connected:
            self.podlogs.cancel_all()  # the cloud ended these streams when the link dropped
        if self.sync is not None:
            # Down: what the lost link carried may not have arrived, it goes again.
            (self.sync.link_up if connected else self.sync.link_down)()
        if connected and not self._registered and self._registration is None:
            resource = f"null/node/{self.node_name}"
            node = node_object(self.node_name)
            self._registration = self._enqueue(
                resource, Message(SOURCE, GROUP_RESOURCE, INSERT, resource, node), first=True
            )
        self._wake.set()

    async def _status_loop(self) -> None:
        while True:
            status = f"null/nodestatus/{self.node_name}"
            body = {"status": node_status(self.node_name)}
            self._enqueue(status, Message(SOURCE, GROUP_RESOURCE, PATCH, status, body))
            lease = f"{LEASE_NAMESPACE}/lease/{self.node_name}"
            obj = lease_object(self.node_name)
            self._enqueue(lease, Message(SOURCE, GROUP_RESOURCE, UPDATE, lease, obj))
            await asyncio.sleep(self._status_interval)

    async def _flush_loop(self) -> None:
        """While the link is up, drain the spool within the flow window (what is not
        acknowledged within ``ack_timeout`` goes again); wait for the next link when it drops."""
        while True:
            await self._wake.wait()
            if not self.hub.connected or self.sync is None:
                self._wake.clear()
                continue  # woken again by the next connect
            await pump(
                self.sync,
                self.hub.send,
                self._wake,
                window=self._sync_window,
                clock=time.time,
                resend_after=self._ack_timeout,
            )


def _events_url(url: str, node_name: str) -> str:
    parts = urlsplit(url if "://" in url else f"wss://{url}")
    if parts.path in ("", "/"):
        return events_url(parts.netloc, node_name)
    return url


class PodSyncer:
    """Keeps the runtime's pods what MetaManager says this node should run."""

    def __init__(self, meta: MetaManager, runtime: ProcessRuntime, node_name: str) -> None:
        self._meta = meta
        self._runtime = runtime
        self._node = node_name
        self._identities: dict[str, dict[str, str]] = {}
        self._kills: set[asyncio.Task[None]] = set()

    def identity(self, uid: str) -> dict[str, str] | None:
        """``{name, namespace, uid}`` of a pod this node runs (or is stopping)."""
        return self._identities.get(uid)

    async def resolve(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._meta.get(namespace, kind.lower(), name)

    async def restore(self) -> None:
        """Hand the runtime every stored pod (it adopts those already running) and stop the
        ones no longer stored (deleted while the previous EdgeCore was stopping)."""
        pods = await self._meta.pods_for_node(self._node)
        wanted = {_uid(p) for p in pods}
        for uid in set(self._runtime.running_pods()) - wanted:
            self._kill(uid)
        for pod in pods:
            await self._apply(pod)

    async def before(self, message: Message) -> dict[str, Any] | None:
        """The stored pod a downstream message is about to change, if it is about a pod."""
        with contextlib.suppress(Exception):  # a malformed resource: MetaManager refuses it
            namespace, kind, name = parse_resource(message.resource)
            if kind == "pod" and name:
                return await self._meta.get(namespace, kind, name)
        return None

    async def after(self, message: Message, before: dict[str, Any] | None) -> None:
        """Drive the runtime from what a committed downstream write changed."""
        try:
            namespace, kind, name = parse_resource(message.resource)
        except ValueError:
            return
        if kind == "pod":
            now = await self._meta.get(namespace, kind, name)
            if before is not None and (now is None or _uid(now) != _uid(before)):
                self._kill(_uid(before))  # deleted, or replaced by a new pod of that name
            if now is not None:
                await self._apply(now)
        elif kind in ("configmap", "secret") and namespace is not None:
            ref_kind = CONFIGMAP if kind == "configmap" else SECRET
            for uid, pod in self._runtime.running_pods().items():
                meta = pod.get("metadata") or {}
                if meta.get("namespace") == namespace and _references(pod, ref_kind, name):
                    current = await self._meta.get(namespace, "pod", str(meta.get("name")))
                    if current is not None and _uid(current) == uid:
                        await self._apply(current)

    async def _apply(self, pod: dict[str, Any]) -> None:
        uid = _uid(pod)
        spec = pod.get("spec") or {}
        meta = pod.get("metadata") or {}
        if spec.get("nodeName") not in (None, self._node) or meta.get("deletionTimestamp"):
            if uid in self._runtime.running_pods():
                self._kill(uid)
            return
        self._identities[uid] = {
            "name": str(meta.get("name")),
            "namespace": str(meta.get("namespace") or "default"),
            "uid": uid,
        }
        await self._runtime.sync_pod(pod, self.resolve)

    def _kill(self, uid: str) -> None:
        # In the background: a graceful stop takes up to the pod's grace period, and the
        # hub's read loop (which called us) must keep reading meanwhile.
        async def kill() -> None:
            try:
                await self._runtime.kill_pod(uid)
            finally:
                self._identities.pop(uid, None)

        task = asyncio.create_task(kill(), name=f"kill-pod-{uid}")
        self._kills.add(task)
        task.add_done_callback(self._kills.discard)

    async def stop(self) -> None:
        for task in self._kills:
            task.cancel()
        await asyncio.gather(*self._kills, return_exceptions=True)
        self._kills.clear()


def _uid(pod: dict[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("uid") or "")


def _references(pod: dict[str, Any], kind: str, name: str) -> bool:
    """Whether the pod's volumes or containers' env use the named ConfigMap or Secret."""
    spec = pod.get("spec") or {}
    if kind == CONFIGMAP:
        vol_keys, ref_keys, from_key = [("configMap", "name")], ("configMapKeyRef",), "configMapRef"
    else:
        vol_keys, ref_keys, from_key = (
            [("secret", "secretName"), ("secret", "name")],
            ("secretKeyRef",),
            "secretRef",
        )
    for volume in spec.get("volumes") or []:
        sources = [volume, *((volume.get("projected") or {}).get("sources") or [])]
        for source in sources:
            for field, key in vol_keys:
                if (source.get(field) or {}).get(key) == name:
                    return True
    for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        for env in c.get("env") or []:
            value_from = env.get("valueFrom") or {}
            if any((value_from.get(k) or {}).get("name") == name for k in ref_keys):
                return True
        for env_from in c.get("envFrom") or []:
            if (env_from.get(from_key) or {}).get("name") == name:
                return True
    return False
