"""Bad requests over raw HTTPS: each is a 4xx ``Status`` naming the problem, and the store is
left exactly as it was."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from .conftest import SENSORS, RawClient, ServerThread, install_sensor_crd

CONFIGMAPS = "/api/v1/namespaces/default/configmaps"


def body(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def configmap(name: str = "cfg", **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
            "data": {"k": "v"}, **extra}  # fmt: skip


def sensor(name: str = "s1", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "examples.orbiter.io/v1",
        "kind": "Sensor",
        "metadata": {"name": name},
        "spec": {"gateway": "gw-north", "unit": "celsius", **spec},
    }


@dataclass
class Case:
    method: str
    path: str
    data: bytes
    code: int
    says: list[str]  # the message must name the problem: every one of these appears in it
    content_type: str = "application/json"
    reason: str = ""
    headers: dict[str, str] = field(default_factory=dict)


CASES: dict[str, Case] = {
    "malformed-json": Case(
        "POST",
        CONFIGMAPS,
        b'{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {',
        400,
        ["not valid JSON"],
        reason="BadRequest",
    ),
    "json-not-an-object": Case(
        "POST",
        CONFIGMAPS,
        b'["a", "list"]',
        400,
        ["ConfigMap", "JSON object"],
    ),
    "kind-does-not-match-url": Case(
        "POST",
        CONFIGMAPS,
        body({**configmap(), "kind": "Secret"}),
        400,
        ["Secret", "ConfigMap"],
        reason="BadRequest",
    ),
    "apiversion-does-not-match-url": Case(
        "POST",
        CONFIGMAPS,
        body({**configmap(), "apiVersion": "apps/v1"}),
        400,
        ["apps/v1", "v1"],
    ),
    "namespace-does-not-match-url": Case(
        "POST",
        CONFIGMAPS,
        body(configmap() | {"metadata": {"name": "cfg", "namespace": "kube-system"}}),
        400,
        ["namespace"],
    ),
    "body-over-3MiB": Case(
        "POST",
        CONFIGMAPS,
        body(configmap(data={"big": "x" * (3 * 1024 * 1024)})),
        413,
        ["larger than", str(3 * 1024 * 1024)],
        reason="RequestEntityTooLarge",
    ),
    "custom-resource-failing-its-schema": Case(
        "POST",
        SENSORS,
        body(sensor(unit="kelvin")),
        422,
        ["spec.unit", "kelvin", "Unsupported value"],
        reason="Invalid",
    ),
    "custom-resource-missing-a-required-field": Case(
        "POST",
        SENSORS,
        body({**sensor(), "spec": {"unit": "celsius"}}),
        422,
        ["spec.gateway", "Required"],
        reason="Invalid",
    ),
    "custom-resource-unknown-field-strict": Case(
        "POST",
        SENSORS + "?fieldValidation=Strict",
        body(sensor(colour="red")),
        400,
        ["unknown field", "colour"],
    ),
    "name-not-dns-1123": Case(
        "POST",
        CONFIGMAPS,
        body(configmap("Bad_Name")),
        422,
        ["metadata.name", "Bad_Name", "RFC 1123"],
        reason="Invalid",
    ),
    "no-name-and-no-generate-name": Case(
        "POST",
        CONFIGMAPS,
        body({"metadata": {"labels": {"a": "b"}}, "data": {}}),
        422,
        ["metadata.name", "Required value", "generateName"],
        reason="Invalid",
    ),
    "generate-name-not-dns-1123": Case(
        "POST",
        CONFIGMAPS,
        body({"metadata": {"generateName": "Bad_"}}),
        422,
        ["metadata.name", "Bad_", "RFC 1123"],
        reason="Invalid",
    ),
    "namespace-name-not-dns-1123-label": Case(
        "POST",
        "/api/v1/namespaces",
        body({"metadata": {"name": "team.a"}}),
        422,
        ["metadata.name", "team.a", "RFC 1123 label"],
        reason="Invalid",
    ),
    "unknown-patch-content-type": Case(
        "PATCH",
        f"{CONFIGMAPS}/existing",
        body({"data": {"k": "changed"}}),
        415,
        ["application/x-unknown-patch+json"],
        content_type="application/x-unknown-patch+json",
        reason="UnsupportedMediaType",
    ),
    "strategic-merge-patch-on-a-custom-resource": Case(
        "PATCH",
        f"{SENSORS}/existing",
        body({"spec": {"unit": "percent"}}),
        415,
        ["merge-patch"],
        content_type="application/strategic-merge-patch+json",
        reason="UnsupportedMediaType",
    ),
    "malformed-merge-patch": Case(
        "PATCH",
        f"{CONFIGMAPS}/existing",
        b"{not json",
        400,
        ["JSON"],
        content_type="application/merge-patch+json",
    ),
    "json-patch-test-fails": Case(
        "PATCH",
        f"{CONFIGMAPS}/existing",
        body(
            [
                {"op": "test", "path": "/data/k", "value": "other"},
                {"op": "replace", "path": "/data/k", "value": "changed"},
            ]
        ),
        422,
        ["test"],
        content_type="application/json-patch+json",
    ),
    "unknown-body-content-type": Case(
        "POST",
        CONFIGMAPS,
        body(configmap()),
        415,
        ["text/csv"],
        content_type="text/csv",
        reason="UnsupportedMediaType",
    ),
    "stale-resource-version": Case(
        "PUT",
        f"{CONFIGMAPS}/existing",
        body(configmap("existing") | {"metadata": {"name": "existing", "resourceVersion": "1"}}),
        409,
        ["the object has been modified"],
        reason="Conflict",
    ),
    "update-naming-another-uid": Case(
        "PUT",
        f"{CONFIGMAPS}/existing",
        body(configmap("existing") | {"metadata": {"name": "existing", "uid": "0-other-uid"}}),
        422,
        ["metadata.uid", "0-other-uid", "immutable"],
        reason="Invalid",
    ),
    "patch-changing-the-uid": Case(
        "PATCH",
        f"{CONFIGMAPS}/existing",
        body({"metadata": {"uid": "0-other-uid"}}),
        422,
        ["metadata.uid", "immutable"],
        content_type="application/merge-patch+json",
    ),
    "url-name-differs-from-body": Case(
        "PUT",
        f"{CONFIGMAPS}/existing",
        body(configmap("other")),
        400,
        ["other", "existing"],
    ),
    "bad-label-selector": Case(
        "GET",
        f"{CONFIGMAPS}?labelSelector=a%20in%20(b",
        b"",
        400,
        ["a in (b"],
    ),
    "unsupported-field-selector": Case(
        "GET",
        f"{CONFIGMAPS}?fieldSelector=data.k%3Dv",
        b"",
        400,
        ["data.k"],
    ),
    "bad-limit": Case("GET", f"{CONFIGMAPS}?limit=many", b"", 400, ["limit", "many"]),
    "bad-continue-token": Case(
        "GET",
        f"{CONFIGMAPS}?limit=1&continue=garbage!",
        b"",
        400,
        ["continue"],
    ),
    "bad-dry-run": Case(
        "POST",
        f"{CONFIGMAPS}?dryRun=Some",
        body(configmap()),
        400,
        ["dryRun", "Some"],
    ),
    "bad-propagation-policy": Case(
        "DELETE",
        f"{CONFIGMAPS}/existing",
        body({"propagationPolicy": "Sideways"}),
        400,
        ["propagationPolicy", "Sideways"],
    ),
}


def snapshot(server: ServerThread, raw: RawClient) -> tuple[int, Any, Any]:
    """The store's revision and both lists (items with their resourceVersions)."""
    revision = server.call(server.store.current_revision())
    return revision, raw.json("GET", CONFIGMAPS)["items"], raw.json("GET", SENSORS)["items"]


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_bad_request_is_a_status_and_changes_nothing(
    case: Case, server: ServerThread, raw: RawClient
) -> None:
    install_sensor_crd(raw)
    raw.json("POST", CONFIGMAPS, configmap("existing"), expect=201)
    raw.json("POST", SENSORS, sensor("existing"), expect=201)
    before = snapshot(server, raw)

    resp = raw.request(
        case.method, case.path, case.data or None, content_type=case.content_type,
        headers=case.headers,
    )  # fmt: skip

    assert resp.status == case.code, resp.body[:500]
    assert resp.headers["Content-Type"].startswith("application/json")
    status = resp.json()
    assert status["kind"] == "Status" and status["apiVersion"] == "v1"
    assert status["status"] == "Failure"
    assert status["code"] == case.code
    if case.reason:
        assert status["reason"] == case.reason
    for words in case.says:
        assert words in status["message"], status["message"]
    assert snapshot(server, raw) == before


def test_the_server_stays_usable_after_an_oversized_body(
    server: ServerThread, raw: RawClient
) -> None:
    """A refused huge body must not leave the connection or the server in a bad state."""
    huge = body(configmap(data={"big": "x" * (4 * 1024 * 1024)}))
    assert raw.request("POST", CONFIGMAPS, huge).status == 413
    # Just under the limit is fine (the limit is on the body, as in kube-apiserver).
    fits = configmap("fits", data={"big": "x" * (1024 * 1024)})
    assert raw.json("POST", CONFIGMAPS, fits, expect=201)["metadata"]["name"] == "fits"


@pytest.mark.parametrize("validation", ["", "Warn", "Ignore"])
def test_unknown_fields_are_pruned_with_a_warning_header(
    validation: str, server: ServerThread, raw: RawClient
) -> None:
    """fieldValidation Warn (the default) prunes and says so in a ``Warning: 299`` header, the
    way kubectl --validate=warn reports it; Ignore prunes silently."""
    install_sensor_crd(raw)
    query = f"?fieldValidation={validation}" if validation else ""
    warned = validation != "Ignore"

    resp = raw.request("POST", SENSORS + query, body(sensor(colour="red")))
    assert resp.status == 201, resp.body[:500]
    assert "colour" not in resp.json()["spec"]
    assert resp.headers.get("Warning") == (
        '299 - "unknown field \\"spec.colour\\""' if warned else None
    )
    resp = raw.request("PATCH", f"{SENSORS}/s1{query}", body({"spec": {"size": 3}}),
                       content_type="application/merge-patch+json")  # fmt: skip
    assert resp.status == 200, resp.body[:500]
    assert "size" not in resp.json()["spec"]
    assert resp.headers.get("Warning") == (
        '299 - "unknown field \\"spec.size\\""' if warned else None
    )
    # A write with nothing unknown has no warning.
    resp = raw.request("PATCH", f"{SENSORS}/s1{query}", body({"spec": {"unit": "percent"}}),
                       content_type="application/merge-patch+json")  # fmt: skip
    assert resp.status == 200 and "Warning" not in resp.headers
