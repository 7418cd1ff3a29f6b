"""KubeClient on the wire, against a scripted server: what it sends and how it reads streams.

Our API server never splits a watch event across chunks nor reports 410 mid-stream; a real
one may, so a scripted server does here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web
from orbiter.orchestration.client import CONFIGMAPS, ExpiredError, KubeClient, PatchType

# A watch stream cut at awkward places: mid-event, mid-line, between lines.
WATCH_CHUNKS = [
    b'{"type":"ADDED","object":{"metadata":{"name":"a","resourceVersion":"5"}}}\n{"type":"MOD',
    b'IFIED","object":{"metadata":{"name":"a","resourceVersion":"6"}}}',
    b'\n\n{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"7"}}}\n',
    b'{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","status":"Failure",',
    b'"code":410,"reason":"Expired","message":"too old resource version: 1 (7)"}}\n',
]


class Scripted:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "content_type": request.headers.get("Content-Type", ""),
                "authorization": request.headers.get("Authorization", ""),
                "body": orjson.loads(body) if body else None,
            }
        )
        if request.query.get("watch") == "true":
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for chunk in WATCH_CHUNKS:
                await resp.write(chunk)
            await resp.write_eof()
            return resp
        return web.json_response({"kind": "ConfigMap", "metadata": {"name": "a"}})


@pytest.fixture
async def scripted(tmp_path: Path) -> AsyncIterator[tuple[Scripted, KubeClient]]:
    script = Scripted()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", script.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "secret-token"}}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "ctx",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    client = KubeClient.from_kubeconfig(path)
    try:
        yield script, client
    finally:
        await client.close()
        await runner.cleanup()


async def test_watch_parses_split_lines_and_raises_expired_on_error_event(
    scripted: tuple[Scripted, KubeClient],
) -> None:
    script, client = scripted
    seen: list[tuple[str, str]] = []
    with pytest.raises(ExpiredError) as expired:
        async for event in client.watch(
            CONFIGMAPS, "ns", resource_version="4", label_selector="a=b,c!=d", timeout_seconds=9
        ):
            seen.append((event["type"], event["object"]["metadata"]["resourceVersion"]))
    assert seen == [("ADDED", "5"), ("MODIFIED", "6"), ("BOOKMARK", "7")]
    assert (expired.value.status, expired.value.reason) == (410, "Expired")
    [request] = script.requests
    assert request["path"] == "/api/v1/namespaces/ns/configmaps"
    assert request["query"] == {
        "watch": "true",
        "labelSelector": "a=b,c!=d",
        "resourceVersion": "4",
        "allowWatchBookmarks": "true",
        "timeoutSeconds": "9",
    }
    assert request["authorization"] == "Bearer secret-token"


@pytest.mark.parametrize(
    ("patch_type", "patch", "content_type", "query"),
    [
        ("merge", {"data": {"k": None}}, "application/merge-patch+json", {}),
        (
            "json",
            [{"op": "remove", "path": "/data/k"}],
            "application/json-patch+json",
            {},
        ),
        ("strategic", {"data": {}}, "application/strategic-merge-patch+json", {}),
        (
            "apply",
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}},
            "application/apply-patch+yaml",
            {"fieldManager": "me", "force": "true"},
        ),
    ],
)
async def test_patch_content_types(
    scripted: tuple[Scripted, KubeClient],
    patch_type: PatchType,
    patch: Any,
    content_type: str,
    query: dict[str, str],
) -> None:
    script, client = scripted
    manager = "me" if patch_type == "apply" else ""
    await client.patch(CONFIGMAPS, "a", patch, "ns", patch_type=patch_type, field_manager=manager)
    [request] = script.requests
    assert (request["method"], request["path"]) == ("PATCH", "/api/v1/namespaces/ns/configmaps/a")
    assert request["content_type"] == content_type
    assert request["query"] == query
    assert request["body"] == patch


async def test_delete_sends_delete_options(scripted: tuple[Scripted, KubeClient]) -> None:
    script, client = scripted
    await client.delete(
        CONFIGMAPS, "a", "ns", propagation_policy="Foreground", preconditions={"uid": "u1"}
    )
    [request] = script.requests
    assert request["method"] == "DELETE"
    assert request["body"] == {
        "kind": "DeleteOptions",
        "apiVersion": "v1",
        "propagationPolicy": "Foreground",
        "preconditions": {"uid": "u1"},
    }
