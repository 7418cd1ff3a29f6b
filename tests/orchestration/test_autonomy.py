"""Edge autonomy and reliable sync, end to end (the issue's acceptance scenarios).

1. The link between edge and cloud goes through a TCP proxy the test controls. While it is
   cut, EdgeCore restarts (its pods keep their processes, the MetaServer answers reads from
   local data and refuses writes) and the cloud changes things; after the link comes back the
   node catches up and every ObjectSync matches the cloud.
2. The cloud (a subprocess) is ``kill -9``-ed in the middle of a burst of ConfigMap updates
   and restarted on the same data dir and ports: every update the API acknowledged reaches the
   node, and the node never applies a version twice or out of order.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from orbiter.orchestration.client import (
    CONFIGMAPS,
    DEPLOYMENTS,
    NAMESPACES,
    NODES,
    PODS,
    Client,
    KubeClient,
    NotFoundError,
    Resource,
)
from orbiter.orchestration.cloud.joining import create_join_token
from orbiter.orchestration.cloud.objectsyncs import OBJECTSYNCS, parse_rv
from orbiter.orchestration.edge.core import EdgeCore
from orbiter.orchestration.edge.joining import join
from orbiter.orchestration.edge.metamanager import Change

from orbiter.testing import Cluster, node_ready

pytestmark = pytest.mark.slow

WAIT = 60.0
NS = "default"
SYNC_PERIOD = 0.5
HEARTBEAT = 0.5
STATUS_INTERVAL = 0.5
RECONNECT = (0.1, 0.5)
SLACK = 0.5  # scheduling noise on top of "two sync periods"


async def eventually(check: Callable[[], Awaitable[Any]], what: str, limit: float = WAIT) -> Any:
    """Poll ``check`` until it returns something truthy (the system converges on its own)."""
    try:
        async with asyncio.timeout(limit):
            while True:
                result = await check()
                if result:
                    return result
                await asyncio.sleep(0.05)  # polling a converging system: no event to await
    except TimeoutError:
        pytest.fail(f"timed out after {limit}s waiting: {what}")


def _async(check: Callable[[], Any]) -> Callable[[], Awaitable[Any]]:
    async def run() -> Any:
        return check()

    return run


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def pid_of(status: dict[str, Any]) -> int:
    """The container's pid, from the ``process://<pid>`` container ID of a PodStatus."""
    statuses = status.get("containerStatuses") or []
    return int(statuses[0]["containerID"].removeprefix("process://"))


# -- a link the test can cut ---------------------------------------------------------------


class Proxy:
    """A TCP relay on 127.0.0.1 (port picked free) to ``target_port``. ``cut()`` drops every
    connection and refuses new ones (accepted, then closed at once) until ``restore()``."""

    def __init__(self) -> None:
        self.target_port = 0
        self.port = 0
        self.connections = 0  # relayed connections so far
        self._server: asyncio.Server | None = None
        self._cut = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        self._cut = True
        for writer in list(self._writers):
            writer.transport.abort()

    def restore(self) -> None:
        self._cut = False

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5.0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            if self._cut or not self.target_port:
                writer.transport.abort()
                return
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            except OSError:
                writer.transport.abort()
                return
            self.connections += 1
            pair = {writer, up_writer}
            self._writers |= pair
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                self._writers -= pair
                for w in pair:
                    w.transport.abort()
        finally:
            self._handlers.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.transport.abort()


def proxied(proxy: Proxy) -> Callable[[str, int], int]:
    """``Cluster(dial=...)``: the nodes dial CloudHub through ``proxy``."""

    def dial(node: str, hub_port: int) -> int:
        proxy.target_port = hub_port
        return proxy.port

    return dial


def proxied_cluster(data_dir: Path, proxy: Proxy, **options: Any) -> Cluster:
    """A ``Cluster`` whose edges dial through ``proxy``, with short periods and reconnects,
    and only the extensions asked for (these tests are about the node's own autonomy)."""
    options.setdefault("heartbeat", HEARTBEAT)
    options.setdefault("status_interval", STATUS_INTERVAL)
    options.setdefault("reconnect_backoff", RECONNECT)
    options.setdefault("extensions", ())
    return Cluster(data_dir, dial=proxied(proxy), **options)


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    p = Proxy()
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


# -- scenario 1: cut, restart while cut, reconnect -------------------------------------------


def sleeper(replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "sleeper"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "sleeper"}},
            "template": {
                "metadata": {"labels": {"app": "sleeper"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    # Mounted, not env: a mounted ConfigMap changes under a running process,
                    # so its update must not restart anything.
                    "volumes": [{"name": "cfg", "configMap": {"name": "settings"}}],
                    "containers": [
                        {
                            "name": "main",
                            "image": "python",
                            "command": ["python", "-c", "import time; time.sleep(600)"],
                            "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"}],
                        }
                    ],
                },
            },
        },
    }


_KINDS: dict[str, Resource] = {"Pod": PODS, "ConfigMap": CONFIGMAPS}


async def objectsync_mismatches(client: Client, node: str, expected: set[str]) -> list[str]:
    """Every ObjectSync of ``node`` that does not match its object in the cloud (empty: all
    match). A sync whose object is gone, or is another incarnation, is a mismatch too, and so
    is an object of ``expected`` (uids the node should hold) without a sync."""
    wrong: list[str] = []
    syncs = (await client.list(OBJECTSYNCS))["items"]
    seen: set[str] = set()
    for sync in syncs:
        name = sync["metadata"]["name"]
        if not name.startswith(f"{node}."):
            continue
        spec, status = sync.get("spec") or {}, sync.get("status") or {}
        uid = name.removeprefix(f"{node}.")
        seen.add(uid)
        res = _KINDS.get(spec.get("objectKind", ""))
        if res is None:
            wrong.append(f"{name}: unexpected kind {spec.get('objectKind')}")
            continue
        try:
            obj = await client.get(res, spec["objectName"], sync["metadata"].get("namespace"))
        except NotFoundError:
            wrong.append(f"{name}: {spec['objectName']} is gone from the cloud")
            continue
        if obj["metadata"]["uid"] != uid:
            wrong.append(f"{name}: {spec['objectName']} is now another object")
        elif parse_rv(status.get("objectResourceVersion")) != parse_rv(
            obj["metadata"]["resourceVersion"]
        ):
            wrong.append(
                f"{name}: synced {status.get('objectResourceVersion')}, "
                f"cloud {obj['metadata']['resourceVersion']}"
            )
    wrong.extend(f"no ObjectSync for {uid}" for uid in sorted(expected - seen))
    return wrong


async def test_cut_link_restart_edge_and_reconnect(tmp_path: Path, proxy: Proxy) -> None:
    async with proxied_cluster(
        tmp_path,
        proxy,
        edges=1,
        sync_period=SYNC_PERIOD,
        heartbeat=HEARTBEAT,
        status_interval=STATUS_INTERVAL,
    ) as cluster:
        await cluster.wait_ready(WAIT)
        client = cluster.client
        assert proxy.connections >= 1, "the edge dials the proxy"
        await client.create(CONFIGMAPS, {"metadata": {"name": "settings"}, "data": {"v": "1"}}, NS)
        await client.create(DEPLOYMENTS, sleeper(3), NS)

        async def live_pods() -> list[dict[str, Any]]:
            pods = (await client.list(PODS, NS, label_selector="app=sleeper"))["items"]
            return [p for p in pods if not p["metadata"].get("deletionTimestamp")]

        async def running(count: int) -> list[dict[str, Any]] | None:
            live = await live_pods()
            ok = [p for p in live if (p.get("status") or {}).get("phase") == "Running"]
            return ok if len(ok) == count == len(live) else None

        await eventually(lambda: running(3), "three pods Running")
        edge = cluster.edges[0]
        await eventually(
            _async(lambda: len(edge.runtime.running_pods()) == 3), "the node runs three pods"
        )
        pids = {uid: pid_of(edge.runtime.pod_status(uid)) for uid in edge.runtime.running_pods()}
        assert all(alive(p) for p in pids.values())

        # -- the link is cut; EdgeCore restarts while it is ---------------------------------
        proxy.cut()
        await eventually(_async(lambda: not edge.connected), "the edge notices the cut")
        edge = await cluster.start_edge(0)
        assert not edge.connected
        assert {
            uid: pid_of(edge.runtime.pod_status(uid)) for uid in edge.runtime.running_pods()
        } == pids, "the new EdgeCore adopted the same processes"
        assert all(alive(p) for p in pids.values())

        base = f"http://127.0.0.1:{edge.metaserver.port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/api/v1/namespaces/{NS}/pods") as resp:
                assert resp.status == 200
                listed = await resp.json()
            assert {p["metadata"]["uid"] for p in listed["items"]} == set(pids)
            async with http.get(f"{base}/api/v1/namespaces/{NS}/configmaps/settings") as resp:
                assert resp.status == 200
                assert (await resp.json())["data"] == {"v": "1"}
            body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}
            async with http.post(f"{base}/api/v1/namespaces/{NS}/configmaps", json=body) as resp:
                assert resp.status == 503, await resp.text()

        # -- the cloud changes things meanwhile ---------------------------------------------
        await client.patch(CONFIGMAPS, "settings", {"data": {"v": "2"}}, NS)
        await client.patch(DEPLOYMENTS, "sleeper", {"spec": {"replicas": 2}}, NS)

        async def scaled_down() -> list[dict[str, Any]] | None:
            live = await live_pods()
            return live if len(live) == 2 else None

        remaining = {p["metadata"]["uid"] for p in await eventually(scaled_down, "scaled to 2")}
        (scaled_away,) = set(pids) - remaining
        victim_uid = sorted(remaining)[0]
        (survivor,) = remaining - {victim_uid}
        victim = next(p for p in await live_pods() if p["metadata"]["uid"] == victim_uid)
        await client.delete(PODS, victim["metadata"]["name"], NS)

        async def replaced() -> str | None:
            live = await live_pods()
            new = [p["metadata"]["uid"] for p in live if p["metadata"]["uid"] not in pids]
            return new[0] if len(live) == 2 and len(new) == 1 else None

        replacement = await eventually(replaced, "the ReplicaSet replaces the deleted pod")
        assert edge.runtime.running_pods().keys() == pids.keys(), "nothing reached the node"

        # -- the link comes back --------------------------------------------------------------
        proxy.restore()
        restored = time.monotonic()
        await eventually(_async(lambda: edge.connected), "the edge reconnects")
        reconnected = time.monotonic()
        await cluster.wait_ready(WAIT)

        mismatches: list[str] = []
        settings_uid = (await client.get(CONFIGMAPS, "settings", NS))["metadata"]["uid"]
        expected = {survivor, replacement, settings_uid}

        async def synced() -> bool:
            nonlocal mismatches
            mismatches = await objectsync_mismatches(client, edge.node_name, expected)
            return not mismatches

        await eventually(synced, f"ObjectSyncs match the cloud (last: {mismatches})")
        converged = time.monotonic()

        await eventually(
            _async(lambda: edge.runtime.running_pods().keys() == {survivor, replacement}),
            "the node runs the survivor and the replacement",
        )
        await eventually(lambda: running(2), "two pods Running after the reconnect")
        assert pid_of(edge.runtime.pod_status(survivor)) == pids[survivor], "not restarted"
        assert alive(pids[survivor])
        await eventually(
            _async(lambda: not alive(pids[scaled_away]) and not alive(pids[victim_uid])),
            "the deleted pods' processes are gone",
        )
        cm = await edge.meta.get(NS, "configmap", "settings")
        assert cm is not None and cm["data"] == {"v": "2"}
        stored = {p["metadata"]["uid"] for p in await edge.meta.pods_for_node(edge.node_name)}
        assert stored == {survivor, replacement}
        # Still matching once everything settled (the replacement's status writes included).
        await eventually(synced, f"ObjectSyncs match the cloud at the end (last: {mismatches})")
        settled = time.monotonic()

        took = converged - reconnected
        print(
            f"reconnect {reconnected - restored:.2f}s after restore; ObjectSyncs matched "
            f"{took:.2f}s after reconnect (re-checked after the pods settled: "
            f"{settled - reconnected:.2f}s)"
        )
        assert took <= 2 * SYNC_PERIOD + SLACK, (
            f"ObjectSyncs matched the cloud {took:.2f}s after the reconnect, more than two "
            f"sync periods ({2 * SYNC_PERIOD}s) + {SLACK}s"
        )


# -- scenario 2: kill -9 of the cloud mid-burst -------------------------------------------------


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class CloudProcess:
    """``orbiter cloud`` as a subprocess on fixed ports; killed by PID."""

    def __init__(self, data_dir: Path, log: Path, ports: list[int]) -> None:
        self.data_dir, self.log, self.ports = data_dir, log, ports
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        api, hub, join_port = self.ports
        with self.log.open("ab") as out:
            # Popen returns at once (no pipes to fill): nothing blocks the loop.
            self.proc = subprocess.Popen(  # noqa: ASYNC220
                [sys.executable, "-m", "orbiter.cli", "cloud", "--data-dir", str(self.data_dir),
                 "--api-port", str(api), "--hub-port", str(hub), "--join-port", str(join_port),
                 "--router-port", "0"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        proc = self.proc
        starts = self.log.read_text(errors="replace").count("Orbiter API server at")

        async def listening() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"orbiter cloud exited:\n{self.log.read_text(errors='replace')}")
            return self.log.read_text(errors="replace").count("Orbiter API server at") > starts

        await eventually(listening, "orbiter cloud listens")

    async def kill(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        await eventually(_async(lambda: proc.poll() is not None), "the cloud process exits")
        self.proc = None


@pytest.fixture
async def cloud_process(tmp_path: Path) -> AsyncIterator[CloudProcess]:
    cloud = CloudProcess(tmp_path / "cloud", tmp_path / "cloud.log", free_ports(3))
    cloud.data_dir.mkdir()
    try:
        yield cloud
    finally:
        await cloud.kill()


CONFIGS = ("burst-0", "burst-1", "burst-2")


def reader_pod() -> dict[str, Any]:
    """A pod bound to edge-0 that mounts the burst ConfigMaps (so the node is sent them)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "reader"},
        "spec": {
            "nodeName": "edge-0",
            "terminationGracePeriodSeconds": 1,
            "volumes": [{"name": c, "configMap": {"name": c}} for c in CONFIGS],
            "containers": [
                {
                    "name": "main",
                    "image": "python",
                    "command": ["python", "-c", "import time; time.sleep(600)"],
                    "volumeMounts": [{"name": c, "mountPath": f"/etc/{c}"} for c in CONFIGS],
                }
            ],
        },
    }


async def test_kill_9_of_the_cloud_mid_burst_loses_nothing_acknowledged(
    tmp_path: Path, cloud_process: CloudProcess
) -> None:
    _, hub_port, join_port = cloud_process.ports
    await cloud_process.start()
    kubeconfig = cloud_process.data_dir / "kubeconfig"

    async def api_ready(client: Client) -> bool:
        try:
            await client.list(NAMESPACES)
        except Exception:
            return False
        return True

    client: Client = KubeClient.from_kubeconfig(kubeconfig)
    edge: EdgeCore | None = None
    applied: list[Change] = []
    recorder: asyncio.Task[None] | None = None
    try:
        await eventually(lambda: api_ready(client), "the API answers")
        token = create_join_token(cloud_process.data_dir, 600)
        await join(f"127.0.0.1:{join_port}", token, "edge-0", tmp_path / "edge")
        edge = EdgeCore(
            tmp_path / "edge",
            cloud_url=f"wss://127.0.0.1:{hub_port}",
            metaserver_port=0,
            mqtt_port=0,
            heartbeat=HEARTBEAT,
            status_interval=STATUS_INTERVAL,
            reconnect_backoff=RECONNECT,
        )
        await edge.start()
        meta = edge.meta

        async def record() -> None:
            async for change in meta.watch("configmap"):  # every committed write, in order
                if change.name in CONFIGS:
                    applied.append(change)

        recorder = asyncio.create_task(record(), name="record-configmap-writes")

        async def node_is_ready() -> bool:
            try:
                return node_ready(await client.get(NODES, "edge-0"))
            except NotFoundError:
                return False

        await eventually(node_is_ready, "the node is Ready")
        for name in CONFIGS:
            await client.create(CONFIGMAPS, {"metadata": {"name": name}, "data": {"n": "0"}}, NS)
        await client.create(PODS, reader_pod(), NS)

        async def on_node(name: str) -> dict[str, Any] | None:
            return await meta.get(NS, "configmap", name)

        for name in CONFIGS:
            await eventually(functools.partial(on_node, name), f"{name} reaches the node")

        # -- the burst; kill -9 in the middle of it -------------------------------------------
        acked: dict[str, tuple[int, int]] = {}  # name -> (n, resourceVersion) last acknowledged
        attempted: dict[str, int] = {}
        count = 0
        failure: list[BaseException] = []

        async def burst() -> None:
            nonlocal count
            i = 0
            while True:
                i += 1
                name = CONFIGS[i % len(CONFIGS)]
                attempted[name] = i
                try:
                    obj = await client.patch(CONFIGMAPS, name, {"data": {"n": str(i)}}, NS)
                except Exception as exc:  # the cloud died under the request: not acknowledged
                    failure.append(exc)
                    return
                acked[name] = (i, parse_rv(obj["metadata"]["resourceVersion"]))
                count += 1

        burster = asyncio.create_task(burst(), name="configmap-burst")
        try:
            await eventually(_async(lambda: count >= 30 or burster.done()), "30 acked updates")
            assert not burster.done(), f"the burst ended early: {failure}"
            await cloud_process.kill()  # kill -9 with updates in flight
            await asyncio.wait_for(burster, WAIT)
        finally:
            burster.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await burster
        assert failure, "the burst stops at the kill"
        await eventually(_async(lambda: not edge.connected), "the edge notices the cloud is gone")

        # -- restart on the same data dir and ports ------------------------------------------
        await client.close()
        await cloud_process.start()
        client = KubeClient.from_kubeconfig(kubeconfig)
        await eventually(lambda: api_ready(client), "the restarted API answers")
        await eventually(_async(lambda: edge.connected), "the edge reconnects")

        cloud_now: dict[str, dict[str, Any]] = {}
        for name in CONFIGS:
            cloud_now[name] = await client.get(CONFIGMAPS, name, NS)
            n = int(cloud_now[name]["data"]["n"])
            # Nothing acknowledged is lost in the cloud; the request in flight at the kill may
            # or may not have committed.
            assert n in (acked[name][0], attempted[name]), (name, n, acked[name], attempted)
            assert parse_rv(cloud_now[name]["metadata"]["resourceVersion"]) >= acked[name][1]

        async def node_matches() -> bool:
            for name in CONFIGS:
                cm = await meta.get(NS, "configmap", name)
                want = cloud_now[name]
                if cm is None or (cm["data"], cm["metadata"]["resourceVersion"]) != (
                    want["data"],
                    want["metadata"]["resourceVersion"],
                ):
                    return False
            return True

        await eventually(node_matches, "the node holds the cloud's last version of each")
        for name in CONFIGS:
            cm = await meta.get(NS, "configmap", name)
            assert cm is not None and int(cm["data"]["n"]) >= acked[name][0]
        await eventually(
            _async(lambda: any(c.name == CONFIGS[0] for c in applied)), "writes recorded"
        )
    finally:
        if recorder is not None:
            recorder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recorder
        if edge is not None:
            await edge.shutdown(0)
        await client.close()

    # Each committed write on the node carried a newer version than the one before it: no
    # version applied twice, none out of order.
    for name in CONFIGS:
        writes = [c for c in applied if c.name == name]
        versions = [parse_rv(c.object["metadata"]["resourceVersion"]) for c in writes]
        values = [int(c.object["data"]["n"]) for c in writes]
        assert versions == sorted(set(versions)), (name, versions)
        assert values == sorted(set(values)), (name, values)
        print(f"{name}: {len(writes)} writes on the node, last n={values[-1]}")
