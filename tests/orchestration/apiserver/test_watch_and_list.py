"""List and watch semantics over HTTPS: selectors, pages, watch endings, bookmarks, 410s,
deletecollection, generateName, dry runs, deletion with finalizers and propagation policies,
and namespace deletion (the last two with the cloud's controllers)."""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orbiter.testing import CloudThread

from .conftest import RawClient, ServerThread, raw_client, wait_for

CM = "/api/v1/namespaces/default/configmaps"


def q(**params: Any) -> str:
    return "?" + urllib.parse.urlencode(params)


def names(listed: dict[str, Any]) -> list[str]:
    return [o["metadata"]["name"] for o in listed["items"]]


def create_cm(raw: RawClient, name: str, ns: str = "default", **meta: Any) -> dict[str, Any]:
    body = {"metadata": {"name": name, **meta}, "data": {"v": name}}
    return raw.json("POST", f"/api/v1/namespaces/{ns}/configmaps", body, expect=201)  # type: ignore[no-any-return]


def create_ns(raw: RawClient, name: str) -> None:
    raw.json("POST", "/api/v1/namespaces", {"metadata": {"name": name}}, expect=201)


class Watch:
    """A raw watch stream: one JSON event per line."""

    def __init__(self, raw: RawClient, path: str, timeout: float = 30.0) -> None:
        self.conn, self.resp = raw.stream(path, timeout=timeout)
        assert self.resp.status == 200, self.resp.read()

    def next(self) -> dict[str, Any] | None:
        """The next event, or None when the server ended the stream."""
        line = self.resp.readline()
        return json.loads(line) if line else None

    def take(self, count: int, *, skip_bookmarks: bool = True) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        while len(events) < count:
            ev = self.next()
            assert ev is not None, f"the watch ended after {events}"
            if skip_bookmarks and ev["type"] == "BOOKMARK":
                continue
            events.append(ev)
        return events

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["type"], e["object"]["metadata"]["name"]) for e in events]


# --- selectors ---------------------------------------------------------------------------------


@pytest.fixture
def pods(raw: RawClient) -> dict[str, dict[str, Any]]:
    """Five pods in two namespaces, on nodes or not, in several phases."""
    create_ns(raw, "other")
    specs = {
        ("default", "web-1"): ("node-a", "Running", {"app": "web", "tier": "front"}),
        ("default", "web-2"): ("node-b", "Running", {"app": "web", "tier": "front"}),
        ("default", "db-1"): ("node-a", "Pending", {"app": "db", "tier": "back"}),
        ("default", "job-1"): ("", "Succeeded", {"app": "job"}),
        ("other", "web-3"): ("node-a", "Failed", {"app": "web", "env": "prod"}),
    }
    made = {}
    for (ns, name), (node, phase, labels) in specs.items():
        spec: dict[str, Any] = {"containers": [{"name": "c", "image": "busybox"}]}
        if node:
            spec["nodeName"] = node
        path = f"/api/v1/namespaces/{ns}/pods"
        pod = raw.json("POST", path, {"metadata": {"name": name, "labels": labels}, "spec": spec},
                       expect=201)  # fmt: skip
        pod["status"] = {"phase": phase}
        made[name] = raw.json("PUT", f"{path}/{name}/status", pod)
        assert made[name]["status"]["phase"] == phase
    return made


FIELD_CASES = {
    "metadata.name=web-1": ["web-1"],
    "metadata.name==web-1": ["web-1"],
    "metadata.name!=web-1": ["db-1", "job-1", "web-2", "web-3"],
    "metadata.namespace=other": ["web-3"],
    "metadata.namespace==default": ["db-1", "job-1", "web-1", "web-2"],
    "metadata.namespace!=default": ["web-3"],
    "spec.nodeName=node-a": ["db-1", "web-1", "web-3"],
    "spec.nodeName==node-b": ["web-2"],
    "spec.nodeName!=node-a": ["job-1", "web-2"],
    "spec.nodeName=": ["job-1"],  # unscheduled pods, as the scheduler asks
    "status.phase=Running": ["web-1", "web-2"],
    "status.phase==Pending": ["db-1"],
    "status.phase!=Running": ["db-1", "job-1", "web-3"],
    "status.phase!=Running,status.phase!=Pending": ["job-1", "web-3"],
    "spec.nodeName=node-a,status.phase=Running": ["web-1"],
    "metadata.namespace=default,spec.nodeName!=node-b": ["db-1", "job-1", "web-1"],
}


@pytest.mark.parametrize("selector", list(FIELD_CASES))
def test_field_selectors(selector: str, pods: Any, raw: RawClient) -> None:
    listed = raw.json("GET", "/api/v1/pods" + q(fieldSelector=selector))
    assert sorted(names(listed)) == FIELD_CASES[selector]


def test_field_selectors_within_a_namespace(pods: Any, raw: RawClient) -> None:
    listed = raw.json(
        "GET", "/api/v1/namespaces/other/pods" + q(fieldSelector="spec.nodeName=node-a")
    )
    assert names(listed) == ["web-3"]


LABEL_CASES = {
    "app=web": ["web-1", "web-2", "web-3"],
    "app==web": ["web-1", "web-2", "web-3"],
    "app!=web": ["db-1", "job-1"],
    "app=web,tier=front": ["web-1", "web-2"],
    "app in (db,job)": ["db-1", "job-1"],
    "app notin (web)": ["db-1", "job-1"],
    "tier": ["db-1", "web-1", "web-2"],
    "!tier": ["job-1", "web-3"],
    "env,app=web": ["web-3"],
    "tier in (front,back),app!=db": ["web-1", "web-2"],
    "tier notin (front)": ["db-1", "job-1", "web-3"],  # notin matches a missing key, as in k8s
    "app=nothing": [],
}


@pytest.mark.parametrize("selector", list(LABEL_CASES))
def test_label_selectors(selector: str, pods: Any, raw: RawClient) -> None:
    listed = raw.json("GET", "/api/v1/pods" + q(labelSelector=selector))
    assert sorted(names(listed)) == LABEL_CASES[selector]


def test_label_and_field_selectors_combine(pods: Any, raw: RawClient) -> None:
    listed = raw.json(
        "GET", "/api/v1/pods" + q(labelSelector="app=web", fieldSelector="spec.nodeName=node-a")
    )
    assert sorted(names(listed)) == ["web-1", "web-3"]


def test_a_watch_with_a_selector_sees_objects_enter_and_leave_it(
    server: ServerThread, raw: RawClient
) -> None:
    start = create_cm(raw, "a", labels={"watched": "no"})
    rv = start["metadata"]["resourceVersion"]
    with Watch(raw, CM + q(watch=1, resourceVersion=rv, labelSelector="watched=yes")) as w:
        patch = {"metadata": {"labels": {"watched": "yes"}}}
        raw.request("PATCH", f"{CM}/a", patch, content_type="application/merge-patch+json")
        raw.request("PATCH", f"{CM}/a", {"data": {"v": "2"}},
                    content_type="application/merge-patch+json")  # fmt: skip
        create_cm(raw, "b", labels={"watched": "no"})  # never in the selection: not seen
        patch = {"metadata": {"labels": {"watched": "no"}}}
        raw.request("PATCH", f"{CM}/a", patch, content_type="application/merge-patch+json")
        create_cm(raw, "c", labels={"watched": "yes"})
        events = w.take(4)
    assert summary(events) == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a"),
                               ("ADDED", "c")]  # fmt: skip


def test_field_selector_watch_on_pods(pods: Any, raw: RawClient) -> None:
    listed = raw.json("GET", "/api/v1/namespaces/default/pods")
    rv = listed["metadata"]["resourceVersion"]
    path = "/api/v1/namespaces/default/pods"
    with Watch(
        raw, path + q(watch=1, resourceVersion=rv, fieldSelector="status.phase=Running")
    ) as w:
        pod = raw.json("GET", f"{path}/db-1")
        pod["status"]["phase"] = "Running"
        raw.json("PUT", f"{path}/db-1/status", pod)
        pod = raw.json("GET", f"{path}/web-1")
        pod["status"]["phase"] = "Succeeded"
        raw.json("PUT", f"{path}/web-1/status", pod)
        events = w.take(2)
    assert summary(events) == [("ADDED", "db-1"), ("DELETED", "web-1")]


# --- pages ------------------------------------------------------------------------------------


def test_limit_and_continue_pages_are_one_consistent_snapshot(raw: RawClient) -> None:
    for i in range(10):
        create_cm(raw, f"cm-{i:02d}")
    first = raw.json("GET", CM + q(limit=4))
    snapshot_rv = first["metadata"]["resourceVersion"]
    assert names(first) == ["cm-00", "cm-01", "cm-02", "cm-03"]
    assert first["metadata"]["continue"]
    assert first["metadata"]["remainingItemCount"] == 6

    # Changes after the first page do not show in the later ones.
    create_cm(raw, "cm-05a")
    raw.json("DELETE", f"{CM}/cm-08")
    pages = [first]
    while pages[-1]["metadata"].get("continue"):
        token = pages[-1]["metadata"]["continue"]
        pages.append(raw.json("GET", CM + q(limit=4, **{"continue": token})))
    assert [names(p) for p in pages] == [
        ["cm-00", "cm-01", "cm-02", "cm-03"],
        ["cm-04", "cm-05", "cm-06", "cm-07"],
        ["cm-08", "cm-09"],
    ]
    assert {p["metadata"]["resourceVersion"] for p in pages} == {snapshot_rv}
    assert "continue" not in pages[-1]["metadata"]
    # A fresh list sees the changes.
    fresh = names(raw.json("GET", CM))
    assert "cm-05a" in fresh and "cm-08" not in fresh


def test_pages_with_a_selector_fill_up_and_end(raw: RawClient) -> None:
    for i in range(12):
        create_cm(raw, f"cm-{i:02d}", labels={"parity": "even" if i % 2 == 0 else "odd"})
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2, "labelSelector": "parity=odd"}
        if token:
            params["continue"] = token
        page = raw.json("GET", CM + q(**params))
        pages += 1
        assert len(page["items"]) <= 2
        seen += names(page)
        token = page["metadata"].get("continue", "")
        if not token:
            break
    assert seen == [f"cm-{i:02d}" for i in range(1, 12, 2)]
    assert pages <= 4


def test_continue_after_compaction_is_410(server: ServerThread, raw: RawClient) -> None:
    for i in range(4):
        create_cm(raw, f"cm-{i}")
    first = raw.json("GET", CM + q(limit=2))
    for i in range(4):
        raw.request("PATCH", f"{CM}/cm-{i}", {"data": {"v": "new"}},
                    content_type="application/merge-patch+json")  # fmt: skip
    server.call(server.store.compact(server.call(server.store.current_revision())))
    resp = raw.get(CM + q(limit=2, **{"continue": first["metadata"]["continue"]}))
    assert resp.status == 410
    status = resp.json()
    assert status["reason"] == "Expired" and status["code"] == 410
    assert "continue" in status["message"]


# --- watch endings, bookmarks, 410 ------------------------------------------------------------


def test_watch_timeout_seconds_ends_the_stream(raw: RawClient) -> None:
    listed = raw.json("GET", CM)
    rv = listed["metadata"]["resourceVersion"]
    started = time.monotonic()
    with Watch(raw, CM + q(watch=1, resourceVersion=rv, timeoutSeconds=1)) as w:
        create_cm(raw, "during")
        events = []
        while (ev := w.next()) is not None:
            events.append(ev)
    elapsed = time.monotonic() - started
    assert summary(events) == [("ADDED", "during")]
    assert 0.9 <= elapsed < 10, elapsed


def test_watch_from_zero_starts_with_the_current_objects(raw: RawClient) -> None:
    create_cm(raw, "a")
    create_cm(raw, "b")
    with Watch(raw, CM + q(watch=1, timeoutSeconds=5)) as w:
        events = w.take(2)
        assert summary(events) == [("ADDED", "a"), ("ADDED", "b")]
        create_cm(raw, "c")
        assert summary(w.take(1)) == [("ADDED", "c")]


def test_bookmarks_only_when_allowed(server: ServerThread, raw: RawClient) -> None:
    created = create_cm(raw, "a")
    rv = created["metadata"]["resourceVersion"]
    # The server in these tests sends a bookmark after 0.2 s of silence.
    with Watch(raw, CM + q(watch=1, resourceVersion=rv, allowWatchBookmarks="true")) as w:
        ev = w.next()
        assert ev is not None and ev["type"] == "BOOKMARK"
        assert ev["object"]["kind"] == "ConfigMap" and ev["object"]["apiVersion"] == "v1"
        assert int(ev["object"]["metadata"]["resourceVersion"]) >= int(rv)
        later = create_cm(raw, "b")
        events = w.take(1)
        assert summary(events) == [("ADDED", "b")]
        # The next bookmark carries the revision the stream has passed.
        while (ev := w.next()) is not None and ev["type"] != "BOOKMARK":
            pass
        assert ev is not None
        later_rv = int(later["metadata"]["resourceVersion"])
        assert int(ev["object"]["metadata"]["resourceVersion"]) >= later_rv
    # Without allowWatchBookmarks: nothing at all in a quiet 1-second watch.
    rv = later["metadata"]["resourceVersion"]
    with Watch(raw, CM + q(watch=1, resourceVersion=rv, timeoutSeconds=1)) as w:
        assert w.next() is None


def test_watch_from_a_compacted_revision_is_410(server: ServerThread, raw: RawClient) -> None:
    old = create_cm(raw, "a")["metadata"]["resourceVersion"]
    for i in range(3):
        raw.request("PATCH", f"{CM}/a", {"data": {"v": str(i)}},
                    content_type="application/merge-patch+json")  # fmt: skip
    now = server.call(server.store.current_revision())
    server.call(server.store.compact(now))
    conn, resp = raw.stream(CM + q(watch=1, resourceVersion=old))
    try:
        body = resp.read()
    finally:
        conn.close()
    # As kube-apiserver answers it: a 200 stream whose only event is an ERROR with a 410 Status
    # (kopf and client-go re-list on that event; an HTTP 410 would be a failed request to them).
    assert resp.status == 200, body
    lines = body.splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["type"] == "ERROR"
    status = event["object"]
    assert status["kind"] == "Status"
    assert status["code"] == 410 and status["reason"] == "Expired"
    assert "too old resource version" in status["message"]
    # Watching from the compacted revision itself, or later, works.
    with Watch(raw, CM + q(watch=1, resourceVersion=now, timeoutSeconds=1)) as w:
        assert w.next() is None


# --- writes: deletecollection, generateName, dryRun -------------------------------------------


def test_delete_collection(server: ServerThread, raw: RawClient) -> None:
    for i in range(6):
        create_cm(raw, f"cm-{i}", labels={"batch": "one" if i < 4 else "two"})
    create_ns(raw, "other")
    create_cm(raw, "elsewhere", ns="other", labels={"batch": "one"})
    rv = raw.json("GET", CM)["metadata"]["resourceVersion"]
    with Watch(raw, CM + q(watch=1, resourceVersion=rv)) as w:
        deleted = raw.json("DELETE", CM + q(labelSelector="batch=one"))
        events = w.take(4)
    assert deleted["kind"] == "ConfigMapList"
    assert sorted(names(deleted)) == ["cm-0", "cm-1", "cm-2", "cm-3"]
    assert sorted(summary(events)) == [("DELETED", f"cm-{i}") for i in range(4)]
    assert names(raw.json("GET", CM)) == ["cm-4", "cm-5"]
    assert names(raw.json("GET", "/api/v1/namespaces/other/configmaps")) == ["elsewhere"]
    # Without a selector: everything in the namespace.
    raw.json("DELETE", CM)
    assert names(raw.json("GET", CM)) == []
    # dryRun deletes nothing.
    before = server.call(server.store.current_revision())
    out = raw.json("DELETE", "/api/v1/namespaces/other/configmaps" + q(dryRun="All"))
    assert names(out) == ["elsewhere"]
    assert server.call(server.store.current_revision()) == before


def test_generate_name(raw: RawClient) -> None:
    body = {"metadata": {"generateName": "job-"}, "data": {}}
    first = raw.json("POST", CM, body, expect=201)
    second = raw.json("POST", CM, body, expect=201)
    for made in (first, second):
        name = made["metadata"]["name"]
        assert name.startswith("job-") and len(name) == len("job-") + 5
        assert made["metadata"]["generateName"] == "job-"
    assert first["metadata"]["name"] != second["metadata"]["name"]
    assert sorted(names(raw.json("GET", CM))) == sorted(
        [first["metadata"]["name"], second["metadata"]["name"]]
    )
    # An explicit name wins over generateName.
    named = raw.json("POST", CM, {"metadata": {"name": "fixed", "generateName": "x-"}},
                     expect=201)  # fmt: skip
    assert named["metadata"]["name"] == "fixed"


def test_dry_run_all_stores_nothing(server: ServerThread, raw: RawClient) -> None:
    existing = create_cm(raw, "existing")
    before = server.call(server.store.current_revision())
    listed_before = raw.json("GET", CM)
    dry = q(dryRun="All")

    made = raw.json("POST", CM + dry, {"metadata": {"name": "dry"}, "data": {"k": "v"}},
                    expect=201)  # fmt: skip
    assert made["metadata"]["name"] == "dry" and made["metadata"]["uid"]
    generated = raw.json("POST", CM + dry, {"metadata": {"generateName": "gen-"}}, expect=201)
    assert generated["metadata"]["name"].startswith("gen-")
    existing["data"] = {"v": "changed"}
    assert raw.json("PUT", f"{CM}/existing" + dry, existing)["data"] == {"v": "changed"}
    resp = raw.request("PATCH", f"{CM}/existing" + dry, {"data": {"v": "patched"}},
                       content_type="application/merge-patch+json")  # fmt: skip
    assert resp.status == 200 and resp.json()["data"] == {"v": "patched"}
    assert raw.request("DELETE", f"{CM}/existing" + dry).status == 200
    # dryRun still validates: a bad object is refused as it would be for real.
    resp = raw.request("POST", CM + dry, {"metadata": {"name": "Bad_Name"}})
    assert resp.status == 422
    resp = raw.request("POST", CM + dry, {"metadata": {"name": "existing"}})
    assert resp.status == 409

    assert server.call(server.store.current_revision()) == before
    assert raw.json("GET", CM) == listed_before


# --- deletion: finalizers and propagation policies --------------------------------------------


@pytest.mark.parametrize("policy", ["Background", "Foreground", "Orphan", None])
def test_finalizers_hold_a_deleted_object(
    policy: str | None, server: ServerThread, raw: RawClient
) -> None:
    create_cm(raw, "held", finalizers=["example.com/hold"])
    options = {"propagationPolicy": policy} if policy else {}
    rv = raw.json("GET", CM)["metadata"]["resourceVersion"]
    with Watch(raw, CM + q(watch=1, resourceVersion=rv)) as w:
        resp = raw.json("DELETE", f"{CM}/held", options)
        # The object stays, marked for deletion, with the policy's own finalizer if any.
        assert resp["metadata"]["deletionTimestamp"]
        got = raw.json("GET", f"{CM}/held")
        assert got["metadata"]["deletionTimestamp"] == resp["metadata"]["deletionTimestamp"]
        extra = {"Foreground": ["foregroundDeletion"], "Orphan": ["orphan"]}.get(policy or "", [])
        expected = ["example.com/hold", *extra]
        assert got["metadata"]["finalizers"] == expected
        # A second delete changes nothing; updates other than finalizers still work.
        again = raw.json("DELETE", f"{CM}/held", options)
        assert again["metadata"]["resourceVersion"] == got["metadata"]["resourceVersion"]
        raw.request("PATCH", f"{CM}/held", {"data": {"v": "still-here"}},
                    content_type="application/merge-patch+json")  # fmt: skip
        assert raw.json("GET", f"{CM}/held")["data"] == {"v": "still-here"}
        # Removing the last finalizer finishes the delete.
        raw.request("PATCH", f"{CM}/held", {"metadata": {"finalizers": None}},
                    content_type="application/merge-patch+json")  # fmt: skip
        assert raw.get(f"{CM}/held").status == 404
        events = w.take(3)
    assert summary(events) == [("MODIFIED", "held")] * 2 + [("DELETED", "held")]
    assert events[0]["object"]["metadata"]["deletionTimestamp"]


def test_delete_precondition_mismatch_is_409(raw: RawClient) -> None:
    made = create_cm(raw, "a")
    resp = raw.request("DELETE", f"{CM}/a", {"preconditions": {"uid": "not-the-uid"}})
    assert resp.status == 409
    resp = raw.request("DELETE", f"{CM}/a", {"preconditions": {"resourceVersion": "1"}})
    assert resp.status == 409
    assert raw.get(f"{CM}/a").status == 200
    ok = {"preconditions": {"uid": made["metadata"]["uid"]}}
    assert raw.request("DELETE", f"{CM}/a", ok).status == 200
    assert raw.get(f"{CM}/a").status == 404


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[CloudThread]:
    """The API server with the cloud's controllers (garbage collector, namespaces)."""
    with CloudThread(tmp_path / "cloud", bookmark_interval=0.2) as c:
        yield c


def owner_and_dependents(raw: RawClient, count: int = 3) -> tuple[dict[str, Any], list[str]]:
    owner = create_cm(raw, "owner")
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
           "uid": owner["metadata"]["uid"]}  # fmt: skip
    deps = []
    for i in range(count):
        # blockOwnerDeletion: a foreground delete of the owner waits for these.
        create_cm(raw, f"dep-{i}", ownerReferences=[{**ref, "blockOwnerDeletion": True}])
        deps.append(f"dep-{i}")
    return owner, deps


def gone(raw: RawClient, name: str) -> bool:
    return raw.get(f"{CM}/{name}").status == 404


@pytest.mark.slow
def test_background_deletion_collects_dependents(cloud: CloudThread) -> None:
    raw = raw_client(cloud.cloud.server)
    _, deps = owner_and_dependents(raw)
    raw.json("DELETE", f"{CM}/owner", {"propagationPolicy": "Background"})
    assert gone(raw, "owner")  # at once
    wait_for(lambda: all(gone(raw, d) for d in deps), what="the dependents to be collected")


@pytest.mark.slow
def test_foreground_deletion_removes_dependents_first(cloud: CloudThread) -> None:
    raw = raw_client(cloud.cloud.server)
    _, deps = owner_and_dependents(raw)
    rv = raw.json("GET", CM)["metadata"]["resourceVersion"]
    with Watch(raw, CM + q(watch=1, resourceVersion=rv)) as w:
        resp = raw.json("DELETE", f"{CM}/owner", {"propagationPolicy": "Foreground"})
        assert resp["metadata"]["deletionTimestamp"]
        assert "foregroundDeletion" in resp["metadata"]["finalizers"]
        deleted: list[str] = []
        while "owner" not in deleted:
            (ev,) = w.take(1)
            if ev["type"] == "DELETED":
                deleted.append(ev["object"]["metadata"]["name"])
    # The owner went last, after every dependent that blocks it.
    assert deleted[-1] == "owner" and sorted(deleted[:-1]) == deps


@pytest.mark.slow
def test_foreground_deletion_with_another_finalizer_waits_for_it(cloud: CloudThread) -> None:
    raw = raw_client(cloud.cloud.server)
    _, deps = owner_and_dependents(raw, count=2)
    raw.request("PATCH", f"{CM}/owner", {"metadata": {"finalizers": ["example.com/hold"]}},
                content_type="application/merge-patch+json")  # fmt: skip
    raw.json("DELETE", f"{CM}/owner", {"propagationPolicy": "Foreground"})
    wait_for(lambda: all(gone(raw, d) for d in deps), what="the dependents to be deleted")

    def only_ours_left() -> bool:
        fins = raw.json("GET", f"{CM}/owner")["metadata"].get("finalizers")
        return fins == ["example.com/hold"]

    wait_for(only_ours_left, what="the garbage collector to drop foregroundDeletion")
    got = raw.json("GET", f"{CM}/owner")
    assert got["metadata"]["deletionTimestamp"]
    raw.request("PATCH", f"{CM}/owner", {"metadata": {"finalizers": []}},
                content_type="application/merge-patch+json")  # fmt: skip
    assert gone(raw, "owner")


@pytest.mark.slow
def test_orphan_deletion_keeps_dependents(cloud: CloudThread) -> None:
    raw = raw_client(cloud.cloud.server)
    _, deps = owner_and_dependents(raw)
    resp = raw.json("DELETE", f"{CM}/owner", {"propagationPolicy": "Orphan"})
    assert "orphan" in resp["metadata"]["finalizers"]
    wait_for(lambda: gone(raw, "owner"), what="the orphaning owner to go")
    for d in deps:
        got = raw.json("GET", f"{CM}/{d}")
        assert not got["metadata"].get("ownerReferences"), got["metadata"]


@pytest.mark.slow
def test_namespace_deletion_removes_its_contents(cloud: CloudThread) -> None:
    raw = raw_client(cloud.cloud.server)
    create_ns(raw, "doomed")
    create_cm(raw, "a", ns="doomed")
    create_cm(raw, "held", ns="doomed", finalizers=["example.com/hold"])
    raw.json("POST", "/api/v1/namespaces/doomed/secrets",
             {"metadata": {"name": "s"}, "stringData": {"k": "v"}}, expect=201)  # fmt: skip
    raw.json("POST", "/api/v1/namespaces/doomed/pods",
             {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}},
             expect=201)  # fmt: skip
    create_ns(raw, "kept")
    create_cm(raw, "a", ns="kept")

    resp = raw.json("DELETE", "/api/v1/namespaces/doomed")
    assert resp["status"]["phase"] == "Terminating"
    assert resp["metadata"]["deletionTimestamp"]
    # Nothing new may be created in a terminating namespace.
    refused = raw.request("POST", "/api/v1/namespaces/doomed/configmaps",
                          {"metadata": {"name": "late"}})  # fmt: skip
    assert refused.status == 403
    assert "being terminated" in refused.json()["message"]

    def emptied_but_held() -> bool:
        left = {
            kind: names(raw.json("GET", f"/api/v1/namespaces/doomed/{kind}"))
            for kind in ("configmaps", "secrets", "pods")
        }
        return left == {"configmaps": ["held"], "secrets": [], "pods": []}

    wait_for(emptied_but_held, what="the namespace's contents to be deleted")
    # The object with a finalizer holds the namespace (Terminating) until it goes.
    ns = raw.json("GET", "/api/v1/namespaces/doomed")
    assert ns["status"]["phase"] == "Terminating"
    assert raw.json("GET", "/api/v1/namespaces/doomed/configmaps/held")["metadata"][
        "deletionTimestamp"
    ]
    raw.request("PATCH", "/api/v1/namespaces/doomed/configmaps/held",
                {"metadata": {"finalizers": None}},
                content_type="application/merge-patch+json")  # fmt: skip
    wait_for(lambda: raw.get("/api/v1/namespaces/doomed").status == 404,
             what="the namespace to be gone")  # fmt: skip
    # Other namespaces are untouched.
    assert names(raw.json("GET", "/api/v1/namespaces/kept/configmaps")) == ["a"]
