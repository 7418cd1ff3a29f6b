"""Clients racing on one object: optimistic concurrency keeps every update, loses none."""

from __future__ import annotations

import json
import threading
from typing import Any

from .conftest import RawClient, ServerThread

CONFIGMAPS = "/api/v1/namespaces/default/configmaps"
CLIENTS = 8
WINS_EACH = 5  # each client keeps trying until it has won this many times
LOCKSTEP_ROUNDS = 4


def run_clients(target: Any, count: int) -> list[Any]:
    """Run ``target(i, barrier)`` on ``count`` threads started together; their results."""
    barrier = threading.Barrier(count, timeout=30)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = target(i, barrier)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i,), name=f"client-{i}") for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads), "a client hung"
    if errors:
        raise errors[0]
    return results


def test_updates_with_resource_version_preconditions(server: ServerThread, raw: RawClient) -> None:
    created = raw.json(
        "POST", CONFIGMAPS,
        {"metadata": {"name": "counter"}, "data": {"count": "0"}}, expect=201,
    )  # fmt: skip
    start_rv = created["metadata"]["resourceVersion"]

    def attempt(i: int) -> tuple[str, Any]:
        current = raw.json("GET", f"{CONFIGMAPS}/counter")
        return current["metadata"]["resourceVersion"], current

    def write(i: int, based_on: str, current: dict[str, Any], wins: list[Any],
              conflicts: list[Any]) -> None:  # fmt: skip
        count = int(current["data"]["count"]) + 1
        current["data"]["count"] = str(count)
        current["data"][f"last-by-{i}"] = str(count)
        resp = raw.request("PUT", f"{CONFIGMAPS}/counter", current)
        if resp.status == 200:
            wins.append((based_on, resp.json()["metadata"]["resourceVersion"], count))
        else:
            assert resp.status == 409, (resp.status, resp.body)
            conflicts.append(resp.json())

    def client(i: int, barrier: threading.Barrier) -> dict[str, Any]:
        wins: list[tuple[str, str, int]] = []  # (based-on rv, new rv, count written)
        conflicts: list[dict[str, Any]] = []
        lockstep: list[int] = []  # per round: 1 if this client won it
        # Lockstep rounds: everyone reads the same version, then everyone writes: exactly one
        # writer per round may win.
        for _ in range(LOCKSTEP_ROUNDS):
            barrier.wait()
            based_on, current = attempt(i)
            barrier.wait()
            before = len(wins)
            write(i, based_on, current, wins, conflicts)
            lockstep.append(len(wins) - before)
        # Then free-for-all until each client has won WINS_EACH times in all.
        while len(wins) < WINS_EACH:
            based_on, current = attempt(i)
            write(i, based_on, current, wins, conflicts)
        return {"wins": wins, "conflicts": conflicts, "lockstep": lockstep}

    results = run_clients(client, CLIENTS)
    wins = [w for r in results for w in r["wins"]]
    conflicts = [c for r in results for c in r["conflicts"]]
    for n in range(LOCKSTEP_ROUNDS):
        assert sum(r["lockstep"][n] for r in results) == 1, f"round {n}: not exactly one winner"
    assert len(conflicts) >= LOCKSTEP_ROUNDS * (CLIENTS - 1)

    # Every success made a new version, newer than the one it was based on.
    new_rvs = [int(new) for _, new, _ in wins]
    assert len(set(new_rvs)) == len(wins) == CLIENTS * WINS_EACH
    assert all(int(new) > int(based) for based, new, _ in wins)
    # Each version was the base of exactly one success: no two writers won from the same read.
    assert len({based for based, _, _ in wins}) == len(wins)
    # Every loser got a Conflict Status.
    for status in conflicts:
        assert status["kind"] == "Status" and status["code"] == 409
        assert status["reason"] == "Conflict"
        assert "the object has been modified" in status["message"]
    # No update was lost: the counter counts the successes, each value written exactly once.
    final = raw.json("GET", f"{CONFIGMAPS}/counter")
    assert int(final["data"]["count"]) == len(wins)
    assert sorted(count for _, _, count in wins) == list(range(1, len(wins) + 1))
    assert int(final["metadata"]["resourceVersion"]) == max(new_rvs)

    # The watch history holds exactly those versions, in order.
    conn, resp = raw.stream(f"{CONFIGMAPS}?watch=true&resourceVersion={start_rv}")
    try:
        seen: list[tuple[int, int]] = []
        while len(seen) < len(wins):
            line = resp.readline()
            assert line, "the watch ended early"
            event = json.loads(line)
            assert event["type"] == "MODIFIED", event
            obj = event["object"]
            seen.append((int(obj["metadata"]["resourceVersion"]), int(obj["data"]["count"])))
    finally:
        conn.close()
    assert seen == sorted((int(new), count) for _, new, count in wins)
    assert [count for _, count in seen] == list(range(1, len(wins) + 1))


def test_patches_without_preconditions_are_retried_not_lost(
    server: ServerThread, raw: RawClient
) -> None:
    """Patches name no resourceVersion: the server retries its compare-and-swap, so every
    client's patch lands even when they race."""
    raw.json("POST", CONFIGMAPS, {"metadata": {"name": "shared"}, "data": {}}, expect=201)
    rounds = 6

    def client(i: int, barrier: threading.Barrier) -> list[int]:
        statuses = []
        barrier.wait()
        for n in range(rounds):
            resp = raw.request(
                "PATCH", f"{CONFIGMAPS}/shared", {"data": {f"c{i}-{n}": "x"}},
                content_type="application/merge-patch+json",
            )  # fmt: skip
            statuses.append(resp.status)
        return statuses

    results = run_clients(client, CLIENTS)
    assert all(status == 200 for statuses in results for status in statuses), results
    final = raw.json("GET", f"{CONFIGMAPS}/shared")
    assert set(final["data"]) == {f"c{i}-{n}" for i in range(CLIENTS) for n in range(rounds)}


def test_concurrent_creates_of_one_name_have_one_winner(
    server: ServerThread, raw: RawClient
) -> None:
    def client(i: int, barrier: threading.Barrier) -> tuple[int, str]:
        barrier.wait()
        resp = raw.request(
            "POST", CONFIGMAPS, {"metadata": {"name": "only-one"}, "data": {"by": str(i)}}
        )
        return resp.status, resp.json().get("reason", "")

    results = run_clients(client, CLIENTS)
    assert sorted(results) == [(201, "")] + [(409, "AlreadyExists")] * (CLIENTS - 1)
