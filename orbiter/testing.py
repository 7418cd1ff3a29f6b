"""Run an Orbiter cloud, or a whole cluster, inside your own tests.

``CloudThread`` runs a cloud on a background event loop, so blocking code (kubectl, the sync
``kubernetes`` client) can talk to it from the test's thread::

    with CloudThread(tmp_path) as cloud:
        subprocess.run(["kubectl", "--kubeconfig", cloud.kubeconfig, "get", "ns"], check=True)

In async tests, ``async with Cloud(tmp_path, port=0, hub_port=0, join_port=0,
router_port=0) as cloud`` needs no thread. All three run what ``orbiter cloud`` runs, the
sedna.io and satellite.orbiter.io CRDs included.

``Cluster`` adds edge nodes: a cloud and N real ``EdgeCore`` nodes (``edge-0``, ``edge-1``,
…) in this process, each joined with a real token over the real join endpoint. Their pods
run as local processes; leaving the block stops every pod, every node and the cloud::

    async with Cluster(tmp_path, edges=2) as cluster:
        await cluster.wait_ready()
        await cluster.client.create(DEPLOYMENTS, deployment, "default")
        await cluster.stop_edge(0)   # the node goes away; its pods keep running
        await cluster.start_edge(0)  # a new EdgeCore on the same data dir adopts them

``ClusterThread`` is the same on a background loop, for blocking tests::

    with ClusterThread(tmp_path, edges=2) as cluster:
        cluster.wait_ready()
        subprocess.run(["kubectl", "--kubeconfig", cluster.kubeconfig, "get", "nodes"])
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from .collab import globalmanager
from .collab.apis import load_sedna_crds
from .collab.localcontroller import LocalController, local_controller
from .orchestration.client import NODES, LocalClient
from .orchestration.cloud import ControllerFactory, running
from .orchestration.cloud.joining import create_join_token
from .orchestration.cloud.running import UpstreamFactory
from .orchestration.edge.core import EdgeCore
from .orchestration.edge.extensions import EdgeExtensionFactory
from .orchestration.edge.joining import join
from .orchestration.edge.runtime import ImageSpec, ProcessRuntime
from .satellite import controllers as satellite_controllers
from .satellite.advising import satellite_advisor
from .satellite.apis import load_satellite_crds

T = TypeVar("T")

__all__ = ["Cloud", "CloudThread", "Cluster", "ClusterThread", "node_ready"]


class Cloud(running.Cloud):
    """The orchestration ``Cloud`` plus the CRDs and controllers of the layers above it (the
    sedna.io kinds and the global manager, the satellite.orbiter.io kinds and the contact
    plan controller, the satellite placement advisor vetting edge workers), as ``orbiter
    cloud`` starts it; ``crds`` and ``controllers`` replace those lists. Replacing the CRDs
    drops the default controllers too: they watch those kinds, which must be served when they
    start. ``upstream`` replaces the global manager's handlers of the local controllers'
    reports."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        crds: Iterable[dict[str, Any]] | None = None,
        controllers: Iterable[ControllerFactory] | None = None,
        upstream: Mapping[str, UpstreamFactory] | None = None,
        **options: Any,
    ) -> None:
        if controllers is None:
            controllers = (
                [
                    *globalmanager.controllers(advisor=satellite_advisor),
                    *satellite_controllers.controllers(),
                ]
                if crds is None
                else ()
            )
        super().__init__(
            data_dir,
            crds=[*load_sedna_crds(), *load_satellite_crds()] if crds is None else crds,
            controllers=controllers,
            upstream=globalmanager.upstream_handlers() if upstream is None else upstream,
            **options,
        )


class CloudThread:
    """A ``Cloud`` (all ports picked free) on its own event loop in a background thread;
    ``controllers`` as ``Cloud``'s (``()``: none of the layers above orchestration)."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        store_url: str | None = None,
        bookmark_interval: float = 1.0,
        start_timeout: float = 30.0,
        controllers: Iterable[ControllerFactory] | None = None,
    ) -> None:
        self.cloud = Cloud(
            data_dir,
            store_url=store_url,
            port=0,
            hub_port=0,
            join_port=0,
            router_port=0,
            bookmark_interval=bookmark_interval,
            controllers=controllers,
        )
        self._timeout = start_timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="orbiter-cloud")

    @property
    def kubeconfig(self) -> Path:
        return self.cloud.server.kubeconfig_path

    @property
    def url(self) -> str:
        return self.cloud.server.url

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 60.0) -> T:
        """Run a coroutine on the cloud's loop (e.g. ``cloud.server.api`` calls) and wait."""
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    def start(self) -> CloudThread:
        self._thread.start()
        try:
            self.call(self.cloud.start(), self._timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            try:
                self.call(self.cloud.stop(), self._timeout)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(self._timeout)
        self._loop.close()

    def __enter__(self) -> CloudThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def node_ready(node: Mapping[str, Any]) -> bool:
    """Whether a Node object's ``Ready`` condition is ``True``."""
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


class Cluster:
    """A cloud and ``edges`` edge nodes in this process; an async context manager.

    Data lives in ``data_dir``: the cloud's in ``cloud/``, node ``edge-<i>``'s in
    ``edge-<i>/``. All ports are picked free (MetaServers too). The intervals default short,
    so status reaches the API within about a second. ``images`` maps image names to what the
    nodes run (default: ``python`` is this interpreter). ``node_cert_days`` is the lifetime of
    node certificates (a fraction of a day makes the nodes rotate theirs while a test runs).
    Each node runs its own MQTT broker on a free port, unless ``mqtt_broker`` (``HOST:PORT``)
    names one they all use.

    On exit every node is shut down with its pods (``grace`` seconds each; ``0`` kills at
    once), then the cloud stops: no process, thread or task is left behind, including pods
    of nodes stopped with ``stop_edge``.

    ``upstream`` replaces the cloud's upstream handlers and ``extensions`` what the nodes
    run inside (as ``Cloud``'s and ``EdgeCore``'s). ``dial(node, hub_port)`` returns the
    local port a node dials instead of CloudHub's own: put a proxy in between (a
    ``satellite.ContactProxy`` to make it a satellite); ``reconnect_backoff`` and
    ``ack_timeout`` are the nodes' (short ones suit links that come and go). By default
    each node runs the AI local controller on a free port (``lc_port(node)``); it announces
    its URL, so workers the global manager pins to that node (``nodeName``) get it as
    ``LC_SERVER``.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        edges: int = 1,
        store_url: str | None = None,
        sync_period: float = 0.5,
        keepalive_timeout: float = 30.0,
        heartbeat: float = 1.0,
        status_interval: float = 0.5,
        images: Mapping[str, ImageSpec] | None = None,
        grace: float | None = 0.0,
        node_cert_days: float = 365.0,
        mqtt_broker: str | None = None,
        upstream: Mapping[str, UpstreamFactory] | None = None,
        extensions: Iterable[EdgeExtensionFactory] | None = None,
        dial: Callable[[str, int], int] | None = None,
        reconnect_backoff: tuple[float, float] = (1.0, 30.0),
        ack_timeout: float = 10.0,
    ) -> None:
        if edges < 0:
            raise ValueError(f"edges must be >= 0, not {edges}")
        self.data_dir = Path(data_dir).absolute()
        self._count = edges
        self._images = images
        self._heartbeat = heartbeat
        self._status_interval = status_interval
        self._grace = grace
        self._mqtt_broker = mqtt_broker
        self._extensions = None if extensions is None else list(extensions)
        self._dial = dial
        self._reconnect_backoff = reconnect_backoff
        self._ack_timeout = ack_timeout
        self._cloud = Cloud(
            self.data_dir / "cloud",
            store_url=store_url,
            port=0,
            hub_port=0,
            join_port=0,
            bookmark_interval=1.0,
            keepalive_timeout=keepalive_timeout,
            sync_period=sync_period,
            node_cert_days=node_cert_days,
            router_port=0,
            upstream=upstream,
        )
        self._edges: list[EdgeCore] = []
        self._client: LocalClient | None = None
        self._started = False

    # -- what tests use ------------------------------------------------------------------

    @property
    def cloud(self) -> Cloud:
        return self._cloud

    @property
    def edges(self) -> list[EdgeCore]:
        """The nodes' EdgeCores, by index; a node stopped with ``stop_edge`` stays listed
        (stopped) until ``start_edge`` replaces it."""
        return list(self._edges)

    @property
    def node_names(self) -> list[str]:
        return [f"edge-{i}" for i in range(self._count)]

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig, for kubectl or the ``kubernetes`` client."""
        return self._cloud.server.kubeconfig_path

    @property
    def client(self) -> LocalClient:
        """An in-process client of the cloud's API (admin), valid inside the block."""
        if self._client is None:
            raise RuntimeError("the cluster is not running")
        return self._client

    def lc_port(self, node: str) -> int:
        """The port node ``node``'s running local controller listens on (127.0.0.1)."""
        for edge in self._edges:
            if edge.node_name == node:
                for extension in edge.extensions:
                    if isinstance(extension, LocalController):
                        return extension.port
        raise LookupError(f"node {node!r} runs no local controller")

    def edge_dir(self, i: int) -> Path:
        return self.data_dir / f"edge-{i}"

    async def wait_ready(self, timeout: float = 60.0) -> None:  # noqa: ASYNC109 (the API)
        """Wait until every node is registered and ``Ready`` in the API (TimeoutError)."""
        names = set(self.node_names)
        async with asyncio.timeout(timeout):
            while True:
                nodes = (await self.client.list(NODES))["items"]
                ready = {n["metadata"]["name"] for n in nodes if node_ready(n)}
                if names <= ready:
                    return
                await asyncio.sleep(0.1)  # polling a converging system: no event to await

    async def stop_edge(self, i: int) -> None:
        """Stop node ``i``'s EdgeCore; its pods keep running (edge autonomy)."""
        await self._edges[i].stop()

    async def start_edge(self, i: int) -> EdgeCore:
        """Start node ``i`` again from its data dir (no token): a new EdgeCore that adopts
        the pods still running. Stops the current one first if it runs."""
        await self._edges[i].stop()
        edge = self._edge(i)
        self._edges[i] = edge
        await edge.start()
        return edge

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> Cluster:
        if self._started:
            return self
        self._started = True
        try:
            await self._cloud.start()
            self._client = LocalClient(self._cloud.server.api)
            assert self._cloud.join is not None
            token = create_join_token(self._cloud.server.data_dir, 3600)
            for i in range(self._count):
                if not (self.edge_dir(i) / "node.crt").exists():
                    await join(
                        f"127.0.0.1:{self._cloud.join.port}", token, f"edge-{i}", self.edge_dir(i)
                    )
                edge = self._edge(i)
                self._edges.append(edge)
                await edge.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        """Shut down every node with its pods, then the cloud."""
        if not self._started:
            return
        self._started = False
        try:
            # One node failing to stop must not leave the others' pods running.
            results = await asyncio.gather(
                *(self._shutdown_edge(i) for i in range(len(self._edges))),
                return_exceptions=True,
            )
            self._edges = []
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        finally:
            if self._client is not None:
                await self._client.close()
                self._client = None
            await self._cloud.stop()

    async def __aenter__(self) -> Cluster:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _shutdown_edge(self, i: int) -> None:
        await self._edges[i].shutdown(self._grace)
        # A node stopped by stop_edge left its pods running: a bare runtime on its data dir
        # adopts them so they are stopped too.
        runtime = ProcessRuntime(self.edge_dir(i) / "runtime", images=self._images)
        await runtime.start()
        try:
            await runtime.shutdown_all(self._grace)
        finally:
            await runtime.close()

    def _edge(self, i: int) -> EdgeCore:
        assert self._cloud.hub is not None and self._cloud.join is not None
        name, port = f"edge-{i}", self._cloud.hub.port
        if self._dial is not None:
            port = self._dial(name, port)
        return EdgeCore(
            self.edge_dir(i),
            cloud_url=f"wss://127.0.0.1:{port}",
            node_name=name,
            metaserver_port=0,
            mqtt_port=0,
            mqtt_broker=self._mqtt_broker,
            heartbeat=self._heartbeat,
            status_interval=self._status_interval,
            images=self._images,
            join_address=f"127.0.0.1:{self._cloud.join.port}",
            extensions=[local_controller(port=0)] if self._extensions is None else self._extensions,
            reconnect_backoff=self._reconnect_backoff,
            ack_timeout=self._ack_timeout,
        )


class ClusterThread:
    """A ``Cluster`` on its own event loop in a background thread, for blocking tests.

    The same constructor arguments as ``Cluster``; ``cluster`` is the ``Cluster`` itself,
    and ``call`` runs any of its coroutines (``cluster.client`` calls, say) on its loop.
    """

    def __init__(
        self, data_dir: str | os.PathLike[str], *, start_timeout: float = 60.0, **options: Any
    ) -> None:
        self._timeout = start_timeout
        self.cluster = Cluster(data_dir, **options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="orbiter-cluster")

    @property
    def kubeconfig(self) -> Path:
        return self.cluster.kubeconfig

    @property
    def url(self) -> str:
        return self.cluster.cloud.server.url

    @property
    def edges(self) -> list[EdgeCore]:
        return self.cluster.edges

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 60.0) -> T:
        """Run a coroutine on the cluster's loop and wait for its result."""
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until every node is ``Ready`` in the API (TimeoutError)."""
        self.call(self.cluster.wait_ready(timeout), timeout + 5)

    def stop_edge(self, i: int) -> None:
        self.call(self.cluster.stop_edge(i), self._timeout)

    def start_edge(self, i: int) -> EdgeCore:
        return self.call(self.cluster.start_edge(i), self._timeout)

    def start(self) -> ClusterThread:
        self._thread.start()
        try:
            self.call(self.cluster.start(), self._timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            try:
                self.call(self.cluster.stop(), self._timeout)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(self._timeout)
        self._loop.close()

    def __enter__(self) -> ClusterThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
