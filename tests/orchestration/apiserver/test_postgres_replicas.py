"""Two ``orbiter cloud`` replicas on one PostgreSQL database: each sees the other's writes and
watch events. Each replica has its own data dir, so its own CA and admin token."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import SENSOR_CRD, CloudProcess, RawClient, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

CM = "/api/v1/namespaces/default/configmaps"
SENSORS = "/apis/examples.orbiter.io/v1/namespaces/default/sensors"


def next_event(resp: Any) -> dict[str, Any]:
    while True:
        line = resp.readline()
        assert line, "the watch ended"
        event: dict[str, Any] = json.loads(line)
        if event["type"] != "BOOKMARK":
            return event


@pytest.fixture
def replicas(
    postgres_database: str, start_cloud: Callable[..., CloudProcess], tmp_path: Path
) -> tuple[RawClient, RawClient]:
    # Replicas share the Secret encryption key, as they must to read each other's Secrets.
    key = tmp_path / "encryption.key"
    a = start_cloud(tmp_path / "a", "--store", postgres_database, "--encryption-key-file", str(key))
    b = start_cloud(tmp_path / "b", "--store", postgres_database, "--encryption-key-file", str(key))
    ca, cb = a.client(), b.client()
    assert ca.token != cb.token
    assert (tmp_path / "a" / "ca.crt").read_bytes() != (tmp_path / "b" / "ca.crt").read_bytes()
    return ca, cb


def test_replicas_see_each_others_writes(replicas: tuple[RawClient, RawClient]) -> None:
    a, b = replicas
    made = a.json("POST", CM, {"metadata": {"name": "from-a"}, "data": {"v": "1"}}, expect=201)
    got = b.json("GET", f"{CM}/from-a")  # the store is shared: no propagation delay
    assert got["metadata"]["uid"] == made["metadata"]["uid"]
    assert got["metadata"]["resourceVersion"] == made["metadata"]["resourceVersion"]

    # An update through B with A's version wins once; A's stale update then conflicts.
    got["data"]["v"] = "2"
    updated = b.json("PUT", f"{CM}/from-a", got)
    made["data"]["v"] = "stale"
    resp = a.request("PUT", f"{CM}/from-a", made)
    assert resp.status == 409 and resp.json()["reason"] == "Conflict"
    assert a.json("GET", f"{CM}/from-a")["data"] == {"v": "2"}
    # Revisions are one sequence across replicas.
    other = a.json("POST", CM, {"metadata": {"name": "second"}}, expect=201)
    assert int(other["metadata"]["resourceVersion"]) > int(updated["metadata"]["resourceVersion"])
    # Both list the same thing; a name taken on one is taken on the other.
    assert b.json("GET", CM)["items"] == a.json("GET", CM)["items"]
    resp = b.request("POST", CM, {"metadata": {"name": "second"}})
    assert resp.status == 409 and resp.json()["reason"] == "AlreadyExists"
    b.json("DELETE", f"{CM}/from-a")
    assert a.get(f"{CM}/from-a").status == 404


def test_watch_on_one_replica_sees_writes_through_the_other(
    replicas: tuple[RawClient, RawClient],
) -> None:
    a, b = replicas
    rv = a.json("GET", CM)["metadata"]["resourceVersion"]
    query = urllib.parse.urlencode({"watch": "1", "resourceVersion": rv,
                                    "allowWatchBookmarks": "true"})  # fmt: skip
    conn_b, watch_b = b.stream(f"{CM}?{query}")
    conn_a, watch_a = a.stream(f"{CM}?{query}")
    try:
        a.json("POST", CM, {"metadata": {"name": "x"}, "data": {"v": "1"}}, expect=201)
        ev = next_event(watch_b)
        assert (ev["type"], ev["object"]["metadata"]["name"]) == ("ADDED", "x")

        b.request("PATCH", f"{CM}/x", {"data": {"v": "2"}},
                  content_type="application/merge-patch+json")  # fmt: skip
        b.json("DELETE", f"{CM}/x")
        seen_a = [next_event(watch_a) for _ in range(3)]
        assert [(e["type"], e["object"]["data"]["v"]) for e in seen_a] == [
            ("ADDED", "1"), ("MODIFIED", "2"), ("DELETED", "2"),
        ]  # fmt: skip
        seen_b = [next_event(watch_b) for _ in range(2)]
        # Both replicas deliver the same events with the same revisions.
        assert [e["object"]["metadata"]["resourceVersion"] for e in seen_a[1:]] == [
            e["object"]["metadata"]["resourceVersion"] for e in seen_b
        ]
    finally:
        conn_a.close()
        conn_b.close()


def test_a_crd_created_on_one_replica_is_served_by_the_other(
    replicas: tuple[RawClient, RawClient],
) -> None:
    a, b = replicas
    a.json("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
           yaml.safe_load(SENSOR_CRD), expect=201)  # fmt: skip
    wait_for(lambda: b.get(SENSORS).status == 200, what="replica B to serve the CRD")
    sensor = {"apiVersion": "examples.orbiter.io/v1", "kind": "Sensor",
              "metadata": {"name": "s1"}, "spec": {"gateway": "gw", "unit": "kelvin"}}  # fmt: skip
    resp = b.request("POST", SENSORS, sensor)  # B validates with the schema A registered
    assert resp.status == 422 and "spec.unit" in resp.json()["message"]
    sensor["spec"]["unit"] = "celsius"
    made = b.json("POST", SENSORS, sensor, expect=201)
    assert made["spec"]["intervalSeconds"] == 60
    assert a.json("GET", f"{SENSORS}/s1")["metadata"]["uid"] == made["metadata"]["uid"]


def test_a_secret_written_through_one_replica_reads_on_the_other(
    replicas: tuple[RawClient, RawClient],
) -> None:
    a, b = replicas
    secrets_path = "/api/v1/namespaces/default/secrets"
    a.json("POST", secrets_path, {"metadata": {"name": "s"}, "stringData": {"k": "v"}}, expect=201)
    assert b.json("GET", f"{secrets_path}/s")["data"] == {"k": "dg=="}
