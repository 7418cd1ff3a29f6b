"""Crash safety: ``kill -9`` mid-burst loses no acknowledged write and leaves a sound database."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import CloudProcess, RawClient, wait_for

pytestmark = pytest.mark.slow

WRITERS = 4
KILL_AFTER = 200  # acknowledged creates before the kill; the writers keep going until it


def integrity(db: Path) -> list[tuple[str]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()


def test_kill_9_loses_no_acknowledged_create(
    start_cloud: Callable[..., CloudProcess], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    cloud = start_cloud(data)
    client = cloud.client()
    acked: dict[str, set[str]] = {"configmaps": set(), "secrets": set()}
    lock = threading.Lock()
    stop = threading.Event()
    failures: list[BaseException] = []

    def writer(w: int) -> None:
        n = 0
        while not stop.is_set():
            kind = "configmaps" if n % 2 == 0 else "secrets"
            name = f"w{w}-{n}"
            body = (
                {"metadata": {"name": name}, "data": {"v": name}}
                if kind == "configmaps"
                else {"metadata": {"name": name}, "stringData": {"v": name}}
            )
            try:
                resp = client.request("POST", f"/api/v1/namespaces/default/{kind}", body,
                                      timeout=10)  # fmt: skip
            except OSError:
                return  # the server is gone: this create was never acknowledged
            if resp.status != 201:
                failures.append(AssertionError(f"{name}: {resp.status} {resp.body[:300]!r}"))
                return
            with lock:
                acked[kind].add(name)
            n += 1

    threads = [threading.Thread(target=writer, args=(w,), name=f"writer-{w}")
               for w in range(WRITERS)]  # fmt: skip
    for t in threads:
        t.start()
    try:
        wait_for(
            lambda: sum(map(len, acked.values())) >= KILL_AFTER or failures,
            timeout=60, what=f"{KILL_AFTER} acknowledged creates",
        )  # fmt: skip
        os.kill(cloud.proc.pid, signal.SIGKILL)  # mid-burst: the writers are still going
        cloud.proc.wait(30)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not failures, failures
    assert cloud.proc.returncode == -signal.SIGKILL
    total = sum(map(len, acked.values()))
    assert total >= KILL_AFTER

    # The database as the crash left it (with its WAL) is sound; checked on a copy so that the
    # restart below recovers the very files the crash left.
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    for f in data.glob("state.db*"):
        shutil.copy2(f, crashed / f.name)
    assert integrity(crashed / "state.db") == [("ok",)]

    restarted = start_cloud(data)
    client2 = restarted.client()
    for kind, names in acked.items():
        listed = client2.json("GET", f"/api/v1/namespaces/default/{kind}")
        present = {o["metadata"]["name"]: o for o in listed["items"]}
        missing = names - present.keys()
        assert not missing, f"acknowledged {kind} lost in the crash: {sorted(missing)}"
        for name in names:
            obj = present[name]
            if kind == "configmaps":
                assert obj["data"] == {"v": name}
            else:
                assert base64.b64decode(obj["data"]["v"]).decode() == name
    # The store keeps working after recovery.
    client2.json("POST", "/api/v1/namespaces/default/configmaps",
                 {"metadata": {"name": "after-crash"}}, expect=201)  # fmt: skip
    assert restarted.terminate() == 0
    assert integrity(data / "state.db") == [("ok",)]


def test_graceful_stop_and_restart_keeps_revisions(
    start_cloud: Callable[..., CloudProcess], tmp_path: Path
) -> None:
    """resourceVersions continue after a restart: a client's watch position stays valid."""
    data = tmp_path / "data"
    cloud = start_cloud(data)
    client: RawClient = cloud.client()
    made = client.json("POST", "/api/v1/namespaces/default/configmaps",
                       {"metadata": {"name": "a"}}, expect=201)  # fmt: skip
    rv = int(made["metadata"]["resourceVersion"])
    assert cloud.terminate() == 0

    cloud = start_cloud(data)
    client = cloud.client()
    got = client.json("GET", "/api/v1/namespaces/default/configmaps/a")
    assert int(got["metadata"]["resourceVersion"]) == rv
    later = client.json("POST", "/api/v1/namespaces/default/configmaps",
                        {"metadata": {"name": "b"}}, expect=201)  # fmt: skip
    assert int(later["metadata"]["resourceVersion"]) > rv
    conn, resp = client.stream(
        f"/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}"
    )
    try:
        line = resp.readline()
    finally:
        conn.close()
    assert b'"ADDED"' in line and b'"name":"b"' in line
    assert cloud.terminate() == 0
