"""Apps on an edge node write through the node's MetaServer; the node forwards each write
to the cloud, which performs it as the node (the node authorizer decides) and answers
``{code, body}``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from orbiter.orchestration.client import EVENTS, PODS, SECRETS, NotFoundError
from orbiter.orchestration.cloud.forwarding import MAX_BODY, SOURCE, WriteForwarding
from orbiter.orchestration.protocol import GROUP_RESOURCE, RESPONSE, Message

from orbiter.testing import Cluster

from ..converging import until as eventually

WAIT = 60.0
NODE = "edge-0"
JSON = "application/json"


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with Cluster(tmp_path, edges=1) as c:
        await c.wait_ready()
        yield c


@pytest.fixture
async def http(cluster: Cluster) -> AsyncIterator[aiohttp.ClientSession]:
    base = f"http://127.0.0.1:{cluster.edges[0].metaserver.port}"
    async with aiohttp.ClientSession(base) as session:
        yield session


async def send(
    http: aiohttp.ClientSession, method: str, path: str, body: bytes, content_type: str = JSON
) -> tuple[int, dict[str, Any]]:
    async with http.request(
        method, path, data=body, headers={"Content-Type": content_type}
    ) as resp:
        return resp.status, orjson.loads(await resp.read())


async def test_create_reaches_the_api_as_the_node(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    # The node may create its own Node object: authorized, then refused by the API (409).
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}
    status, body = await send(http, "POST", "/api/v1/nodes", orjson.dumps(node))
    assert status == 409, body
    assert body["reason"] == "AlreadyExists"
    # Another node's is not its to create.
    other = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "edge-9"}}
    status, body = await send(http, "POST", "/api/v1/nodes", orjson.dumps(other))
    assert status == 403, body
    assert "node 'edge-0' cannot modify node 'edge-9'" in body["message"]
    # Events a node (or an app on it) records are allowed, as kube's system:node role does.
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "app-started"},
        "involvedObject": {"kind": "Pod", "namespace": "default", "name": "app"},
        "reason": "Started",
    }
    status, body = await send(
        http, "POST", "/api/v1/namespaces/default/events", orjson.dumps(event)
    )
    assert status == 201, body
    stored = await cluster.client.get(EVENTS, "app-started", "default")
    assert stored["reason"] == "Started"
    # ... but deleting them is not the node's business.
    status, body = await send(http, "DELETE", "/api/v1/namespaces/default/events/app-started", b"")
    assert status == 403, body


async def test_patch_own_pod_status(cluster: Cluster, http: aiohttp.ClientSession) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "app"},
        "spec": {
            "nodeName": NODE,
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {"name": "c", "image": "python", "command": ["python", "-c", "input()"]}
            ],
        },
    }
    await cluster.client.create(PODS, pod, "default")

    async def running() -> bool:
        got = await cluster.client.get(PODS, "app", "default")
        return (got.get("status") or {}).get("phase") == "Running"

    await eventually(running, "the pod runs on the edge")
    # status.message: a field the node's own status reports (merge patches) leave alone.
    patch = {"status": {"message": "self-check passed"}}
    status, body = await send(
        http,
        "PATCH",
        "/api/v1/namespaces/default/pods/app/status",
        orjson.dumps(patch),
        "application/strategic-merge-patch+json",
    )
    assert status == 200, body
    assert body["status"]["message"] == "self-check passed"
    assert body["status"]["phase"] == "Running"  # merged into the status, not replacing it
    got = await cluster.client.get(PODS, "app", "default")
    assert got["status"]["message"] == "self-check passed"

    # Its spec is not the node's to change.
    status, body = await send(
        http,
        "PATCH",
        "/api/v1/namespaces/default/pods/app",
        b'{"metadata": {"labels": {"x": "y"}}}',
        "application/merge-patch+json",
    )
    assert status == 403, body
    assert body["reason"] == "Forbidden"


async def test_node_may_not_create_secret(cluster: Cluster, http: aiohttp.ClientSession) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "stolen"}}
    status, body = await send(
        http, "POST", "/api/v1/namespaces/default/secrets", orjson.dumps(secret)
    )
    assert status == 403, body
    assert body["kind"] == "Status"
    assert body["reason"] == "Forbidden"
    assert body["message"].startswith(
        'secrets "stolen" is forbidden: User "system:node:edge-0" cannot create resource '
        '"secrets" in API group "" in the namespace "default"'
    )
    with pytest.raises(NotFoundError):
        await cluster.client.get(SECRETS, "stolen", "default")


async def test_malformed_and_foreign_requests(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    status, body = await send(http, "POST", "/api/v1/namespaces/default/events", b"{not json")
    assert status == 400, body
    assert body["reason"] == "BadRequest"
    assert "not valid JSON" in body["message"]

    status, body = await send(
        http,
        "PATCH",
        "/api/v1/nodes/edge-0/status",
        b"[[",
        "application/merge-patch+json",
    )
    assert status == 400, body

    status, body = await send(http, "POST", "/api/v1", b"{}")  # not a resource path
    assert status == 400, body
    assert "not an API resource path" in body["message"]

    status, body = await send(http, "POST", "/api/v1/namespaces/default/nosuchthings", b"{}")
    assert status == 404, body


async def test_body_cap_and_bad_content(cluster: Cluster) -> None:
    """The cloud's own checks, for what a MetaServer would not send."""
    writes = WriteForwarding(cluster.cloud.server.api)

    async def answer(content: Any) -> dict[str, Any]:
        request = Message(SOURCE, GROUP_RESOURCE, "insert", "default/event", content)
        reply = await writes.handle(NODE, request)
        assert reply.operation == RESPONSE and reply.parent_msg_id == request.msg_id
        assert isinstance(reply.content, dict)
        return reply.content

    big = {
        "method": "POST",
        "path": "/api/v1/namespaces/default/events",
        "query": "",
        "contentType": JSON,
        "body": " " * (MAX_BODY + 1),
    }
    assert (await answer(big))["code"] == 413
    assert (await answer("not an object"))["code"] == 400
    assert (await answer({**big, "body": "{}", "path": "/healthz"}))["code"] == 400
    assert (await answer({**big, "body": "{}", "method": "GET"}))["code"] == 405
