"""The client contract, once for every transport: subclasses provide the ``client`` fixture."""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from orbiter.orchestration.apiserver.serving import APIServer
from orbiter.orchestration.client import (
    CONFIGMAPS,
    DEPLOYMENTS,
    NODES,
    PODS,
    Client,
    ClientError,
    ConflictError,
    ExpiredError,
    NotFoundError,
    Resource,
)

from .support import WAIT, aclose, configmap, deployment

Event = dict[str, Any]


@contextlib.asynccontextmanager
async def watching(stream: AsyncIterator[Event]) -> AsyncIterator[AsyncIterator[Event]]:
    try:
        yield stream
    finally:
        await aclose(stream)


async def collect(stream: AsyncIterator[Event], last: Callable[[Event], bool]) -> list[Event]:
    """Events (bookmarks aside) up to and including the first one ``last`` accepts."""
    events: list[Event] = []
    async with asyncio.timeout(WAIT), watching(stream):
        async for event in stream:
            if event["type"] == "BOOKMARK":
                continue
            events.append(event)
            if last(event):
                break
    return events


def named(name: str) -> Callable[[Event], bool]:
    return lambda event: bool(event["object"]["metadata"]["name"] == name)


def summary(events: list[Event]) -> list[tuple[str, str]]:
    return [(e["type"], e["object"]["metadata"]["name"]) for e in events]


class ClientContract(abc.ABC):
    """What every ``Client`` does against our API server."""

    @pytest.fixture
    @abc.abstractmethod
    def client(self, server: APIServer) -> Any:
        """A ``Client`` of ``server`` (returned or yielded)."""

    # --- CRUD and errors -----------------------------------------------------------------

    async def test_crud(self, client: Client) -> None:
        created = await client.create(CONFIGMAPS, configmap("a", {"k": "1"}), "default")
        meta = created["metadata"]
        assert (meta["name"], meta["namespace"], created["data"]) == ("a", "default", {"k": "1"})
        assert meta["uid"] and meta["resourceVersion"]

        got = await client.get(CONFIGMAPS, "a", "default")
        assert got["metadata"]["uid"] == meta["uid"]

        got["data"]["k"] = "2"
        replaced = await client.replace(CONFIGMAPS, got, "default")
        assert replaced["data"] == {"k": "2"}
        assert int(replaced["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])

        with pytest.raises(ConflictError) as stale:  # got's resourceVersion is now stale
            await client.replace(CONFIGMAPS, got, "default")
        assert (stale.value.status, stale.value.reason) == (409, "Conflict")

        await client.delete(CONFIGMAPS, "a", "default")
        with pytest.raises(NotFoundError) as missing:
            await client.get(CONFIGMAPS, "a", "default")
        assert (missing.value.status, missing.value.reason) == (404, "NotFound")

    async def test_errors(self, client: Client) -> None:
        await client.create(CONFIGMAPS, configmap("a"), "default")
        with pytest.raises(ConflictError) as exists:
            await client.create(CONFIGMAPS, configmap("a"), "default")
        assert (exists.value.status, exists.value.reason) == (409, "AlreadyExists")
        assert '"a" already exists' in exists.value.message
        with pytest.raises(NotFoundError):
            await client.delete(CONFIGMAPS, "nope", "default")
        with pytest.raises(NotFoundError):
            await client.get(Resource("example.com", "v1", "widgets", "Widget"), "w", "default")
        with pytest.raises(ClientError) as invalid:
            await client.create(DEPLOYMENTS, {"metadata": {"name": "d"}, "spec": {}}, "default")
        assert invalid.value.status == 422 and type(invalid.value) is ClientError
        with pytest.raises(ValueError, match="namespace is required"):
            await client.get(CONFIGMAPS, "a")

    async def test_create_takes_namespace_from_object_and_leaves_it_alone(
        self, client: Client
    ) -> None:
        obj = configmap("a")
        obj["metadata"]["namespace"] = "kube-system"
        before = repr(obj)
        created = await client.create(CONFIGMAPS, obj)
        assert created["metadata"]["namespace"] == "kube-system"
        assert repr(obj) == before  # the caller's dict is not filled in

    async def test_cluster_scoped(self, client: Client) -> None:
        node = {"metadata": {"name": "n1", "labels": {"zone": "a"}}}
        await client.create(NODES, node, namespace="ignored")
        assert (await client.get(NODES, "n1"))["metadata"]["labels"] == {"zone": "a"}
        names = [n["metadata"]["name"] for n in (await client.list(NODES))["items"]]
        assert names == ["n1"]
        await client.delete(NODES, "n1")
        assert (await client.list(NODES))["items"] == []

    async def test_list_selectors_and_pages(self, client: Client) -> None:
        for i in range(5):
            await client.create(CONFIGMAPS, configmap(f"c{i}", tier="odd" * (i % 2)), "default")
        await client.create(CONFIGMAPS, configmap("other"), "kube-public")

        listed = await client.list(CONFIGMAPS, "default")
        assert [o["metadata"]["name"] for o in listed["items"]] == [f"c{i}" for i in range(5)]
        assert int(listed["metadata"]["resourceVersion"]) > 0
        everywhere = await client.list(CONFIGMAPS)
        assert len(everywhere["items"]) == 6

        odd = await client.list(CONFIGMAPS, "default", label_selector="tier=odd")
        assert [o["metadata"]["name"] for o in odd["items"]] == ["c1", "c3"]
        by_name = await client.list(CONFIGMAPS, field_selector="metadata.name=other")
        assert [o["metadata"]["namespace"] for o in by_name["items"]] == ["kube-public"]

        names: list[str] = []
        token = ""
        while True:
            page = await client.list(CONFIGMAPS, "default", limit=2, continue_token=token)
            assert len(page["items"]) <= 2
            names += [o["metadata"]["name"] for o in page["items"]]
            token = page["metadata"].get("continue", "")
            if not token:
                break
        assert names == [f"c{i}" for i in range(5)]

        with pytest.raises(ClientError) as bad:
            await client.list(CONFIGMAPS, label_selector="a in (")
        assert bad.value.status == 400

    async def test_delete_preconditions(self, client: Client) -> None:
        created = await client.create(CONFIGMAPS, configmap("a"), "default")
        with pytest.raises(ConflictError):
            await client.delete(CONFIGMAPS, "a", "default", preconditions={"uid": "other"})
        with pytest.raises(ConflictError):
            await client.delete(CONFIGMAPS, "a", "default", preconditions={"resourceVersion": "1"})
        rv = created["metadata"]["resourceVersion"]
        await client.delete(
            CONFIGMAPS,
            "a",
            "default",
            propagation_policy="Background",
            preconditions={"resourceVersion": rv},
        )

    # --- patches and subresources --------------------------------------------------------

    async def test_patch_types(self, client: Client) -> None:
        await client.create(CONFIGMAPS, configmap("a", {"x": "1", "y": "2"}), "default")
        merged = await client.patch(CONFIGMAPS, "a", {"data": {"x": None, "z": "3"}}, "default")
        assert merged["data"] == {"y": "2", "z": "3"}
        ops = [
            {"op": "replace", "path": "/data/y", "value": "20"},
            {"op": "remove", "path": "/data/z"},
        ]
        patched = await client.patch(CONFIGMAPS, "a", ops, "default", patch_type="json")
        assert patched["data"] == {"y": "20"}

        await client.create(DEPLOYMENTS, deployment("d", "app", "sidecar"), "default")
        # Strategic merge: containers merge by name; a plain merge would replace the list.
        patch = {
            "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "app:2"}]}}}
        }
        strategic = await client.patch(DEPLOYMENTS, "d", patch, "default", patch_type="strategic")
        images = [c["image"] for c in strategic["spec"]["template"]["spec"]["containers"]]
        assert images == ["app:2", "sidecar:1"]

        applied = await client.patch(
            CONFIGMAPS,
            "b",
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "b"},
                "data": {"k": "v"},
            },
            "default",
            patch_type="apply",
            field_manager="contract-test",
        )
        assert applied["data"] == {"k": "v"}  # apply creates a missing object
        with pytest.raises(ClientError) as no_manager:
            await client.patch(CONFIGMAPS, "b", {"data": {}}, "default", patch_type="apply")
        assert no_manager.value.status == 400

        with pytest.raises(NotFoundError):
            await client.patch(CONFIGMAPS, "missing", {"data": {}}, "default")
        with pytest.raises(ClientError) as unparsable:
            await client.patch(CONFIGMAPS, "a", [{"op": "bogus"}], "default", patch_type="json")
        assert unparsable.value.status in (400, 422)

    async def test_status_and_scale_subresources(self, client: Client) -> None:
        created = await client.create(DEPLOYMENTS, deployment("d", "app"), "default")
        created["status"] = {"replicas": 3}
        created["spec"]["replicas"] = 7  # ignored: /status writes status only
        updated = await client.replace(DEPLOYMENTS, created, "default", subresource="status")
        assert (updated["status"]["replicas"], updated["spec"]["replicas"]) == (3, 1)

        patched = await client.patch(
            DEPLOYMENTS, "d", {"status": {"readyReplicas": 2}}, "default", subresource="status"
        )
        assert patched["status"]["readyReplicas"] == 2

        scale = await client.patch(
            DEPLOYMENTS, "d", {"spec": {"replicas": 4}}, "default", subresource="scale"
        )
        assert (scale["kind"], scale["spec"]["replicas"]) == ("Scale", 4)
        assert (await client.get(DEPLOYMENTS, "d", "default"))["spec"]["replicas"] == 4

    async def test_binding_subresource(self, client: Client) -> None:
        pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
        await client.create(PODS, pod, "default")
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": "p", "namespace": "default"},
            "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"},
        }
        status = await client.create(PODS, binding, subresource="binding")
        assert (status["kind"], status["status"]) == ("Status", "Success")
        bound = await client.get(PODS, "p", "default")
        assert bound["spec"]["nodeName"] == "n1"
        scheduled = [c for c in bound["status"]["conditions"] if c["type"] == "PodScheduled"]
        assert [c["status"] for c in scheduled] == ["True"]
        with pytest.raises(ConflictError) as again:  # bound once, never moved
            await client.create(PODS, binding, "default", subresource="binding")
        assert again.value.status == 409
        with pytest.raises(NotFoundError):
            await client.create(
                PODS, {**binding, "metadata": {"name": "nope"}}, "default", subresource="binding"
            )

    # --- watch ---------------------------------------------------------------------------

    async def test_watch_from_resource_version_sees_exactly_later_events(
        self, client: Client
    ) -> None:
        a = await client.create(CONFIGMAPS, configmap("a"), "default")
        start = a["metadata"]["resourceVersion"]
        await client.create(CONFIGMAPS, configmap("b"), "default")
        await client.patch(CONFIGMAPS, "a", {"data": {"k": "v"}}, "default")
        await client.delete(CONFIGMAPS, "b", "default")
        await client.create(CONFIGMAPS, configmap("elsewhere"), "kube-public")
        await client.create(CONFIGMAPS, configmap("end"), "default")

        events = await collect(
            client.watch(CONFIGMAPS, "default", resource_version=start), named("end")
        )
        assert summary(events) == [
            ("ADDED", "b"),
            ("MODIFIED", "a"),
            ("DELETED", "b"),
            ("ADDED", "end"),
        ]
        assert events[1]["object"]["data"] == {"k": "v"}
        rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
        assert rvs == sorted(rvs) and rvs[0] > int(start)

    async def test_watch_without_resource_version_starts_with_current_objects(
        self, client: Client
    ) -> None:
        await client.create(CONFIGMAPS, configmap("a"), "default")
        stream = client.watch(CONFIGMAPS, "default")
        async with watching(stream):
            first = await asyncio.wait_for(anext(stream), WAIT)
            await client.create(CONFIGMAPS, configmap("b"), "default")
            rest = await collect(stream, named("b"))
        assert summary([first, *rest]) == [("ADDED", "a"), ("ADDED", "b")]

    async def test_watch_selectors(self, client: Client) -> None:
        start = (await client.list(CONFIGMAPS))["metadata"]["resourceVersion"]
        await client.create(CONFIGMAPS, configmap("plain"), "default")
        await client.create(CONFIGMAPS, configmap("picked", role="x"), "default")
        await client.patch(CONFIGMAPS, "picked", {"metadata": {"labels": {"role": "y"}}}, "default")
        await client.create(CONFIGMAPS, configmap("last", role="x"), "default")
        events = await collect(
            client.watch(CONFIGMAPS, resource_version=start, label_selector="role=x"),
            named("last"),
        )
        # Leaving the selection reads as DELETED, as in Kubernetes.
        assert summary(events) == [("ADDED", "picked"), ("DELETED", "picked"), ("ADDED", "last")]

    async def test_watch_bookmarks_and_timeout(self, client: Client) -> None:
        start = (await client.list(CONFIGMAPS))["metadata"]["resourceVersion"]
        events: list[Event] = []
        async with asyncio.timeout(WAIT):
            async for event in client.watch(CONFIGMAPS, resource_version=start, timeout_seconds=1):
                events.append(event)  # the stream ends by itself after a second
        assert events and {e["type"] for e in events} == {"BOOKMARK"}
        assert events[-1]["object"]["metadata"]["resourceVersion"] == start

    async def test_watch_objects_are_private(self, client: Client) -> None:
        start = (await client.list(CONFIGMAPS))["metadata"]["resourceVersion"]
        one = client.watch(CONFIGMAPS, "default", resource_version=start, allow_bookmarks=False)
        two = client.watch(CONFIGMAPS, "default", resource_version=start, allow_bookmarks=False)
        async with watching(one), watching(two):
            await client.create(CONFIGMAPS, configmap("a", {"k": "v"}), "default")
            first = await asyncio.wait_for(anext(one), WAIT)
            first["object"]["data"]["k"] = "changed by the first watcher"
            second = await asyncio.wait_for(anext(two), WAIT)
        assert second["object"]["data"] == {"k": "v"}

    async def test_watch_from_compacted_revision_is_expired(
        self, client: Client, server: APIServer
    ) -> None:
        start = (await client.create(CONFIGMAPS, configmap("a"), "default"))["metadata"]
        for i in range(3):
            await client.patch(CONFIGMAPS, "a", {"data": {"i": str(i)}}, "default")
        assert server.store is not None
        await server.store.compact(await server.store.current_revision())
        with pytest.raises(ExpiredError) as expired:
            async with watching(
                stream := client.watch(
                    CONFIGMAPS, "default", resource_version=start["resourceVersion"]
                )
            ):
                await anext(stream)
        assert expired.value.status == 410
