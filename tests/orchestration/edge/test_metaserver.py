"""MetaServer: the official ``kubernetes`` client reads the node's objects from the edge store;
writes go to the cloud while online and are refused while offline."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException
from orbiter.orchestration.edge.metamanager import Change, MetaManager
from orbiter.orchestration.edge.metaserver import (
    PLURAL_TO_TYPE,
    TYPE_TO_PLURAL,
    MetaServer,
    Selector,
    SelectorError,
)
from orbiter.orchestration.store import SQLiteStore

from .test_metamanager import WAIT, assert_acked, configmap, message, pod, upsert

THREAD_TIMEOUT = 30  # the sync client's socket timeout: a stuck thread ends by itself


@dataclass
class Cloud:
    """A fake cloud end of ``forward``: records what it is sent, answers what it is told."""

    online: bool = True
    answer: tuple[int, bytes] = (201, b"{}")
    failure: BaseException | None = None
    calls: list[tuple[str, str, str, bytes, str]] = field(default_factory=list)

    async def forward(
        self, method: str, path: str, query: str, body: bytes, *, content_type: str
    ) -> tuple[int, bytes]:
        self.calls.append((method, path, query, body, content_type))
        if self.failure is not None:
            raise self.failure
        return self.answer


@dataclass
class Edge:
    meta: MetaManager
    server: MetaServer
    cloud: Cloud

    async def apply(self, obj: dict[str, Any], op: str = "update") -> None:
        await put(self.meta, obj, op)


async def put(meta: MetaManager, obj: dict[str, Any], op: str = "update") -> None:
    reply = await meta.handle(upsert(obj, op))
    assert reply is not None
    assert_acked(reply)


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[Edge]:
    store = SQLiteStore(str(tmp_path / "edgecore.db"))
    await store.start()
    meta = MetaManager(store)
    cloud = Cloud()
    server = MetaServer(meta, port=0, forward=cloud.forward, connected=lambda: cloud.online)
    await server.start()
    try:
        yield Edge(meta, server, cloud)
    finally:
        await server.stop()
        await store.close()


@pytest.fixture
def v1(edge: Edge) -> Iterator[client.CoreV1Api]:
    conf = client.Configuration()
    conf.host = edge.server.url
    api = client.ApiClient(conf)
    try:
        yield client.CoreV1Api(api)
    finally:
        api.close()


@pytest.fixture
async def http(edge: Edge) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=edge.server.url) as session:
        yield session


async def seed(edge: Edge) -> None:
    await edge.apply(pod("web", 11))
    await edge.apply(pod("db", 12, namespace="data"))
    await edge.apply(
        {
            **configmap("app", 13, mode="a"),
            "metadata": {**configmap("app", 13)["metadata"], "labels": {"tier": "edge"}},
        }
    )
    await edge.apply(configmap("other", 14, mode="b"))
    await edge.apply({"metadata": {"name": "edge-1", "resourceVersion": "15"}, "kind": "Node"})


def test_plural_type_table() -> None:
    for plural, kind in [
        ("pods", "pod"),
        ("configmaps", "configmap"),
        ("secrets", "secret"),
        ("nodes", "node"),
        ("services", "service"),
        ("events", "event"),
        ("leases", "lease"),
    ]:
        assert PLURAL_TO_TYPE[plural] == kind and TYPE_TO_PLURAL[kind] == plural


async def test_discovery(edge: Edge, http: aiohttp.ClientSession, v1: client.CoreV1Api) -> None:
    async with http.get("/version") as resp:
        assert (await resp.json())["major"] == "1"
    async with http.get("/api") as resp:
        assert (await resp.json())["versions"] == ["v1"]
    resources = await asyncio.to_thread(v1.get_api_resources)
    names = {r.name: r for r in resources.resources}
    assert {"pods", "configmaps", "secrets", "nodes", "pods/status"} <= names.keys()
    assert names["nodes"].namespaced is False
    assert "watch" in names["pods"].verbs and "create" in names["pods"].verbs
    async with http.get("/apis") as resp:
        groups = {g["name"] for g in (await resp.json())["groups"]}
    assert "coordination.k8s.io" in groups
    async with http.get("/apis/coordination.k8s.io/v1") as resp:
        assert [r["name"] for r in (await resp.json())["resources"]] == ["leases"]
    async with http.get("/nothing/here") as resp:
        assert resp.status == 404
        assert (await resp.json())["kind"] == "Status"


async def test_the_kubernetes_client_reads(edge: Edge, v1: client.CoreV1Api) -> None:
    await seed(edge)
    pods = await asyncio.to_thread(v1.list_namespaced_pod, "default")
    assert [p.metadata.name for p in pods.items] == ["web"]
    assert pods.items[0].spec.containers[0].image == "busybox"
    everywhere = await asyncio.to_thread(v1.list_pod_for_all_namespaces)
    assert sorted(p.metadata.name for p in everywhere.items) == ["db", "web"]
    # A list is at the LOCAL revision; objects keep the cloud's resourceVersion.
    assert everywhere.metadata.resource_version == str(await edge.meta.revision())
    assert everywhere.items[0].metadata.resource_version in ("11", "12")

    cms = await asyncio.to_thread(v1.list_namespaced_config_map, "default")
    assert [c.metadata.name for c in cms.items] == ["app", "other"]
    assert cms.items[0].data == {"mode": "a"}
    one = await asyncio.to_thread(v1.read_namespaced_config_map, "other", "default")
    assert one.data == {"mode": "b"} and one.metadata.resource_version == "14"
    node = await asyncio.to_thread(v1.read_node, "edge-1")
    assert (node.metadata.name, node.kind, node.api_version) == ("edge-1", "Node", "v1")

    with pytest.raises(ApiException) as info:
        await asyncio.to_thread(v1.read_namespaced_config_map, "missing", "default")
    assert info.value.status == 404
    status = json.loads(info.value.body)
    assert status["message"] == 'configmaps "missing" not found'
    assert status["reason"] == "NotFound" and status["details"]["name"] == "missing"
    with pytest.raises(ApiException) as info:
        await asyncio.to_thread(v1.read_namespaced_pod, "web", "data")
    assert json.loads(info.value.body)["message"] == 'pods "web" not found'

    selected = await asyncio.to_thread(
        v1.list_namespaced_config_map, "default", label_selector="tier in (edge, core)"
    )
    assert [c.metadata.name for c in selected.items] == ["app"]
    selected = await asyncio.to_thread(
        v1.list_config_map_for_all_namespaces, field_selector="metadata.name!=app"
    )
    assert [c.metadata.name for c in selected.items] == ["other"]
    selected = await asyncio.to_thread(
        v1.list_pod_for_all_namespaces,
        field_selector="metadata.namespace=data,spec.nodeName=edge-1",
    )
    assert [p.metadata.name for p in selected.items] == ["db"]
    for bad in (
        {"label_selector": "tier in edge"},
        {"field_selector": "spec.secret=x"},
        {"watch": True, "timeout_seconds": -1},
    ):
        with pytest.raises(ApiException) as info:
            await asyncio.to_thread(v1.list_namespaced_config_map, "default", **bad)
        assert info.value.status == 400
        assert json.loads(info.value.body)["reason"] == "BadRequest"


def _watch_until(
    v1: client.CoreV1Api, rv: str, done: str, on_event: Callable[[], object] = lambda: None
) -> list[tuple[str, str, str, str]]:
    """(type, name, data.mode, resourceVersion) of each event until ``done`` mode is seen."""
    w = watch.Watch()
    stream = w.stream(
        v1.list_namespaced_config_map,
        "default",
        resource_version=rv,
        _request_timeout=THREAD_TIMEOUT,
    )
    seen: list[tuple[str, str, str, str]] = []
    try:
        for ev in stream:
            obj = ev["raw_object"]
            mode = (obj.get("data") or {}).get("mode", "")
            seen.append(
                (ev["type"], obj["metadata"]["name"], mode, obj["metadata"]["resourceVersion"])
            )
            on_event()
            if mode == done:
                break
    finally:
        stream.close()
    return seen


async def test_a_watch_from_a_list_sees_later_updates(edge: Edge, v1: client.CoreV1Api) -> None:
    await seed(edge)
    listed = await asyncio.to_thread(v1.list_namespaced_config_map, "default")
    watching = asyncio.ensure_future(
        asyncio.to_thread(_watch_until, v1, listed.metadata.resource_version, "updated")
    )
    await edge.apply(pod("web", 20))  # another type
    await edge.apply(configmap("other", 21, mode="updated"))
    async with asyncio.timeout(WAIT + THREAD_TIMEOUT):
        seen = await watching
    assert seen == [("MODIFIED", "other", "updated", "21")]


class WatchCounting(MetaManager):
    """Records where each watch starts (``after``), and says when one starts."""

    def __init__(self, store: SQLiteStore) -> None:
        super().__init__(store)
        self.afters: list[int] = []
        self.started = asyncio.Event()

    def watch(
        self, kind: str | None = None, namespace: str | None = None, *, after: int = 0
    ) -> AsyncGenerator[Change, None]:
        self.afters.append(after)
        self.started.set()
        return super().watch(kind, namespace, after=after)


async def test_the_client_resumes_a_watch_the_server_ended(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "edgecore.db"))
    await store.start()
    meta = WatchCounting(store)
    conf = client.Configuration()
    try:
        async with MetaServer(meta, port=0, watch_timeout=0.2) as server:
            conf.host = server.url
            with client.ApiClient(conf) as api:
                v1 = client.CoreV1Api(api)
                await put(meta, configmap("app", 100, mode="0"))
                listed = await asyncio.to_thread(v1.list_namespaced_config_map, "default")
                loop, saw_first = asyncio.get_running_loop(), asyncio.Event()
                watching = asyncio.ensure_future(
                    asyncio.to_thread(
                        _watch_until,
                        v1,
                        listed.metadata.resource_version,
                        "final",
                        lambda: loop.call_soon_threadsafe(saw_first.set),
                    )
                )
                await put(meta, configmap("app", 101, mode="1"))
                first_at = await meta.revision()
                async with asyncio.timeout(WAIT):
                    await saw_first.wait()
                    # The server ends watches after 0.2 s; wait for the client's next one, which
                    # resumes from the resourceVersion of the object it saw: the cloud's "101".
                    meta.started.clear()
                    await meta.started.wait()
                assert meta.afters[-1] == first_at  # mapped back to the local revision
                await put(meta, configmap("app", 102, mode="final"))
                async with asyncio.timeout(WAIT + THREAD_TIMEOUT):
                    seen = await watching
    finally:
        await store.close()
    assert [(t, mode, rv) for t, _, mode, rv in seen] == [
        ("MODIFIED", "1", "101"),
        ("MODIFIED", "final", "102"),
    ]


async def read_events(resp: aiohttp.ClientResponse, count: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(WAIT):
        while len(events) < count:
            line = await resp.content.readline()
            assert line, f"the stream ended after {events}"
            events.append(json.loads(line))
    return events


async def test_watch_resumes_from_an_object_resource_version(
    edge: Edge, http: aiohttp.ClientSession
) -> None:
    await seed(edge)
    path = "/api/v1/namespaces/default/configmaps"
    async with http.get(path) as resp:
        rv = (await resp.json())["metadata"]["resourceVersion"]
    await edge.apply(configmap("other", 30, mode="1"))
    await edge.apply(configmap("other", 31, mode="2"))
    async with http.get(path, params={"watch": "true", "resourceVersion": rv}) as resp:
        first = (await read_events(resp, 1))[0]
    assert first["object"]["metadata"]["resourceVersion"] == "30"
    # Clients resume from the last object's resourceVersion (a cloud one): no gap, no repeat.
    async with http.get(path, params={"watch": "true", "resourceVersion": "30"}) as resp:
        events = await read_events(resp, 1)
        await edge.apply(configmap("app", 32, mode="3"))
        events += await read_events(resp, 1)
    assert [e["object"]["data"]["mode"] for e in events] == ["2", "3"]
    # A resourceVersion the server never handed out: 410 Expired, the client relists.
    async with http.get(path, params={"watch": "true", "resourceVersion": "999999"}) as resp:
        (gone,) = await read_events(resp, 1)
        assert await resp.content.read() == b""
    assert gone["type"] == "ERROR" and gone["object"]["code"] == 410


async def test_watch_with_selectors_and_initial_state(
    edge: Edge, http: aiohttp.ClientSession
) -> None:
    await seed(edge)
    params = {"watch": "1", "labelSelector": "tier=edge", "timeoutSeconds": "30"}
    async with http.get("/api/v1/configmaps", params=params) as resp:
        (initial,) = await read_events(resp, 1)  # no resourceVersion: current state first
        assert (initial["type"], initial["object"]["metadata"]["name"]) == ("ADDED", "app")
        labelled = configmap("other", 40, mode="b")
        labelled["metadata"]["labels"] = {"tier": "edge"}
        await edge.apply(labelled)  # enters the selection
        await edge.apply(configmap("app", 41, mode="a"))  # leaves it
        await edge.apply(configmap("app", 42, mode="z"))  # outside: not seen
        await edge.meta.handle(message("delete", "default/configmap/other", None))
        events = await read_events(resp, 3)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "other"),
        ("DELETED", "app"),
        ("DELETED", "other"),
    ]
    assert events[0]["object"]["kind"] == "ConfigMap"


async def test_writes_are_forwarded_online_and_refused_offline(
    edge: Edge, v1: client.CoreV1Api
) -> None:
    created = configmap("new", 50, mode="n")
    edge.cloud.answer = (201, json.dumps(created).encode())
    got = await asyncio.to_thread(
        v1.create_namespaced_config_map, "default", {"metadata": {"name": "new"}}, dry_run="All"
    )
    assert got.metadata.resource_version == "50"
    method, path, query, body, _ = edge.cloud.calls[-1]
    assert (method, path, query) == ("POST", "/api/v1/namespaces/default/configmaps", "dryRun=All")
    assert json.loads(body) == {"metadata": {"name": "new"}}

    edge.cloud.answer = (200, json.dumps(created).encode())
    await asyncio.to_thread(v1.patch_namespaced_config_map, "new", "default", {"data": {"a": "b"}})
    assert edge.cloud.calls[-1][:2] == ("PATCH", "/api/v1/namespaces/default/configmaps/new")
    assert "patch" in edge.cloud.calls[-1][4]  # the patch flavour travels with it
    # The cloud's refusal comes back as it is.
    edge.cloud.answer = (409, b'{"kind":"Status","code":409,"reason":"AlreadyExists"}')
    with pytest.raises(ApiException) as info:
        await asyncio.to_thread(v1.delete_namespaced_config_map, "new", "default")
    assert info.value.status == 409

    calls = len(edge.cloud.calls)
    edge.cloud.online = False
    with pytest.raises(ApiException) as info:
        await asyncio.to_thread(
            v1.create_namespaced_config_map, "default", {"metadata": {"name": "x"}}
        )
    assert info.value.status == 503
    status = json.loads(info.value.body)
    assert status["reason"] == "ServiceUnavailable"
    assert status["message"].startswith("the node is offline; writes need the cloud: POST")
    assert len(edge.cloud.calls) == calls  # nothing was sent

    # The link drops while the write is on its way: 503 too.
    edge.cloud.online, edge.cloud.failure = True, ConnectionError("the cloud is not connected")
    with pytest.raises(ApiException) as info:
        await asyncio.to_thread(v1.delete_namespaced_pod, "web", "default")
    assert info.value.status == 503
    # Reads still work offline.
    edge.cloud.online = False
    await edge.apply(pod("web", 60))
    assert (
        await asyncio.to_thread(v1.read_namespaced_pod, "web", "default")
    ).metadata.name == "web"


async def test_without_forward_writes_are_refused(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "edgecore.db"))
    await store.start()
    try:
        async with (
            MetaServer(MetaManager(store), port=0) as server,
            aiohttp.ClientSession(base_url=server.url) as http,
            http.post("/api/v1/namespaces/default/configmaps", json={}) as resp,
        ):
            assert resp.status == 405
            assert "read-only" in (await resp.json())["message"]
    finally:
        await store.close()


async def test_stop_ends_open_watches(edge: Edge, http: aiohttp.ClientSession) -> None:
    await seed(edge)
    async with http.get("/api/v1/pods", params={"watch": "true"}) as resp:
        assert len(await read_events(resp, 2)) == 2
        async with asyncio.timeout(WAIT):
            await edge.server.stop()
            assert await resp.content.read() == b""


def test_only_loopback(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not loopback"):
        MetaServer(MetaManager(SQLiteStore(str(tmp_path / "x.db"))), host="0.0.0.0")


@pytest.mark.parametrize(
    ("labels", "fields", "obj", "expected"),
    [
        ("a=1", "", {"metadata": {"labels": {"a": "1"}}}, True),
        ("a==1,b", "", {"metadata": {"labels": {"a": "1"}}}, False),
        ("a!=1", "", {"metadata": {}}, True),
        ("!a", "", {"metadata": {"labels": {"b": "1"}}}, True),
        ("a notin (1, 2)", "", {"metadata": {"labels": {"a": "3"}}}, True),
        ("example.com/a in (x)", "", {"metadata": {"labels": {"example.com/a": "x"}}}, True),
        ("", "metadata.name=n", {"metadata": {"name": "n"}}, True),
        ("", "metadata.namespace!=", {"metadata": {"name": "n"}}, False),
    ],
)
def test_selector(labels: str, fields: str, obj: dict[str, Any], expected: bool) -> None:
    assert Selector(labels, fields, "ConfigMap")(obj) is expected


@pytest.mark.parametrize(
    ("labels", "fields"), [("a in 1", ""), ("a=(", ""), ("", "status.phase=x")]
)
def test_bad_selectors(labels: str, fields: str) -> None:
    with pytest.raises(SelectorError):
        Selector(labels, fields, "ConfigMap")
