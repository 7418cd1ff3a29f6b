"""MetaManager: the node's durable copy of what the cloud sent, ACKed only once committed."""

from __future__ import annotations

import asyncio
import random
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from orbiter.orchestration.edge.metamanager import (
    Change,
    MetaManager,
    SecretsError,
    load_or_create_key,
)
from orbiter.orchestration.protocol import Message
from orbiter.orchestration.store import KeyValue, SQLiteStore

WAIT = 10.0  # seconds any awaited condition may take before the test fails


def message(op: str, resource: str, content: Any, *, rv: str = "") -> Message:
    return Message("edgecontroller", "resource", op, resource, content, resource_version=rv)


def configmap(
    name: str, rv: int, namespace: str = "default", uid: str = "", **data: str
) -> dict[str, Any]:
    meta = {"name": name, "namespace": namespace, "resourceVersion": str(rv), "uid": uid or name}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def pod(name: str, rv: int, node: str = "edge-1", namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": str(rv), "uid": name},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
    }


def upsert(obj: dict[str, Any], op: str = "update") -> Message:
    meta = obj["metadata"]
    resource = f"{meta.get('namespace') or 'null'}/{obj['kind'].lower()}/{meta['name']}"
    return message(op, resource, obj, rv=meta.get("resourceVersion", ""))


async def apply(meta: MetaManager, msg: Message) -> Message:
    reply = await meta.handle(msg)
    assert reply is not None
    assert reply.parent_msg_id == msg.msg_id
    assert reply.source == "metamanager"
    assert reply.resource == msg.resource
    return reply


def assert_acked(reply: Message) -> None:
    assert (reply.operation, reply.content) == ("response", "OK"), reply.content


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "edge" / "edgecore.db")


@pytest.fixture
async def store(db: str) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(db)
    await s.start()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def meta(store: SQLiteStore) -> MetaManager:
    return MetaManager(store)


async def read_fresh(db: str, key: str) -> KeyValue | None:
    """Read ``key`` through a second store on the same file: only committed data is there."""
    other = SQLiteStore(db)
    await other.start()
    try:
        return await other.get(key)
    finally:
        await other.close()


class GatedStore(SQLiteStore):
    """Writes wait for ``gate``: shows that ``handle`` does not answer before they finish."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.gate, self.writing = asyncio.Event(), asyncio.Event()

    async def create(self, key: str, value: bytes) -> KeyValue:
        self.writing.set()
        await self.gate.wait()
        return await super().create(key, value)


async def test_ack_only_after_the_write_committed(db: str) -> None:
    store = GatedStore(db)
    await store.start()
    try:
        meta = MetaManager(store)
        msg = upsert(configmap("app", 7, mode="a"), "insert")
        handling = asyncio.create_task(meta.handle(msg))
        async with asyncio.timeout(WAIT):
            await store.writing.wait()
        assert not handling.done()  # the write is held, so is the ACK
        store.gate.set()
        async with asyncio.timeout(WAIT):
            reply = await handling
        assert reply is not None
        assert_acked(reply)
        # The moment the ACK exists, the object is on disk for anyone opening the file.
        kv = await read_fresh(db, "default/configmap/app")
        assert kv is not None and b'"mode":"a"' in kv.value
    finally:
        await store.close()


async def test_insert_update_patch_upsert_and_reads(meta: MetaManager, db: str) -> None:
    assert_acked(await apply(meta, upsert(configmap("a", 1, mode="x"), "insert")))
    assert_acked(await apply(meta, upsert(configmap("a", 2, mode="y"), "update")))
    assert_acked(await apply(meta, upsert(configmap("b", 3, "other"), "patch")))  # upsert
    node = {"kind": "Node", "metadata": {"name": "edge-1", "resourceVersion": "4"}}
    assert_acked(await apply(meta, message("update", "null/node/edge-1", node)))

    got = await meta.get("default", "configmap", "a")
    assert got is not None and got["data"] == {"mode": "y"}
    assert await meta.get("default", "configmap", "zzz") is None
    assert [o["metadata"]["name"] for o in await meta.list("configmap")] == ["a", "b"]
    assert [o["metadata"]["name"] for o in await meta.list("configmap", "other")] == ["b"]
    assert await meta.get(None, "node", "edge-1") == node  # cluster-scoped: key null/node/…
    assert await read_fresh(db, "null/node/edge-1") is not None
    snap = await meta.snapshot("configmap")
    assert snap.revision == await meta.revision() == 4


async def test_same_message_twice_is_harmless(meta: MetaManager) -> None:
    msg = upsert(configmap("app", 5, mode="a"), "insert")
    assert_acked(await apply(meta, msg))
    revision = await meta.revision()
    assert_acked(await apply(meta, msg))  # the cloud resends what it saw no ACK for
    assert_acked(await apply(meta, upsert(configmap("app", 5, mode="a"))))
    assert await meta.revision() == revision  # nothing written, no watch event
    delete = message("delete", "default/configmap/app", configmap("app", 5))
    assert_acked(await apply(meta, delete))
    assert_acked(await apply(meta, delete))
    assert await meta.get("default", "configmap", "app") is None


async def test_an_older_resource_version_never_rolls_back(meta: MetaManager) -> None:
    assert_acked(await apply(meta, upsert(configmap("app", 9, mode="new"))))
    assert_acked(await apply(meta, upsert(configmap("app", 8, mode="old"))))  # ACKed, ignored
    got = await meta.get("default", "configmap", "app")
    assert got is not None and got["data"] == {"mode": "new"}
    # The header's resourceVersion counts when the object carries none.
    bare = configmap("app", 0, mode="header")
    del bare["metadata"]["resourceVersion"]
    assert_acked(await apply(meta, message("update", "default/configmap/app", bare, rv="3")))
    got = await meta.get("default", "configmap", "app")
    assert got is not None and got["data"] == {"mode": "new"}


async def test_concurrent_updates_keep_the_newest(meta: MetaManager) -> None:
    versions = list(range(1, 31))
    random.Random(7).shuffle(versions)
    msgs = [upsert(configmap("app", rv, mode=str(rv))) for rv in versions]
    async with asyncio.timeout(WAIT):
        replies = await asyncio.gather(*(meta.handle(m) for m in msgs))
    assert all(r is not None and r.content == "OK" for r in replies)
    got = await meta.get("default", "configmap", "app")
    assert got is not None and got["data"] == {"mode": "30"}


async def test_delete(meta: MetaManager) -> None:
    assert_acked(await apply(meta, upsert(configmap("a", 1))))
    assert_acked(await apply(meta, upsert(configmap("b", 2, uid="uid-new"))))
    assert_acked(await apply(meta, message("delete", "default/configmap/a", None)))
    assert await meta.get("default", "configmap", "a") is None
    # A delete of an older incarnation (another UID) leaves the newer object alone.
    stale = message("delete", "default/configmap/b", configmap("b", 1, uid="uid-old"))
    assert_acked(await apply(meta, stale))
    assert await meta.get("default", "configmap", "b") is not None
    assert_acked(await apply(meta, message("delete", "default/configmap/b", configmap("b", 3))))
    assert await meta.get("default", "configmap", "b") is not None  # uid "b" is not uid-new
    gone = message("delete", "default/configmap/b", configmap("b", 3, uid="uid-new"))
    assert_acked(await apply(meta, gone))
    assert await meta.list("configmap") == []


@pytest.mark.parametrize(
    ("op", "resource", "content", "reason"),
    [
        ("insert", "default/configmap/app", ["not", "an", "object"], "must be an object"),
        ("update", "default/configmap/app", "text", "must be an object"),
        ("insert", "default/configmap/app", None, "must be an object"),
        ("insert", "default/configmap/app", {"metadata": "x"}, "metadata must be an object"),
        ("insert", "default/configmap", configmap("app", 1), "<namespace>/<type>/<name>"),
        ("insert", "node/n1/default/configmap/app", configmap("app", 1), "<namespace>/<type>"),
        ("insert", "default//app", configmap("app", 1), "<namespace>/<type>"),
        ("insert", "default/ConfigMap/app", configmap("app", 1), "lowercase"),
        ("insert", "default/configmap/other", configmap("app", 1), "names 'app'"),
        ("insert", "default/configmap/a b", configmap("a b", 1), "not a valid object name"),
        ("insert", "de\x00fault/configmap/app", configmap("app", 1), "not a valid namespace"),
        ("insert", "kube-system/configmap/app", configmap("app", 1), "namespace 'default'"),
        ("delete", "default/configmap/app", "app", "delete content"),
        ("delete", "default/configmap/other", configmap("app", 1), "names 'app'"),
        ("query", "default/configmap/app", None, "does not apply operation 'query'"),
    ],
)
async def test_malformed_messages_get_an_error_and_change_nothing(
    meta: MetaManager, op: str, resource: str, content: Any, reason: str
) -> None:
    assert_acked(await apply(meta, upsert(configmap("app", 1, mode="kept"))))
    revision = await meta.revision()
    reply = await apply(meta, message(op, resource, content))
    assert reply.operation == "error"
    assert reason in reply.content
    assert await meta.revision() == revision
    assert [o["data"] for o in await meta.list("configmap")] == [{"mode": "kept"}]


async def test_replies_are_not_answered(meta: MetaManager) -> None:
    for op in ("response", "error", "keepalive"):
        assert await meta.handle(message(op, "default/configmap/app", "OK")) is None


async def test_everything_survives_a_restart(db: str, tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "edge" / "meta.key")
    secret: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "creds", "namespace": "default", "resourceVersion": "3"},
        "data": {"password": "c3VwZXJzZWNyZXQ="},
    }
    store = SQLiteStore(db)
    await store.start()
    meta = MetaManager(store, secret_key=key)
    for obj in (pod("web", 1), pod("db", 2, namespace="data"), secret, configmap("cfg", 4)):
        assert_acked(await apply(meta, upsert(obj, "insert")))
    await store.close()  # the node restarts without its cloud

    store = SQLiteStore(db)
    await store.start()
    try:
        meta = MetaManager(store, secret_key=load_or_create_key(tmp_path / "edge" / "meta.key"))
        pods = await meta.pods_for_node("edge-1")
        assert sorted(p["metadata"]["name"] for p in pods) == ["db", "web"]
        assert await meta.get("default", "secret", "creds") == secret
        assert (await meta.get("default", "configmap", "cfg") or {})["metadata"]["uid"] == "cfg"
    finally:
        await store.close()


async def test_secrets_are_sealed_at_rest(
    meta: MetaManager, store: SQLiteStore, tmp_path: Path
) -> None:
    key_file = tmp_path / "keys" / "meta.key"
    key = load_or_create_key(key_file)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_or_create_key(key_file) == key
    sealed = MetaManager(store, secret_key=key)
    secret: dict[str, Any] = {
        "kind": "Secret",
        "metadata": {"name": "creds", "namespace": "default", "resourceVersion": "1"},
        "stringData": {"password": "supersecret"},
    }
    assert_acked(await apply(sealed, upsert(secret, "insert")))
    kv = await store.get("default/secret/creds")
    assert kv is not None and b"supersecret" not in kv.value and b"creds" not in kv.value
    assert await sealed.get("default", "secret", "creds") == secret
    assert_acked(await apply(sealed, upsert(secret)))  # a resend compares the opened value
    assert (await store.get("default/secret/creds")) == kv
    with pytest.raises(SecretsError, match="no node key"):
        await meta.get("default", "secret", "creds")
    other = MetaManager(store, secret_key=b"k" * 32)
    with pytest.raises(SecretsError, match="another node key"):
        await other.get("default", "secret", "creds")
    # A lost key costs nothing for good: the cloud's next copy replaces what cannot be opened.
    assert_acked(await apply(other, upsert({**secret, "metadata": {**secret["metadata"]}})))
    assert await other.get("default", "secret", "creds") == secret
    # Other types stay plain JSON, readable by any tool.
    assert_acked(await apply(sealed, upsert(configmap("plain", 2))))
    plain = await store.get("default/configmap/plain")
    assert plain is not None and plain.value.startswith(b"{")


async def test_pods_for_node_skips_pods_of_other_nodes(meta: MetaManager) -> None:
    for obj in (pod("mine", 1), pod("theirs", 2, node="edge-2"), configmap("cfg", 3)):
        assert_acked(await apply(meta, upsert(obj)))
    assert [p["metadata"]["name"] for p in await meta.pods_for_node("edge-1")] == ["mine"]
    assert len(await meta.pods_for_node()) == 2


async def test_watch_passes_changes_through(meta: MetaManager) -> None:
    assert_acked(await apply(meta, upsert(configmap("a", 1, mode="1"))))
    after = await meta.revision()
    changes = meta.watch("configmap", "default", after=after)
    try:
        assert_acked(await apply(meta, upsert(pod("p", 2))))  # another type: not seen
        assert_acked(await apply(meta, upsert(configmap("a", 3, mode="2"))))
        assert_acked(await apply(meta, message("delete", "default/configmap/a", None)))
        seen: list[Change] = []
        async with asyncio.timeout(WAIT):
            async for change in changes:
                seen.append(change)
                if change.type == "DELETED":
                    break
    finally:
        await changes.aclose()
    assert [(c.type, c.kind, c.name, c.object["data"]["mode"]) for c in seen] == [
        ("MODIFIED", "configmap", "a", "2"),
        ("DELETED", "configmap", "a", "2"),
    ]
    assert seen[0].previous is not None and seen[0].previous["data"] == {"mode": "1"}
    assert seen[0].revision > after
