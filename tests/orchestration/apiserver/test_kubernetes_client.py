"""The official ``kubernetes`` client (sync, and ``kubernetes.aio``) against the API server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client, config, dynamic, watch
from kubernetes.aio import client as aclient
from kubernetes.aio import config as aconfig
from kubernetes.aio import watch as awatch
from kubernetes.client.rest import ApiException

from .conftest import SENSOR_CRD, ServerThread, wait_for

GROUP, VERSION, PLURAL = "examples.orbiter.io", "v1", "sensors"


@pytest.fixture
def api_client(server: ServerThread) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(server.kubeconfig))
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
async def aio_client(server: ServerThread) -> AsyncIterator[aclient.ApiClient]:
    api = await aconfig.new_client_from_config(config_file=str(server.kubeconfig))
    try:
        yield api
    finally:
        await api.close()
        # aiohttp's client reads netrc and proxy settings on the loop's default executor.
        await asyncio.get_running_loop().shutdown_default_executor()


def configmap(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def sensor(name: str, unit: str = "celsius") -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Sensor",
        "metadata": {"name": name},
        "spec": {"gateway": "gw-north", "unit": unit},
    }


def install_crd(api_client: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api_client)
    ext.create_custom_resource_definition(yaml.safe_load(SENSOR_CRD))
    objs = client.CustomObjectsApi(api_client)

    def served() -> bool:
        try:
            objs.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    wait_for(served, what="the Sensor CRD to be served")


# --- sync ------------------------------------------------------------------------------------


def test_core_v1_crud(api_client: client.ApiClient) -> None:
    v1 = client.CoreV1Api(api_client)
    created = v1.create_namespaced_config_map("default", configmap("app", mode="a"))
    assert isinstance(created, client.V1ConfigMap)
    assert created.metadata.uid and created.metadata.resource_version
    assert created.metadata.creation_timestamp is not None

    read = v1.read_namespaced_config_map("app", "default")
    assert read.data == {"mode": "a"}
    assert read.metadata.resource_version == created.metadata.resource_version

    read.data["mode"] = "b"
    replaced = v1.replace_namespaced_config_map("app", "default", read)
    assert replaced.data == {"mode": "b"}
    assert int(replaced.metadata.resource_version) > int(read.metadata.resource_version)

    # A replace carrying the old resourceVersion is a conflict.
    read.data["mode"] = "stale"
    with pytest.raises(ApiException) as info:
        v1.replace_namespaced_config_map("app", "default", read)
    assert info.value.status == 409
    assert "the object has been modified" in info.value.body

    # A dict body patches by strategic merge; a list body is a JSON patch.
    patched = v1.patch_namespaced_config_map(
        "app", "default", {"metadata": {"labels": {"tier": "edge"}}, "data": {"extra": "1"}}
    )
    assert patched.metadata.labels == {"tier": "edge"}
    assert patched.data == {"mode": "b", "extra": "1"}
    patched = v1.patch_namespaced_config_map(
        "app", "default", [{"op": "remove", "path": "/data/extra"}]
    )
    assert patched.data == {"mode": "b"}

    v1.create_namespaced_config_map("default", configmap("other"))
    listed = v1.list_namespaced_config_map("default", label_selector="tier=edge")
    assert [cm.metadata.name for cm in listed.items] == ["app"]
    listed = v1.list_config_map_for_all_namespaces()
    assert {cm.metadata.name for cm in listed.items} == {"app", "other"}

    with pytest.raises(ApiException) as info:
        v1.create_namespaced_config_map("default", configmap("app"))
    assert info.value.status == 409

    status = v1.delete_namespaced_config_map("app", "default")
    assert status is not None
    with pytest.raises(ApiException) as info:
        v1.read_namespaced_config_map("app", "default")
    assert info.value.status == 404

    # Cluster-scoped: namespaces.
    names = {ns.metadata.name for ns in v1.list_namespace().items}
    assert {"default", "kube-system", "kube-public"} <= names
    ns = v1.create_namespace({"metadata": {"name": "team-a"}})
    assert ns.status.phase == "Active"
    pod = v1.create_namespaced_pod(
        "team-a",
        {
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        },
    )
    assert pod.metadata.namespace == "team-a"
    assert pod.status.phase == "Pending"


def test_custom_objects_crud(api_client: client.ApiClient) -> None:
    install_crd(api_client)
    objs = client.CustomObjectsApi(api_client)
    created = objs.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, sensor("s1"))
    assert created["spec"] == {"gateway": "gw-north", "unit": "celsius", "intervalSeconds": 60}
    got = objs.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "s1")
    assert got["metadata"]["uid"] == created["metadata"]["uid"]

    patched = objs.patch_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "s1", {"spec": {"intervalSeconds": 5}}
    )
    assert patched["spec"]["intervalSeconds"] == 5
    assert patched["metadata"]["generation"] == 2

    patched["spec"]["unit"] = "percent"
    replaced = objs.replace_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "s1", patched
    )
    assert replaced["spec"]["unit"] == "percent"

    # Status goes through /status only, and does not bump the generation.
    status = objs.patch_namespaced_custom_object_status(
        GROUP, VERSION, "default", PLURAL, "s1", {"status": {"lastValue": 21.5}}
    )
    assert status["status"] == {"lastValue": 21.5}
    assert status["metadata"]["generation"] == 3
    again = objs.patch_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "s1", {"status": {"lastValue": 0}}
    )
    assert again["status"] == {"lastValue": 21.5}

    with pytest.raises(ApiException) as info:
        objs.create_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, sensor("bad", unit="kelvin")
        )
    assert info.value.status == 422
    assert "spec.unit" in info.value.body and "kelvin" in info.value.body

    objs.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, sensor("s2"))
    listed = objs.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)
    assert [o["metadata"]["name"] for o in listed["items"]] == ["s1", "s2"]
    assert listed["kind"] == "SensorList"
    cluster_wide = objs.list_cluster_custom_object(GROUP, VERSION, PLURAL)
    assert len(cluster_wide["items"]) == 2

    objs.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "s1")
    with pytest.raises(ApiException) as info:
        objs.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "s1")
    assert info.value.status == 404


def test_apps_v1_deployment_and_its_scale(api_client: client.ApiClient) -> None:
    apps = client.AppsV1Api(api_client)
    labels = {"app": "thermo"}
    made = apps.create_namespaced_deployment(
        "default",
        {
            "metadata": {"name": "thermo", "labels": labels},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "c", "image": "python:3.11"}]},
                },
            },
        },
    )
    assert isinstance(made, client.V1Deployment)
    assert made.metadata.generation == 1
    scale = apps.read_namespaced_deployment_scale("thermo", "default")
    assert isinstance(scale, client.V1Scale)
    assert scale.spec.replicas == 2
    # A dict body is sent as a strategic merge patch, which /scale accepts like any built-in.
    patched = apps.patch_namespaced_deployment_scale("thermo", "default", {"spec": {"replicas": 4}})
    assert patched.spec.replicas == 4
    scale = apps.read_namespaced_deployment_scale("thermo", "default")
    scale.spec.replicas = 1
    assert apps.replace_namespaced_deployment_scale("thermo", "default", scale).spec.replicas == 1
    deployment = apps.read_namespaced_deployment("thermo", "default")
    assert deployment.spec.replicas == 1
    assert deployment.metadata.generation == 3  # two scale changes
    # Strategic merge on the pod template merges containers by name.
    containers_patch = [
        {"name": "c", "image": "python:3.12"},
        {"name": "side", "image": "busybox"},
    ]
    patch = {"spec": {"template": {"spec": {"containers": containers_patch}}}}
    patched_dep = apps.patch_namespaced_deployment("thermo", "default", patch)
    containers = patched_dep.spec.template.spec.containers
    assert [(c.name, c.image) for c in containers] == [("c", "python:3.12"), ("side", "busybox")]


def test_dynamic_client(api_client: client.ApiClient) -> None:
    """The discovery-driven client: it finds kinds (a CRD's too) through /api and /apis."""
    dyn = dynamic.DynamicClient(api_client)
    cms = dyn.resources.get(api_version="v1", kind="ConfigMap")
    cms.create(body={"metadata": {"name": "d"}, "data": {"x": "1"}}, namespace="default")
    got = cms.patch(name="d", namespace="default", body={"data": {"y": "2"}},
                    content_type="application/merge-patch+json")  # fmt: skip
    assert dict(got.data) == {"x": "1", "y": "2"}
    applied = cms.server_side_apply(
        body={"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "e"}, "data": {}},
        namespace="default", field_manager="tests",
    )  # fmt: skip
    assert applied.metadata.name == "e"
    assert sorted(i.metadata.name for i in cms.get(namespace="default").items) == ["d", "e"]

    install_crd(api_client)
    dyn.resources.invalidate_cache()
    sensors = dyn.resources.get(api_version=f"{GROUP}/{VERSION}", kind="Sensor")
    sensors.create(body=sensor("s1"), namespace="default")
    status = sensors.status.patch(
        name="s1", namespace="default", body={"status": {"lastValue": 1.5}},
        content_type="application/merge-patch+json",
    )  # fmt: skip
    assert status.status.lastValue == 1.5
    assert sensors.get(name="s1", namespace="default").spec.intervalSeconds == 60


def _events_until(
    stream: Iterator[dict[str, Any]], w: watch.Watch, sentinel: str
) -> list[tuple[str, str, str]]:
    """(type, name, data.v) of every event until the object named ``sentinel`` is ADDED."""
    seen: list[tuple[str, str, str]] = []
    for ev in stream:
        obj = ev["raw_object"]
        if ev["type"] == "BOOKMARK":
            continue
        if obj["metadata"]["name"] == sentinel:
            w.stop()
            break
        seen.append((ev["type"], obj["metadata"]["name"], (obj.get("data") or {}).get("v", "")))
    return seen


def test_watch_resumes_from_a_resource_version(
    server: ServerThread, api_client: client.ApiClient
) -> None:
    v1 = client.CoreV1Api(api_client)
    first = v1.create_namespaced_config_map("default", configmap("a", v="1"))
    resume_at = first.metadata.resource_version
    v1.patch_namespaced_config_map("a", "default", {"data": {"v": "2"}})
    v1.create_namespaced_config_map("default", configmap("b", v="1"))
    v1.delete_namespaced_config_map("a", "default")
    v1.create_namespaced_config_map("default", configmap("zz-sentinel"))

    w = watch.Watch()
    stream = w.stream(
        v1.list_namespaced_config_map,
        "default",
        resource_version=resume_at,
        allow_watch_bookmarks=True,
        _request_timeout=30,
    )
    try:
        seen = _events_until(stream, w, "zz-sentinel")
    finally:
        stream.close()
    # Exactly what happened after resume_at: not the creation of "a", nothing twice.
    assert seen == [("MODIFIED", "a", "2"), ("ADDED", "b", "1"), ("DELETED", "a", "2")]

    # A live watch sees a change made after it started.
    listed = v1.list_namespaced_config_map("default")
    w = watch.Watch()
    stream = w.stream(
        v1.list_namespaced_config_map,
        "default",
        resource_version=listed.metadata.resource_version,
        _request_timeout=30,
    )
    try:
        v1.patch_namespaced_config_map("b", "default", {"data": {"v": "live"}})
        v1.create_namespaced_config_map("default", configmap("zz-sentinel-2"))
        seen = _events_until(stream, w, "zz-sentinel-2")
    finally:
        stream.close()
    assert seen == [("MODIFIED", "b", "live")]


def test_watch_from_a_compacted_revision_is_410(
    server: ServerThread, api_client: client.ApiClient
) -> None:
    v1 = client.CoreV1Api(api_client)
    old = v1.create_namespaced_config_map("default", configmap("a", v="1"))
    for i in range(3):
        v1.patch_namespaced_config_map("a", "default", {"data": {"v": str(i)}})
    latest = v1.read_namespaced_config_map("a", "default").metadata.resource_version
    server.call(server.store.compact(int(latest)))

    w = watch.Watch()
    with pytest.raises(ApiException) as info:
        for _ in w.stream(
            v1.list_namespaced_config_map,
            "default",
            resource_version=old.metadata.resource_version,
            timeout_seconds=5,
        ):
            pytest.fail("a watch from a compacted revision must not deliver events")
    assert info.value.status == 410

    # A list at a compacted revision through a continue token is 410 too; a fresh list works.
    listed = v1.list_namespaced_config_map("default")
    assert [cm.metadata.name for cm in listed.items] == ["a"]


# --- asyncio (kubernetes.aio) -----------------------------------------------------------------


async def test_aio_core_v1_and_custom_objects(
    server: ServerThread, aio_client: aclient.ApiClient
) -> None:
    v1 = aclient.CoreV1Api(aio_client)
    created = await v1.create_namespaced_config_map("default", configmap("async", v="1"))
    assert created.metadata.resource_version
    read = await v1.read_namespaced_config_map("async", "default")
    assert read.data == {"v": "1"}
    read.data["v"] = "2"
    replaced = await v1.replace_namespaced_config_map("async", "default", read)
    assert replaced.data == {"v": "2"}
    patched = await v1.patch_namespaced_config_map("async", "default", {"data": {"w": "3"}})
    assert patched.data == {"v": "2", "w": "3"}
    listed = await v1.list_namespaced_config_map("default")
    assert [cm.metadata.name for cm in listed.items] == ["async"]
    await v1.delete_namespaced_config_map("async", "default")
    with pytest.raises(aclient.exceptions.ApiException) as info:
        await v1.read_namespaced_config_map("async", "default")
    assert info.value.status == 404

    ext = aclient.ApiextensionsV1Api(aio_client)
    await ext.create_custom_resource_definition(yaml.safe_load(SENSOR_CRD))
    objs = aclient.CustomObjectsApi(aio_client)
    created_cr = await objs.create_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, sensor("s1")
    )
    assert created_cr["spec"]["intervalSeconds"] == 60
    patched_cr = await objs.patch_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "s1", {"spec": {"unit": "pascal"}}
    )
    assert patched_cr["spec"]["unit"] == "pascal"
    got = await objs.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "s1")
    assert got["spec"]["unit"] == "pascal"
    listed_cr = await objs.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)
    assert [o["metadata"]["name"] for o in listed_cr["items"]] == ["s1"]
    await objs.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "s1")
    with pytest.raises(aclient.exceptions.ApiException) as info:
        await objs.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "s1")
    assert info.value.status == 404


async def test_aio_watch_resumes_and_410s(
    server: ServerThread, aio_client: aclient.ApiClient
) -> None:
    v1 = aclient.CoreV1Api(aio_client)
    first = await v1.create_namespaced_config_map("default", configmap("a", v="1"))
    await v1.patch_namespaced_config_map("a", "default", {"data": {"v": "2"}})
    await v1.create_namespaced_config_map("default", configmap("b", v="1"))
    await v1.delete_namespaced_config_map("a", "default")
    await v1.create_namespaced_config_map("default", configmap("zz-sentinel"))

    seen: list[tuple[str, str, str]] = []
    w = awatch.Watch()
    async with w.stream(
        v1.list_namespaced_config_map,
        "default",
        resource_version=first.metadata.resource_version,
        allow_watch_bookmarks=True,
        _request_timeout=30,
    ) as stream:
        async for ev in stream:
            obj = ev["raw_object"]
            if ev["type"] == "BOOKMARK":
                continue
            if obj["metadata"]["name"] == "zz-sentinel":
                break
            seen.append((ev["type"], obj["metadata"]["name"], obj["data"]["v"]))
    assert seen == [("MODIFIED", "a", "2"), ("ADDED", "b", "1"), ("DELETED", "a", "2")]

    latest = (await v1.list_namespaced_config_map("default")).metadata.resource_version
    server.call(server.store.compact(int(latest)))
    w = awatch.Watch()
    with pytest.raises(aclient.exceptions.ApiException) as info:
        async with w.stream(
            v1.list_namespaced_config_map,
            "default",
            resource_version=first.metadata.resource_version,
            timeout_seconds=5,
        ) as stream:
            async for _ in stream:
                pytest.fail("a watch from a compacted revision must not deliver events")
    assert info.value.status == 410
