"""EdgeCore against a scripted cloud: a real CloudHub over mutual TLS whose handler records
what the edge sends up, and which the test uses to send objects down. Pods are real
processes of the ``python`` image."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from orbiter.orchestration.apiserver.certificates import CertificateAuthority
from orbiter.orchestration.cloud.hub import CloudHub, mtls_server_context
from orbiter.orchestration.cloud.storeforward import NodeSync
from orbiter.orchestration.edge.core import EdgeCore, _references
from orbiter.orchestration.edge.forwarding import http_answer, request_resource
from orbiter.orchestration.edge.runtime import BackoffPolicy, ProcessRuntime
from orbiter.orchestration.protocol import KEEPALIVE, Message
from orbiter.orchestration.protocol.envelopes import Envelope

from .runtime.support import alive, eventually, processes_under

NODE = "edge-1"
WITHIN = 30.0
FAST = BackoffPolicy(initial=0.05, maximum=0.4)
# Writes the ConfigMap value it got through its env, then runs until told to stop.
APP = (
    "import os, time\n"
    "open('greeting.tmp', 'w').write(os.environ['GREETING'])\n"
    "os.rename('greeting.tmp', 'greeting')\n"
    "while not os.path.exists('stop'):\n    time.sleep(0.05)\n"
)


class ScriptedCloud:
    """A CloudHub that records every upstream message (keepalives aside)."""

    def __init__(self, pki_dir: Path) -> None:
        ca = CertificateAuthority.load_or_create(pki_dir)
        cert, key = ca.issue("cloudhub", hosts=("127.0.0.1",), server=True)
        assert key is not None
        crt, pem = _write_pair(pki_dir, "cloudhub", cert, key)
        self.ca = ca
        self.pki_dir = pki_dir
        self._ctx = mtls_server_context(crt, pem, pki_dir / "ca.crt")
        self.up: list[Message] = []
        self.frames: list[Envelope] = []  # every envelope the node sent, ACKed or not
        self.hold_acks = False  # True: envelopes are recorded, not applied nor acknowledged
        self._changed = asyncio.Event()
        self.hub: CloudHub | None = None
        self.sync: NodeSync | None = None
        self.port = 0

    async def start(self) -> None:
        self.hub = CloudHub(self._ctx, handler=self._handle, port=self.port)
        # Reports come up enveloped: unwrapped once each and handed to the same handler.
        self.sync = NodeSync(self.hub, self.pki_dir / "sync", self._handle)
        self.hub.frames = self._frame
        await self.hub.start()
        self.port = self.hub.port

    async def stop(self) -> None:
        if self.hub is not None:
            await self.hub.stop()
            self.hub = None
        if self.sync is not None:
            await self.sync.close()
            self.sync = None

    async def _handle(self, node: str, message: Message) -> None:
        assert node == NODE
        if message.operation != KEEPALIVE:
            self.up.append(message)
            self._changed.set()

    async def _frame(self, node: str, data: bytes) -> None:
        self.frames.append(Envelope.decode(data))
        self._changed.set()
        if not self.hold_acks:
            assert self.sync is not None
            await self.sync.frame(node, data)

    async def wait_for_frame(self, pred: Callable[[Envelope], bool], since: int = 0) -> Envelope:
        checked = since
        async with asyncio.timeout(WITHIN):
            while True:
                for envelope in self.frames[checked:]:
                    if envelope.kind == "data" and pred(envelope):
                        return envelope
                checked = len(self.frames)
                self._changed.clear()
                await self._changed.wait()

    async def send(self, message: Message) -> None:
        assert self.hub is not None
        await self.hub.send(NODE, message)

    async def wait_for(self, pred: Callable[[Message], bool], since: int = 0) -> Message:
        """The first upstream message from index ``since`` on that satisfies ``pred``."""
        checked = since
        async with asyncio.timeout(WITHIN):
            while True:
                for message in self.up[checked:]:
                    if _holds(pred, message):
                        return message
                checked = len(self.up)
                self._changed.clear()
                await self._changed.wait()

    def url(self) -> str:
        return f"wss://127.0.0.1:{self.port}"


def enveloped(pred: Callable[[Message], bool]) -> Callable[[Envelope], bool]:
    """``pred`` on the message an envelope carries."""
    return lambda envelope: _holds(pred, Message.decode(envelope.payload))


def position_of(cloud: ScriptedCloud, envelope: Envelope) -> int:
    return next(i for i, e in enumerate(cloud.frames) if e is envelope)


def _holds(pred: Callable[[Message], bool], message: Message) -> bool:
    try:
        return pred(message)
    except (KeyError, TypeError, AttributeError, IndexError):
        return False


def _write_pair(directory: Path, name: str, cert: Any, key: Any) -> tuple[Path, Path]:
    crt, pem = directory / f"{name}.crt", directory / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return crt, pem


def joined_data_dir(cloud: ScriptedCloud, data_dir: Path) -> Path:
    """What ``join`` leaves behind: ca.crt, node.crt and node.key for NODE."""
    data_dir.mkdir()
    cert, key = cloud.ca.issue(f"system:node:{NODE}", organizations=("system:nodes",), client=True)
    _write_pair(data_dir, "node", cert, key)
    shutil.copy(cloud.pki_dir / "ca.crt", data_dir / "ca.crt")
    return data_dir


@pytest_asyncio.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[ScriptedCloud]:
    pki = tmp_path / "pki"
    pki.mkdir()
    c = ScriptedCloud(pki)
    await c.start()
    yield c
    await c.stop()


@pytest_asyncio.fixture
async def make_core(tmp_path: Path, cloud: ScriptedCloud) -> AsyncIterator[Callable[..., Any]]:
    data_dir = joined_data_dir(cloud, tmp_path / "edge")
    made: list[EdgeCore] = []

    async def make(**options: Any) -> EdgeCore:
        settings: dict[str, Any] = {
            "cloud_url": cloud.url(),
            "metaserver_port": 0,
            "mqtt_port": 0,
            "heartbeat": 5.0,
            "status_interval": 0.3,
            "backoff": FAST,
            "reconnect_backoff": (0.05, 0.2),
            "forward_timeout": 5.0,
        }
        core = EdgeCore(data_dir, **(settings | options))
        made.append(core)
        await core.start()
        return core

    yield make
    if made:
        await made[-1].shutdown(0)
    for core in made:
        await core.stop()
    # whatever a stopped EdgeCore left running is adopted, then stopped, by a last runtime
    root = data_dir / "runtime"
    sweeper = ProcessRuntime(root, backoff=FAST)
    await sweeper.start()
    await sweeper.shutdown_all(0)

    def nothing_left() -> None:
        assert processes_under(root) == []

    await eventually(nothing_left, within=10)


def configmap() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cfg", "namespace": "default", "uid": "cm-1", "resourceVersion": "5"},
        "data": {"greeting": "hello from the cloud"},
    }


def pod(name: str, uid: str, code: str, restart: str = "Always") -> dict[str, Any]:
    env = [
        {
            "name": "GREETING",
            "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}},
        }
    ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": uid, "resourceVersion": "7"},
        "spec": {
            "nodeName": NODE,
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {"name": "app", "image": "python", "command": ["python", "-c", code], "env": env}
            ],
        },
    }


def down(operation: str, resource: str, content: Any) -> Message:
    return Message("edgecontroller", "resource", operation, resource, content)


def is_status(name: str, phase: str) -> Callable[[Message], bool]:
    def pred(m: Message) -> bool:
        return bool(
            m.resource == f"default/podstatus/{name}"
            and m.operation == "update"
            and m.content["status"]["phase"] == phase
            and m.content["metadata"]["name"] == name
        )

    return pred


def running_pid(m: Message) -> int:
    (cs,) = m.content["status"]["containerStatuses"]
    assert "running" in cs["state"]
    return int(cs["containerID"].removeprefix("process://"))


def rootfs(core: EdgeCore, uid: str) -> Path:
    return core.runtime.root / "pods" / uid / "rootfs" / "app"


async def deliver(cloud: ScriptedCloud, core: EdgeCore, message: Message) -> None:
    """Send one object down and wait for its ACK, which must come after the write."""
    mark = len(cloud.up)
    await cloud.send(message)
    ack = await cloud.wait_for(lambda m: m.parent_msg_id == message.msg_id, since=mark)
    assert ack.operation == "response" and ack.content == "OK"


async def test_pod_runs_reports_and_stops(
    cloud: ScriptedCloud, make_core: Callable[..., Any]
) -> None:
    core: EdgeCore = await make_core()
    node = await cloud.wait_for(lambda m: m.resource == f"null/node/{NODE}")
    assert node.operation == "insert" and node.source == "edged"
    labels = node.content["metadata"]["labels"]
    assert labels["node-role.kubernetes.io/edge"] == ""
    assert labels["node-role.kubernetes.io/agent"] == ""
    status = node.content["status"]
    assert int(status["capacity"]["cpu"]) >= 1 and status["capacity"]["pods"] == "110"
    assert status["capacity"]["memory"].endswith("Ki")
    assert status["nodeInfo"]["kubeletVersion"] == "v1.31.0-orbiter"
    assert {"type": "InternalIP", "address": "127.0.0.1"} in status["addresses"]
    assert status["conditions"][0]["type"] == "Ready"
    # node status and lease arrive after the registration, and keep arriving
    first = cloud.up.index(node)
    patch = await cloud.wait_for(lambda m: m.resource == f"null/nodestatus/{NODE}", first)
    assert patch.operation == "patch" and patch.content["status"]["conditions"]
    lease = await cloud.wait_for(lambda m: m.resource == f"kube-node-lease/lease/{NODE}", first)
    assert lease.operation == "update"
    assert lease.content["spec"]["leaseDurationSeconds"] == 40
    later = cloud.up.index(lease) + 1
    renewed = await cloud.wait_for(lambda m: m.resource == lease.resource, later)
    assert renewed.content["spec"]["renewTime"] >= lease.content["spec"]["renewTime"]

    # the ConfigMap first, then the pod using it: each ACKed once stored
    await deliver(cloud, core, down("insert", "default/configmap/cfg", configmap()))
    assert (await core.meta.get("default", "configmap", "cfg")) == configmap()
    await deliver(cloud, core, down("insert", "default/pod/web", pod("web", "uid-web", APP)))
    assert (await core.meta.get("default", "pod", "web")) is not None
    running = await cloud.wait_for(is_status("web", "Running"))
    pid = running_pid(running)
    assert alive(pid)
    greeting = rootfs(core, "uid-web") / "greeting"
    await eventually(lambda: _read(greeting) == "hello from the cloud" or _fail())

    # the MetaServer serves it; writes are forwarded up and answered by parent_msg_id
    async with aiohttp.ClientSession() as http:
        url = f"{core.metaserver.url}/api/v1/namespaces/default/pods"
        async with http.get(url) as resp:
            assert [p["metadata"]["name"] for p in (await resp.json())["items"]] == ["web"]
        answered = asyncio.create_task(cloud_answers(cloud))
        async with http.post(
            f"{core.metaserver.url}/api/v1/namespaces/default/configmaps",
            json={"metadata": {"name": "new"}},
        ) as resp:
            assert resp.status == 201
            assert (await resp.json())["metadata"]["name"] == "new"
        await answered

    # a delete stops the process
    mark = len(cloud.up)
    await deliver(cloud, core, down("delete", "default/pod/web", {"metadata": {"name": "web"}}))
    assert (await core.meta.get("default", "pod", "web")) is None
    await eventually(lambda: not alive(pid) or _fail())
    await cloud.wait_for(lambda m: m.resource == "default/podstatus/web", since=mark)


async def cloud_answers(cloud: ScriptedCloud) -> None:
    """The cloud's side of one forwarded write: answer it with 201 and the object."""
    request = await cloud.wait_for(lambda m: m.source == "metaserver")
    assert request.operation == "insert"
    assert request.resource == "default/configmap"
    assert request.content["method"] == "POST"
    body = {"metadata": {"name": "new", "namespace": "default"}}
    await cloud.send(request.response({"code": 201, "body": body}, source="edgecontroller"))


def _fail() -> bool:
    raise AssertionError


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise AssertionError(f"{path} is not there yet") from None


async def test_offline_restart_keeps_pods_and_queues_statuses(
    cloud: ScriptedCloud, make_core: Callable[..., Any]
) -> None:
    core: EdgeCore = await make_core()
    await cloud.wait_for(lambda m: m.resource == f"null/node/{NODE}")
    await deliver(cloud, core, down("insert", "default/configmap/cfg", configmap()))
    await deliver(cloud, core, down("insert", "default/pod/web", pod("web", "uid-web", APP)))
    await deliver(
        cloud, core, down("insert", "default/pod/job", pod("job", "uid-job", APP, "Never"))
    )
    web_pid = running_pid(await cloud.wait_for(is_status("web", "Running")))
    await cloud.wait_for(is_status("job", "Running"))

    # cut: the cloud goes away; the job finishes meanwhile, its status waits in the spool
    await cloud.stop()
    await eventually(lambda: not core.connected or _fail())
    (rootfs(core, "uid-job") / "stop").touch()
    assert core.sync is not None
    spool = core.sync.spool

    def job_done_queued() -> None:
        queued = spool.payload("default/podstatus/job")
        assert queued is not None
        assert Message.decode(queued).content["status"]["phase"] == "Succeeded"

    await eventually(job_done_queued)
    # restart while offline: same processes, local reads, refused writes
    await core.stop()
    assert alive(web_pid)
    core = await make_core()
    assert not core.connected
    assert core.runtime.pod_status("uid-web")["containerStatuses"][0]["containerID"] == (
        f"process://{web_pid}"
    )
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{core.metaserver.url}/api/v1/namespaces/default/pods") as resp:
            names = sorted(p["metadata"]["name"] for p in (await resp.json())["items"])
            assert names == ["job", "web"]
        async with http.get(f"{core.metaserver.url}/api/v1/namespaces/default/configmaps") as r:
            assert (await r.json())["items"][0]["data"] == configmap()["data"]
        async with http.post(
            f"{core.metaserver.url}/api/v1/namespaces/default/configmaps",
            json={"metadata": {"name": "x"}},
        ) as resp:
            assert resp.status == 503
    assert core.sync is not None
    # Coalesced while offline: one message per pod, node and lease, however long it lasted.
    keys = core.sync.spool.keys()
    assert len(core.sync.spool) == len(keys) == len(set(keys))

    # the cloud comes back on the same port: the queue drains, latest status per pod
    mark = len(cloud.up)
    await cloud.start()
    job = await cloud.wait_for(lambda m: m.resource == "default/podstatus/job", since=mark)
    assert job.content["status"]["phase"] == "Succeeded"
    await cloud.wait_for(lambda m: m.resource == f"null/node/{NODE}", since=mark)
    await cloud.wait_for(lambda m: m.resource == f"kube-node-lease/lease/{NODE}", since=mark)
    assert core.connected
    assert alive(web_pid)
    assert core.runtime.pod_status("uid-web")["phase"] == "Running"


def position(cloud: ScriptedCloud, message: Message) -> int:
    """Where ``message`` (this very one: a resent message equals the first send) arrived."""
    return next(i for i, m in enumerate(cloud.up) if m is message)


def sent_count(cloud: ScriptedCloud, msg_id: str) -> int:
    return sum(m.msg_id == msg_id for m in cloud.up)


async def settled(cloud: ScriptedCloud, core: EdgeCore) -> None:
    """Every message sent down before returns once handled (the edge handles them in order)."""
    await deliver(cloud, core, down("insert", "default/configmap/cfg", configmap()))


async def running_web(cloud: ScriptedCloud, core: EdgeCore) -> Message:
    """Start pod ``web``; its Running status as the cloud got it."""
    await cloud.wait_for(lambda m: m.resource == f"null/node/{NODE}")
    await deliver(cloud, core, down("insert", "default/configmap/cfg", configmap()))
    await deliver(cloud, core, down("insert", "default/pod/web", pod("web", "uid-web", APP)))
    return await cloud.wait_for(is_status("web", "Running"))


async def test_unacknowledged_reports_are_resent_and_applied_once(
    cloud: ScriptedCloud, make_core: Callable[..., Any]
) -> None:
    core: EdgeCore = await make_core(ack_timeout=0.3)
    await running_web(cloud, core)
    assert core.sync is not None
    # The cloud stops acknowledging: the pod status stays spooled and goes up again, same seq.
    cloud.hold_acks = True
    mark = len(cloud.frames)
    await deliver(cloud, core, down("insert", "default/pod/job", pod("job", "uid-job", APP)))
    # (The Running status: earlier ones are superseded in the spool, under new sequences.)
    first = await cloud.wait_for_frame(enveloped(is_status("job", "Running")), mark)
    again = await cloud.wait_for_frame(lambda e: e.key == first.key, position_of(cloud, first) + 1)
    assert Message.decode(again.payload).content == Message.decode(first.payload).content
    assert core.sync.spool.holds("default/podstatus/job")
    # ACKs resume: the next resend is applied once (the first two never reached the
    # handler), and nothing more is resent.
    cloud.hold_acks = False

    def acknowledged() -> None:
        assert core.sync is not None and not core.sync.spool.holds("default/podstatus/job")

    await eventually(acknowledged)
    # Each message was applied at most once however often it went up.
    applied = [m.msg_id for m in cloud.up if m.resource == "default/podstatus/job"]
    assert len(applied) == len(set(applied))
    count = sum(1 for e in cloud.frames if e.seq == again.seq)
    mark = len(cloud.up)
    lease = f"kube-node-lease/lease/{NODE}"
    for _ in range(3):  # 3 lease rounds > ack_timeout
        mark = position(cloud, await cloud.wait_for(lambda m: m.resource == lease, mark)) + 1
    assert sum(1 for e in cloud.frames if e.seq == again.seq) == count


async def test_pending_reports_go_again_after_reconnect(
    cloud: ScriptedCloud, make_core: Callable[..., Any]
) -> None:
    core: EdgeCore = await make_core(ack_timeout=300.0)  # only a reconnect resends
    await running_web(cloud, core)
    assert core.sync is not None
    cloud.hold_acks = True
    mark = len(cloud.frames)
    await deliver(cloud, core, down("insert", "default/pod/job", pod("job", "uid-job", APP)))
    await cloud.wait_for_frame(enveloped(is_status("job", "Running")), mark)
    await cloud.stop()
    await eventually(lambda: not core.connected or _fail())
    assert core.sync.spool.holds("default/podstatus/job")  # sent, never acknowledged
    mark = len(cloud.frames)
    await cloud.start()
    # On the new link the unacknowledged status goes again (its latest version).
    again = await cloud.wait_for_frame(lambda e: e.key == "default/podstatus/job", mark)
    assert _holds(is_status("job", "Running"), Message.decode(again.payload))
    # ACKs resume: the next link carries it once more, and it is settled.
    cloud.hold_acks = False
    await cloud.stop()
    await eventually(lambda: not core.connected or _fail())
    await cloud.start()

    def drained() -> None:
        assert core.sync is not None and not core.sync.spool.holds("default/podstatus/job")

    await eventually(drained)


def test_forwarding_shapes() -> None:
    assert request_resource("/api/v1/namespaces/ns/pods/p") == "ns/pod/p"
    assert request_resource("/api/v1/namespaces/ns/configmaps") == "ns/configmap"
    assert request_resource("/api/v1/nodes/n/status") == "null/node/n"
    assert request_resource("/apis/coordination.k8s.io/v1/namespaces/a/leases/l") == "a/lease/l"
    ask = down("insert", "ns/configmap", {})
    assert http_answer(ask.response({"code": 201, "body": {"a": 1}})) == (201, b'{"a":1}')
    assert http_answer(ask.response({"a": 1})) == (200, b'{"a":1}')
    code, _ = http_answer(ask.error("not found: configmap ns/x"))
    assert code == 404


def test_references() -> None:
    p = pod("web", "u", "pass")
    assert _references(p, "ConfigMap", "cfg")
    assert not _references(p, "ConfigMap", "other")
    assert not _references(p, "Secret", "cfg")
    p["spec"]["volumes"] = [{"name": "v", "projected": {"sources": [{"secret": {"name": "s"}}]}}]
    assert _references(p, "Secret", "s")
