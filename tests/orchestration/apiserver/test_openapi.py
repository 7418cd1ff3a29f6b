"""OpenAPI documents: the v2 protobuf, the v3 index and per group-version documents."""

from __future__ import annotations

import copy
import re
from dataclasses import replace
from typing import Any

import orjson
import pytest
from orbiter.orchestration.apis import BUILTIN_RESOURCES, ResourceType
from orbiter.orchestration.apiserver.openapi import (
    V2_CONTENT_TYPE,
    OpenAPIDocs,
    openapi_v2_protobuf,
    openapi_v3_document,
    openapi_v3_index,
    schema_name,
)
from orbiter.orchestration.apiserver.resources import ResourceRegistry

WIDGET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "required": ["size"],
            "properties": {"size": {"type": "integer", "maximum": 10}},
        },
        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    },
}
WIDGET = ResourceType(
    "example.io",
    "v1",
    "Widget",
    "widgets",
    "widget",
    True,
    subresources=frozenset({"status"}),
    custom=True,
    schema=WIDGET_SCHEMA,
)
GADGET = ResourceType(
    "edge.example.io", "v1alpha1", "Gadget", "gadgets", "gadget", False, custom=True, schema=None
)
RESOURCES = (*BUILTIN_RESOURCES, WIDGET, GADGET)


def decode(data: bytes) -> dict[int, list[bytes | int]]:
    """A tiny protobuf decoder: field number -> values (varints or length-delimited bytes)."""

    def varint(pos: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            byte = data[pos]
            value |= (byte & 0x7F) << shift
            pos, shift = pos + 1, shift + 7
            if not byte & 0x80:
                return value, pos

    out: dict[int, list[bytes | int]] = {}
    pos = 0
    while pos < len(data):
        key, pos = varint(pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = varint(pos)
            out.setdefault(number, []).append(value)
        elif wire == 2:
            size, pos = varint(pos)
            assert pos + size <= len(data), "truncated field"
            out.setdefault(number, []).append(data[pos : pos + size])
            pos += size
        else:
            raise AssertionError(f"unexpected wire type {wire}")
    return out


def test_v2_protobuf_decodes_to_a_gnostic_document() -> None:
    doc = decode(openapi_v2_protobuf(RESOURCES))
    assert doc[1] == [b"2.0"]  # Document.swagger
    assert doc[8] == [b""]  # Document.paths: required, empty
    assert set(doc) == {1, 2, 8}
    (info_bytes,) = doc[2]
    assert isinstance(info_bytes, bytes)
    info = decode(info_bytes)
    assert info[1] == [b"Kubernetes"]  # Info.title
    assert info[2] == [b"v1.31.0"]  # Info.version (field 6 is the License message)
    assert set(info) == {1, 2}


def test_v2_content_type_has_no_at_sign() -> None:
    # Go's mime parser rejects "@", which is how kubectl spells the type in its Accept header.
    assert V2_CONTENT_TYPE == "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"


def test_v3_index_lists_every_group_version_with_a_hash() -> None:
    paths = openapi_v3_index(RESOURCES)["paths"]
    assert {
        "api",
        "apis",
        "api/v1",
        "apis/apps",
        "apis/apps/v1",
        "apis/coordination.k8s.io/v1",
        "apis/apiextensions.k8s.io/v1",
        "apis/example.io",
        "apis/example.io/v1",
        "apis/edge.example.io/v1alpha1",
    } <= set(paths)
    url = paths["apis/example.io/v1"]["serverRelativeURL"]
    assert re.fullmatch(r"/openapi/v3/apis/example\.io/v1\?hash=[0-9A-F]{128}", url)


def index_hashes(resources: Any) -> dict[str, str]:
    paths = openapi_v3_index(resources)["paths"]
    return {k: v["serverRelativeURL"].split("hash=")[1] for k, v in paths.items()}


def test_v3_hash_changes_with_the_schema_and_only_for_its_group_version() -> None:
    before = index_hashes(RESOURCES)
    assert index_hashes(RESOURCES) == before  # stable
    schema = copy.deepcopy(WIDGET_SCHEMA)
    schema["properties"]["spec"]["properties"]["size"]["maximum"] = 20
    after = index_hashes((*BUILTIN_RESOURCES, replace(WIDGET, schema=schema), GADGET))
    assert after["apis/example.io/v1"] != before["apis/example.io/v1"]
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"apis/example.io/v1"}


def patch_ops(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(path, item["patch"]) for path, item in doc["paths"].items() if "patch" in item]


def supports_field_validation(doc: dict[str, Any], gvk: dict[str, str]) -> bool:
    """kubectl's check (query_param_verifier_v3): the first PATCH for the GVK decides."""
    for _, op in patch_ops(doc):
        if op.get("x-kubernetes-group-version-kind") == gvk:
            return any(
                p["name"] == "fieldValidation" and p["in"] == "query" for p in op["parameters"]
            )
    return False


def test_namespaced_crd_patch_carries_field_validation_and_gvk() -> None:
    doc = openapi_v3_document("apis/example.io/v1", RESOURCES)
    item = doc["paths"]["/apis/example.io/v1/namespaces/{namespace}/widgets/{name}"]
    patch = item["patch"]
    assert patch["x-kubernetes-group-version-kind"] == {
        "group": "example.io",
        "version": "v1",
        "kind": "Widget",
    }
    assert patch["x-kubernetes-action"] == "patch"
    assert patch["operationId"] == "patchExampleIoV1NamespacedWidget"
    names = {(p["name"], p["in"]) for p in patch["parameters"]}
    assert {("fieldValidation", "query"), ("fieldManager", "query"), ("dryRun", "query")} <= names
    assert set(patch["requestBody"]["content"]) == {
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/apply-patch+yaml",
    }
    assert {p["name"] for p in item["parameters"]} == {"name", "namespace", "pretty"}
    status = doc["paths"]["/apis/example.io/v1/namespaces/{namespace}/widgets/{name}/status"]
    assert set(status) == {"get", "put", "patch", "parameters"}
    assert status["patch"]["operationId"] == "patchExampleIoV1NamespacedWidgetStatus"
    assert supports_field_validation(doc, patch["x-kubernetes-group-version-kind"])


def test_every_kind_lets_kubectl_delegate_validation() -> None:
    for rt in RESOURCES:
        doc = openapi_v3_document(rt.gv_path, RESOURCES)
        gvk = {"group": rt.group, "version": rt.version, "kind": rt.kind}
        assert supports_field_validation(doc, gvk), rt
        for _, op in patch_ops(doc):
            assert any(p["name"] == "fieldValidation" for p in op["parameters"])


def test_operations_are_named_like_kube_apiserver() -> None:
    core = openapi_v3_document("api/v1", RESOURCES)
    ops = {
        (path, method): op["operationId"]
        for path, item in core["paths"].items()
        for method, op in item.items()
        if method != "parameters"
    }
    pods = "/api/v1/namespaces/{namespace}/pods"
    assert ops[(pods, "get")] == "listCoreV1NamespacedPod"
    assert ops[(pods, "post")] == "createCoreV1NamespacedPod"
    assert ops[(pods, "delete")] == "deleteCoreV1CollectionNamespacedPod"
    assert ops[(pods + "/{name}", "get")] == "readCoreV1NamespacedPod"
    assert ops[(pods + "/{name}", "put")] == "replaceCoreV1NamespacedPod"
    assert ops[(pods + "/{name}", "delete")] == "deleteCoreV1NamespacedPod"
    assert ops[(pods + "/{name}/binding", "post")] == "createCoreV1NamespacedPodBinding"
    assert ops[("/api/v1/pods", "get")] == "listCoreV1PodForAllNamespaces"
    assert ops[("/api/v1/nodes/{name}", "get")] == "readCoreV1Node"
    assert ops[("/api/v1/", "get")] == "getCoreV1APIResources"
    assert len(set(ops.values())) == len(ops)
    actions = {
        op["x-kubernetes-action"]
        for item in core["paths"].values()
        for op in item.values()
        if isinstance(op, dict) and "x-kubernetes-action" in op
    }
    assert actions == {"list", "post", "deletecollection", "get", "put", "patch", "delete"}
    apps = openapi_v3_document("apis/apps/v1", RESOURCES)
    scale = apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"]
    assert scale["patch"]["operationId"] == "patchAppsV1NamespacedDeploymentScale"
    assert scale["patch"]["x-kubernetes-group-version-kind"] == {
        "group": "autoscaling",
        "version": "v1",
        "kind": "Scale",
    }
    assert apps["paths"]["/apis/apps/v1/"]["get"]["operationId"] == "getAppsV1APIResources"
    assert apps["paths"]["/apis/apps/v1/"]["get"]["tags"] == ["apps_v1"]
    lease = openapi_v3_document("apis/coordination.k8s.io/v1", RESOURCES)
    assert "patchCoordinationV1NamespacedLease" in orjson.dumps(lease).decode()


def test_cluster_scoped_paths_have_no_namespace() -> None:
    doc = openapi_v3_document("apis/edge.example.io/v1alpha1", RESOURCES)
    assert set(doc["paths"]) == {
        "/apis/edge.example.io/v1alpha1/",
        "/apis/edge.example.io/v1alpha1/gadgets",
        "/apis/edge.example.io/v1alpha1/gadgets/{name}",
    }
    item = doc["paths"]["/apis/edge.example.io/v1alpha1/gadgets/{name}"]
    assert [p["name"] for p in item["parameters"]] == ["name", "pretty"]
    assert item["get"]["operationId"] == "readEdgeExampleIoV1alpha1Gadget"
    assert item["get"]["tags"] == ["edgeExampleIo_v1alpha1"]


def test_crd_schema_is_published_under_its_reversed_group_name() -> None:
    doc = openapi_v3_document("apis/example.io/v1", RESOURCES)
    schemas = doc["components"]["schemas"]
    widget = schemas["io.example.v1.Widget"]
    assert widget["x-kubernetes-group-version-kind"] == [
        {"group": "example.io", "version": "v1", "kind": "Widget"}
    ]
    props = widget["properties"]
    assert props["spec"] == WIDGET_SCHEMA["properties"]["spec"]
    assert props["apiVersion"]["type"] == props["kind"]["type"] == "string"
    ref = props["metadata"]["allOf"][0]["$ref"]
    assert ref == "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    assert "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta" in schemas
    assert schemas["io.example.v1.WidgetList"]["x-kubernetes-group-version-kind"][0]["kind"] == (
        "WidgetList"
    )
    assert "metadata" not in WIDGET_SCHEMA["properties"]  # the CRD's own schema is not touched


def all_refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(all_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(all_refs(v) for v in node))
    return set()


@pytest.mark.parametrize(
    "key",
    ["api", "apis", "apis/apps", "api/v1", "apis/apps/v1", "apis/example.io/v1"],
)
def test_every_reference_resolves(key: str) -> None:
    doc = openapi_v3_document(key, RESOURCES)
    assert doc["openapi"] == "3.0.0"
    assert doc["info"] == {"title": "Kubernetes", "version": "v1.31.0"}
    prefix = "#/components/schemas/"
    for ref in all_refs(doc):
        assert ref.startswith(prefix)
        assert ref.removeprefix(prefix) in doc["components"]["schemas"], ref


def test_builtins_are_permissive_and_keep_kubectls_own_strategic_merge() -> None:
    doc = openapi_v3_document("apis/apps/v1", RESOURCES)
    deployment = doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"]
    assert deployment["type"] == "object"
    assert deployment["x-kubernetes-preserve-unknown-fields"] is True
    assert set(deployment["properties"]) == {"apiVersion", "kind", "metadata"}
    assert deployment["x-kubernetes-group-version-kind"] == [
        {"group": "apps", "version": "v1", "kind": "Deployment"}
    ]
    # kubectl 1.30+ would compute strategic merge patches from these field-less schemas if
    # PATCH advertised it; without it kubectl uses its compiled-in types (merge keys).
    for _, op in patch_ops(doc):
        assert "application/strategic-merge-patch+json" not in op["requestBody"]["content"]


@pytest.mark.parametrize(
    ("rt", "name"),
    [
        (BUILTIN_RESOURCES[2], "io.k8s.api.core.v1.Pod"),
        (BUILTIN_RESOURCES[8], "io.k8s.api.coordination.v1.Lease"),
        (BUILTIN_RESOURCES[9], "io.k8s.api.apps.v1.Deployment"),
        (
            BUILTIN_RESOURCES[11],
            "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition",
        ),
        (WIDGET, "io.example.v1.Widget"),
        (GADGET, "io.example.edge.v1alpha1.Gadget"),
    ],
)
def test_schema_names(rt: ResourceType, name: str) -> None:
    assert schema_name(rt) == name


def test_verbs_limit_the_operations() -> None:
    read_only = replace(WIDGET, verbs=("get", "list", "watch"))
    doc = openapi_v3_document("apis/example.io/v1", (read_only,))
    item = doc["paths"]["/apis/example.io/v1/namespaces/{namespace}/widgets/{name}"]
    assert set(item) == {"get", "parameters"}
    assert set(doc["paths"]["/apis/example.io/v1/namespaces/{namespace}/widgets"]) == {
        "get",
        "parameters",
    }


def test_unknown_document_raises_and_paths_are_normalised() -> None:
    with pytest.raises(KeyError):
        openapi_v3_document("apis/nope/v1", RESOURCES)
    assert openapi_v3_document("/api/v1/", RESOURCES) == openapi_v3_document("api/v1", RESOURCES)
    group = openapi_v3_document("apis/example.io", RESOURCES)
    assert group["paths"]["/apis/example.io/"]["get"]["operationId"] == "getExampleIoAPIGroup"


def crd_types(maximum: int) -> list[ResourceType]:
    schema = copy.deepcopy(WIDGET_SCHEMA)
    schema["properties"]["spec"]["properties"]["size"]["maximum"] = maximum
    return [replace(WIDGET, schema=schema)]


def test_docs_follow_the_registry_and_memoize() -> None:
    registry = ResourceRegistry()
    docs = OpenAPIDocs(registry)
    index = docs.v3_index()
    assert docs.v3_index() is index  # unchanged: the same bytes, nothing rebuilt
    assert docs.v3_document("apis/example.io/v1") is None
    registry.set_custom("widgets.example.io", crd_types(10))
    first = orjson.loads(docs.v3_index())["paths"]["apis/example.io/v1"]["serverRelativeURL"]
    body = docs.v3_document("apis/example.io/v1")
    assert body is not None and b"patchExampleIoV1NamespacedWidget" in body
    assert first.endswith(f"hash={docs.v3_hash('apis/example.io/v1')}")
    assert docs.v3_document("apis/example.io/v1") is body
    # Re-registered unchanged (a CRD status update): same documents, same hashes.
    registry.set_custom("widgets.example.io", crd_types(10))
    assert docs.v3_document("apis/example.io/v1") is body
    registry.set_custom("widgets.example.io", crd_types(20))
    second = orjson.loads(docs.v3_index())["paths"]["apis/example.io/v1"]["serverRelativeURL"]
    assert second != first
    registry.set_custom("widgets.example.io", [])
    assert docs.v3_document("apis/example.io/v1") is None
    assert docs.v3_hash("apis/example.io/v1") is None
    assert docs.v3_document("api/v1") is not None
    assert decode(docs.v2_protobuf())[1] == [b"2.0"]


def test_docs_over_a_plain_sequence_and_update() -> None:
    resources = list(BUILTIN_RESOURCES)
    docs = OpenAPIDocs(resources)
    assert docs.v3_document("apis/example.io/v1") is None
    resources.append(WIDGET)  # read again on each call
    assert docs.v3_document("apis/example.io/v1") is not None
    docs.update(BUILTIN_RESOURCES)
    assert docs.v3_document("apis/example.io/v1") is None
    expected = openapi_v3_index(BUILTIN_RESOURCES)
    assert orjson.loads(docs.v3_index()) == expected
