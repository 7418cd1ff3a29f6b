"""What the cloud's controllers share: a work queue, a controller base, shared informers,
object helpers (selectors, owner references, adoption) and the ``ControllerManager``.

Controllers speak only the ``Client`` interface, so the same code runs against our API server
in-process (``LocalClient``) or against any Kubernetes cluster (``KubeClient``).
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable, Hashable, Iterable
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from ..client import Client, ClientError, ConflictError, Informer, NotFoundError, Resource

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

# Not among the client's well-known resources, but the controllers delete and watch them.
SERVICES = Resource("", "v1", "services", "Service")


class QueueShutDown(Exception):
    """``WorkQueue.get`` after ``shutdown``."""


class WorkQueue(Generic[K]):
    """client-go's rate-limited work queue, in asyncio.

    A key queued twice is processed once; a key is never processed by two workers at once
    (re-added while in progress, it is queued again when ``done``); failures back off
    exponentially per key until ``forget``.
    """

    def __init__(self, *, base_delay: float = 0.01, max_delay: float = 30.0) -> None:
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._queue: collections.deque[K] = collections.deque()
        self._dirty: set[K] = set()
        self._processing: set[K] = set()
        self._failures: dict[K, int] = {}
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._shutdown = False

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, key: K) -> None:
        if self._shutdown or key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._queue.append(key)
            self._wake()

    def add_after(self, key: K, delay: float) -> None:
        if self._shutdown:
            return
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        timer = self._timers.get(key)
        if timer is not None:
            if timer.when() <= when:
                return  # an earlier wake-up is already due
            timer.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def add_rate_limited(self, key: K) -> None:
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        self.add_after(key, min(self.base_delay * 2**failures, self.max_delay))

    def forget(self, key: K) -> None:
        self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    async def get(self) -> K:
        while not self._queue:
            if self._shutdown:
                raise QueueShutDown
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken and cancelled at once: pass the wake-up on
                raise
        key = self._queue.popleft()
        self._dirty.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._queue.append(key)
            self._wake()

    def shutdown(self) -> None:
        self._shutdown = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


class NamespaceIndex:
    """The names an informer holds per namespace: a controller reads one namespace's objects
    without copying the whole cache."""

    def __init__(self, informer: Informer) -> None:
        self.informer = informer
        self._names: dict[str, set[str]] = collections.defaultdict(set)
        informer.on_event(self._on_event)

    async def _on_event(self, etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        m = meta(obj)
        ns, name = m.get("namespace") or "", m.get("name", "")
        if etype == "DELETED":
            names = self._names.get(ns)
            if names is not None:
                names.discard(name)
                if not names:
                    del self._names[ns]
        else:
            self._names[ns].add(name)

    def items(self, namespace: str) -> list[dict[str, Any]]:
        found = (self.informer.get(n, namespace or None) for n in self._names.get(namespace, ()))
        return [obj for obj in found if obj is not None]


class Informers:
    """One informer per resource (all namespaces), shared by every controller."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._informers: dict[Resource, Informer] = {}
        self._indexes: dict[Resource, NamespaceIndex] = {}

    def __call__(self, res: Resource) -> Informer:
        """The informer of ``res``, made (not started) on first use: register handlers now."""
        informer = self._informers.get(res)
        if informer is None:
            informer = self._informers[res] = Informer(self.client, res)
        return informer

    def index(self, res: Resource) -> NamespaceIndex:
        """The shared per-namespace index of ``res`` (registered before other handlers that
        are added after this call, so they see it current)."""
        index = self._indexes.get(res)
        if index is None:
            index = self._indexes[res] = NamespaceIndex(self(res))
        return index

    def __contains__(self, res: Resource) -> bool:
        return res in self._informers

    async def start(self) -> None:
        """Start every informer not yet started and wait until all have listed."""
        informers = list(self._informers.values())
        for informer in informers:
            await informer.start()
        for informer in informers:
            await informer.wait_synced()

    async def discard(self, res: Resource) -> Informer | None:
        informer = self._informers.pop(res, None)
        self._indexes.pop(res, None)
        if informer is not None:
            await informer.stop()
        return informer

    async def stop(self) -> None:
        informers, self._informers = list(self._informers.values()), {}
        self._indexes.clear()
        await asyncio.gather(*(i.stop() for i in informers), return_exceptions=True)


class Controller(abc.ABC, Generic[K]):
    """A level-triggered controller: informer handlers enqueue keys, workers reconcile them.

    ``reconcile`` returns None when done, or seconds after which to look again; an exception
    retries the key with back-off. Every ``resync`` seconds every key is queued again.
    The constructor registers handlers: build every controller before starting informers.
    """

    name = "controller"

    def __init__(
        self,
        client: Client,
        informers: Informers,
        *,
        workers: int = 2,
        resync: float | None = 300.0,
    ) -> None:
        self.client = client
        self.informers = informers
        self.workers = workers
        self.resync = resync
        self.queue: WorkQueue[K] = WorkQueue()
        self._tasks: list[asyncio.Task[None]] = []

    @abc.abstractmethod
    def keys(self) -> Iterable[K]:
        """Every key the controller is responsible for (queued at start and each resync)."""

    @abc.abstractmethod
    async def reconcile(self, key: K) -> float | None: ...

    def enqueue(self, key: K) -> None:
        self.queue.add(key)

    async def start(self) -> None:
        if self._tasks:
            return
        for key in self.keys():
            self.enqueue(key)
        self._tasks = [
            asyncio.create_task(self._work(), name=f"{self.name} worker {i}")
            for i in range(self.workers)
        ]
        if self.resync:
            self._tasks.append(
                asyncio.create_task(self._resync(self.resync), name=f"{self.name} resync")
            )

    async def stop(self) -> None:
        self.queue.shutdown()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _resync(self, period: float) -> None:
        while True:
            await asyncio.sleep(period)
            for key in self.keys():
                self.enqueue(key)

    async def _work(self) -> None:
        while True:
            try:
                key = await self.queue.get()
            except QueueShutDown:
                return
            try:
                after = await self.reconcile(key)
            except ConflictError as exc:
                # A stale read lost a race: normal, retried once the caches catch up.
                log.debug("%s %s: %s; retrying", self.name, key, exc)
                self.queue.add_rate_limited(key)
            except Exception as exc:
                log.warning(
                    "%s %s failed (attempt %d): %s",
                    self.name,
                    key,
                    self.queue.failures(key) + 1,
                    exc,
                    exc_info=not isinstance(exc, ClientError),
                )
                self.queue.add_rate_limited(key)
            else:
                self.queue.forget(key)
                if after is not None:
                    self.queue.add_after(key, after)
            finally:
                self.queue.done(key)


# --- object helpers --------------------------------------------------------------------------


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> float:
    """Seconds since the epoch of an RFC 3339 timestamp; 0 when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return 0.0
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def meta(obj: dict[str, Any]) -> dict[str, Any]:
    m = obj.get("metadata")
    return m if isinstance(m, dict) else {}


def being_deleted(obj: dict[str, Any]) -> bool:
    return bool(meta(obj).get("deletionTimestamp"))


def selector_matches(selector: dict[str, Any] | None, labels: dict[str, Any] | None) -> bool:
    """A LabelSelector (``matchLabels``/``matchExpressions``) against labels. A missing or
    empty selector selects nothing: controllers must never claim every object."""
    if not selector or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        return False
    labels = labels or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In":
            ok = key in labels and labels[key] in values
        elif op == "NotIn":
            ok = key not in labels or labels[key] not in values
        elif op == "Exists":
            ok = key in labels
        elif op == "DoesNotExist":
            ok = key not in labels
        else:
            return False  # an unknown operator selects nothing, as the API would refuse it
        if not ok:
            return False
    return True


def controller_ref(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    """The owner reference marked ``controller: true``, if any."""
    if obj is None:
        return None
    for ref in meta(obj).get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None


def owner_reference(owner: dict[str, Any], res: Resource) -> dict[str, Any]:
    """A controller reference to ``owner`` that blocks its foreground deletion."""
    return {
        "apiVersion": res.api_version,
        "kind": res.kind,
        "name": meta(owner)["name"],
        "uid": meta(owner)["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def refers_to(ref: dict[str, Any] | None, res: Resource) -> bool:
    """Whether an owner reference names a ``res`` kind (any version of its group)."""
    if ref is None or ref.get("kind") != res.kind:
        return False
    group = str(ref.get("apiVersion", "")).rpartition("/")[0]
    return group == res.group


def crd_resource(crd: dict[str, Any]) -> Resource | None:
    """The resource a CustomResourceDefinition serves (its storage version when served, else
    its first served one); None if it serves none."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    served = [v for v in spec.get("versions") or [] if v.get("served", True) and v.get("name")]
    if not served or not spec.get("group") or not names.get("plural") or not names.get("kind"):
        return None
    version = next((v for v in served if v.get("storage")), served[0])["name"]
    namespaced = spec.get("scope", "Namespaced") == "Namespaced"
    return Resource(spec["group"], version, names["plural"], names["kind"], namespaced)


def owner_keys(
    owner_res: Resource,
    owners: NamespaceIndex,
    etype: str,
    obj: dict[str, Any],
    old: dict[str, Any] | None,
) -> list[tuple[str, str]]:
    """The (namespace, name) of each ``owner_res`` object an event on a dependent concerns:
    its controller before and after, or, for an orphan that is new or relabelled, every owner
    whose selector matches it (one of them may adopt it)."""
    ns = meta(obj).get("namespace") or ""
    ref, old_ref = controller_ref(obj), controller_ref(old)
    keys: list[tuple[str, str]] = []
    moved = ref is None or ref.get("uid") != (old_ref or {}).get("uid")
    if old_ref is not None and refers_to(old_ref, owner_res) and moved:
        keys.append((ns, old_ref["name"]))  # released or re-owned: the old owner recounts
    if ref is not None:
        if refers_to(ref, owner_res):
            keys.append((ns, ref["name"]))
        return keys
    if etype == "DELETED":
        return keys
    labels = meta(obj).get("labels") or {}
    if old is None or old_ref is not None or labels != (meta(old).get("labels") or {}):
        for owner in owners.items(ns):
            if selector_matches((owner.get("spec") or {}).get("selector"), labels):
                keys.append((ns, meta(owner)["name"]))
    return keys


async def claim(
    client: Client,
    res: Resource,
    owner: dict[str, Any],
    owner_res: Resource,
    candidates: Iterable[dict[str, Any]],
    matches: Callable[[dict[str, Any]], bool],
) -> list[dict[str, Any]]:
    """Kubernetes' ControllerRefManager: of ``candidates`` (objects of ``res`` in the owner's
    namespace), those ``owner`` controls, after adopting matching orphans and releasing owned
    objects that no longer match. Adoption and release patch with a resourceVersion
    precondition, so a concurrent owner change makes this fail (retry) rather than clobber."""
    uid = meta(owner)["uid"]
    deleting = being_deleted(owner)
    claimed: list[dict[str, Any]] = []
    can_adopt: bool | None = None  # unknown until an orphan needs it
    for obj in candidates:
        ref = controller_ref(obj)
        refs = list(meta(obj).get("ownerReferences") or [])
        if ref is not None:
            if ref.get("uid") != uid:
                continue
            if matches(obj):
                claimed.append(obj)
            elif not deleting and not being_deleted(obj):
                kept = [r for r in refs if r.get("uid") != uid]
                await _patch_owners(client, res, obj, kept)
            continue
        if deleting or being_deleted(obj) or not matches(obj):
            continue
        if can_adopt is None:
            # The cached owner may be stale: adopt only for an owner that still exists.
            m = meta(owner)
            try:
                fresh = await client.get(owner_res, m["name"], m.get("namespace"))
            except NotFoundError:
                fresh = {}
            can_adopt = meta(fresh).get("uid") == uid and not being_deleted(fresh)
        if not can_adopt:
            continue
        adopted = await _patch_owners(client, res, obj, [*refs, owner_reference(owner, owner_res)])
        if adopted is not None:
            claimed.append(adopted)
    return claimed


async def _patch_owners(
    client: Client, res: Resource, obj: dict[str, Any], refs: list[dict[str, Any]]
) -> dict[str, Any] | None:
    m = meta(obj)
    patch = {"metadata": {"resourceVersion": m["resourceVersion"], "ownerReferences": refs or None}}
    try:
        return await client.patch(res, m["name"], patch, m.get("namespace"))
    except NotFoundError:
        return None


# --- the manager -----------------------------------------------------------------------------

# Builds one more controller on the manager's client and shared informers (a class whose
# constructor takes ``(client, informers)`` is one): how layers above this one add theirs.
ControllerFactory = Callable[[Client, Informers], Controller[Any]]


class ControllerManager:
    """Runs the cloud's built-in controllers over one client: deployments, replica sets,
    garbage collection, namespaces, service accounts, the scheduler and node lifecycle.

    ``resync``: seconds between full re-queues of every controller's keys.
    ``node_grace_period``, ``pod_eviction_timeout``: see ``NodeLifecycleController``.
    ``extra``: factories of more controllers, built after the built-in ones on the same
    informers and started and stopped with them. ``builtin=False`` runs only those (against
    a real Kubernetes cluster, whose own controllers do the rest). The informers an extra
    controller asks for must be listable when the manager starts (install CRDs first).
    """

    def __init__(
        self,
        client: Client,
        *,
        workers: int = 2,
        resync: float | None = 300.0,
        sync_timeout: float | None = 60.0,
        node_grace_period: float = 40.0,
        pod_eviction_timeout: float = 300.0,
        extra: Iterable[ControllerFactory] = (),
        builtin: bool = True,
    ) -> None:
        self.client = client
        self.workers = workers
        self.resync = resync
        self.sync_timeout = sync_timeout
        self.node_grace_period = node_grace_period
        self.pod_eviction_timeout = pod_eviction_timeout
        self.extra = list(extra)  # an iterator would be spent by the first start
        self.builtin = builtin
        self.informers: Informers | None = None
        self.controllers: list[Controller[Any]] = []

    async def start(self) -> None:
        if self.informers is not None:
            return
        # Imported here: the controllers' modules import this one for their base class.
        from .deployments import DeploymentController
        from .garbagecollection import GarbageCollector
        from .namespaces import NamespaceController, ServiceAccountController
        from .nodelifecycle import NodeLifecycleController
        from .replicasets import ReplicaSetController
        from .scheduling import Scheduler

        informers = self.informers = Informers(self.client)
        kinds: list[type[Controller[Any]]] = [
            DeploymentController,
            ReplicaSetController,
            GarbageCollector,
            NamespaceController,
            ServiceAccountController,
            Scheduler,
        ]
        if self.builtin:
            self.controllers = [
                kind(self.client, informers, workers=self.workers, resync=self.resync)
                for kind in kinds
            ]
            self.controllers.append(
                NodeLifecycleController(
                    self.client,
                    informers,
                    workers=self.workers,
                    resync=self.resync,
                    grace_period=self.node_grace_period,
                    eviction_timeout=self.pod_eviction_timeout,
                )
            )
        try:
            self.controllers += [factory(self.client, informers) for factory in self.extra]
            async with asyncio.timeout(self.sync_timeout):
                await informers.start()
            for controller in self.controllers:
                await controller.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        controllers, self.controllers = self.controllers, []
        for controller in reversed(controllers):
            with contextlib.suppress(Exception):
                await controller.stop()
        informers, self.informers = self.informers, None
        if informers is not None:
            await informers.stop()

    async def __aenter__(self) -> ControllerManager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
