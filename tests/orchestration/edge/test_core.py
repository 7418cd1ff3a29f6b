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
from orbiter.orchestration.edge.core import EdgeCore, _references
from orbiter.orchestration.edge.outbox import Outbox, http_answer, request_resource
from orbiter.orchestration.edge.runtime import BackoffPolicy, ProcessRuntime
from orbiter.orchestration.protocol import KEEPALIVE, Message

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
        self._changed = asyncio.Event()
        self.hub: CloudHub | None = None
        self.port = 0

    async def start(self) -> None:
        self.hub = CloudHub(self._ctx, handler=self._handle, port=self.port)
        await self.hub.start()
        self.port = self.hub.port

    async def stop(self) -> None:
        if self.hub is not None:
            await self.hub.stop()
            self.hub = None

    async def _handle(self, node: str, message: Message) -> None:
        assert node == NODE
        if message.operation != KEEPALIVE:
            self.up.append(message)
            self._changed.set()

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

    # cut: the cloud goes away; the job finishes meanwhile, its status waits in the outbox
    await cloud.stop()
    await eventually(lambda: not core.connected or _fail())
    (rootfs(core, "uid-job") / "stop").touch()
    assert core.outbox is not None
    outbox = core.outbox

    def job_done_queued() -> None:
        queued = outbox.get("default/podstatus/job")
        assert queued is not None and queued.content["status"]["phase"] == "Succeeded"

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
    assert core.outbox is not None
    rows = [p.key for p in core.outbox.pending()]
    assert len(rows) == len(set(rows))  # one row per pod / node / lease

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


async def test_outbox_coalesces_per_key_and_survives_reopen(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    for n in range(3):
        box.put("default/podstatus/a", down("update", "default/podstatus/a", {"n": n}))
    box.put("default/podstatus/b", down("update", "default/podstatus/b", {"n": 0}))
    seq = box.put("null/node/x", down("insert", "null/node/x", {}), first=True)
    box.close()
    box = Outbox(tmp_path / "outbox.db")
    pending = box.pending()
    assert [p.key for p in pending] == ["null/node/x", "default/podstatus/a", "default/podstatus/b"]
    assert pending[1].message.content == {"n": 2}
    box.put("null/node/x", down("insert", "null/node/x", {"new": True}))
    assert not box.remove("null/node/x", seq)  # replaced meanwhile: the newer one stays
    assert len(box) == 3
    box.close()


def test_outbox_keeps_rows_until_answered(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    box.put("a", down("update", "default/podstatus/a", {"n": 0}))
    box.put("b", down("update", "default/podstatus/b", {"n": 0}))
    a, b = box.pending()
    box.sent(a, deadline=10.0)
    box.sent(b, deadline=20.0)
    assert box.due(now=5.0) == [] and box.next_deadline() == 10.0
    assert box.due(now=15.0) == [a]  # not answered in time: sent again
    # a newer report supersedes the one in flight: it is due, and the old ACK keeps it
    box.put("a", down("update", "default/podstatus/a", {"n": 1}))
    (newer,) = box.due(now=5.0)
    assert newer.message.content == {"n": 1}
    assert box.acknowledge(a.message.msg_id) == "a"
    assert box.get("a") == newer.message
    box.sent(newer, deadline=10.0)
    assert box.acknowledge(newer.message.msg_id) == "a"
    assert box.acknowledge(b.message.msg_id) == "b"
    assert len(box) == 0 and box.next_deadline() is None
    assert box.acknowledge(b.message.msg_id) is None  # answered twice: nothing to drop
    # a lost link: everything pending is due again, in order
    box.put("c", down("update", "default/podstatus/c", {}))
    box.put("d", down("update", "default/podstatus/d", {}))
    for item in box.pending():
        box.sent(item, deadline=10.0)
    box.forget_sent()
    assert [p.key for p in box.due(now=0.0)] == ["c", "d"]
    c = box.pending()[0]
    box.sent(c, deadline=10.0)
    assert box.remove("c", c.seq) and box.next_deadline() is None  # no deadline left behind
    box.close()


def position(cloud: ScriptedCloud, message: Message) -> int:
    """Where ``message`` (this very one: a resent message equals the first send) arrived."""
    return next(i for i, m in enumerate(cloud.up) if m is message)


def sent_count(cloud: ScriptedCloud, msg_id: str) -> int:
    return sum(m.msg_id == msg_id for m in cloud.up)


async def settled(cloud: ScriptedCloud, core: EdgeCore) -> None:
    """Every message sent down before returns once handled (the edge handles them in order)."""
    await deliver(cloud, core, down("insert", "default/configmap/cfg", configmap()))


async def running_web(cloud: ScriptedCloud, core: EdgeCore) -> Message:
    """Start pod ``web``; its Running status, as it is still queued in the outbox."""
    await cloud.wait_for(lambda m: m.resource == f"null/node/{NODE}")
    await deliver(cloud, core, down("insert", "default/configmap/cfg", configmap()))
    await deliver(cloud, core, down("insert", "default/pod/web", pod("web", "uid-web", APP)))
    running = await cloud.wait_for(is_status("web", "Running"))
    assert core.outbox is not None
    assert core.outbox.get("default/podstatus/web") == running  # sent, not answered: kept
    return running


async def test_unanswered_status_is_resent_until_answered(
    cloud: ScriptedCloud, make_core: Callable[..., Any]
) -> None:
    core: EdgeCore = await make_core(ack_timeout=0.3)
    running = await running_web(cloud, core)
    # no answer within ack_timeout: the same message (same msg_id) goes up again
    index = position(cloud, running)
    again = await cloud.wait_for(lambda m: m.msg_id == running.msg_id, since=index + 1)
    await cloud.send(again.response({"status": {}}, source="edgecontroller"))
    await settled(cloud, core)
    assert core.outbox is not None
    assert core.outbox.get("default/podstatus/web") is None
    # answered: no more resends (the node status and lease keep flowing meanwhile)
    count = sent_count(cloud, running.msg_id)
    mark = len(cloud.up)
    lease = f"kube-node-lease/lease/{NODE}"
    for _ in range(3):  # 3 lease rounds > ack_timeout
        mark = position(cloud, await cloud.wait_for(lambda m: m.resource == lease, mark)) + 1
    assert sent_count(cloud, running.msg_id) == count


async def test_pending_status_is_resent_after_reconnect_and_error_drops_it(
    cloud: ScriptedCloud, make_core: Callable[..., Any]
) -> None:
    core: EdgeCore = await make_core(ack_timeout=300.0)  # only a reconnect resends
    running = await running_web(cloud, core)
    node = await cloud.wait_for(lambda m: m.resource == f"null/node/{NODE}")
    await cloud.stop()
    await eventually(lambda: not core.connected or _fail())
    mark = len(cloud.up)
    await cloud.start()
    # pending rows go up again in order: the (re-)registration first, then the pod status
    again = await cloud.wait_for(lambda m: m.msg_id == running.msg_id, since=mark)
    node_again = await cloud.wait_for(lambda m: m.resource == node.resource, since=mark)
    assert position(cloud, node_again) < position(cloud, again)
    # the superseded registration's late ACK leaves the newer one queued
    assert node_again.msg_id != node.msg_id
    await cloud.send(node.response("OK", source="edgecontroller"))
    await settled(cloud, core)
    assert core.outbox is not None
    assert core.outbox.get(node.resource) == node_again
    await cloud.send(node_again.response("OK", source="edgecontroller"))
    # the cloud refuses the status: dropped, not resent
    await cloud.send(again.error("forbidden: not yours", source="edgecontroller"))
    await settled(cloud, core)
    assert core.outbox.get("default/podstatus/web") is None
    assert core.outbox.get(node.resource) is None


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
