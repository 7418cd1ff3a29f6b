"""Informer behaviour, part of the contract suite: mixed into each transport's test class.

Watches are held at the ``Recorder``'s gate to make "while no watch was open" happen on cue;
``watch_timeout=1`` makes a watch end by itself quickly.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from orbiter.orchestration.apiserver.serving import APIServer
from orbiter.orchestration.client import CONFIGMAPS, Client, Informer

from .support import EventLog, Recorder, configmap


async def informer_with(
    client: Client, log: EventLog, *, watch_timeout: int | None = None, resync: float | None = None
) -> tuple[Informer, Recorder]:
    recorder = Recorder(client)
    informer = Informer(recorder, CONFIGMAPS, "default", resync=resync, watch_timeout=watch_timeout)
    informer.on_event(log)
    await informer.start()
    assert await informer.wait_synced(10)
    return informer, recorder


class InformerContract:
    async def test_initial_sync_and_events(self, client: Client) -> None:
        await client.create(CONFIGMAPS, configmap("a", {"k": "1"}), "default")
        await client.create(CONFIGMAPS, configmap("b"), "default")
        await client.create(CONFIGMAPS, configmap("other"), "kube-public")
        log = EventLog()
        informer, _ = await informer_with(client, log)
        async with informer:
            assert sorted(log.pairs()) == [("ADDED", "a"), ("ADDED", "b")]
            assert len(informer) == 2 and informer.get("other", "kube-public") is None
            cached = informer.get("a", "default")
            assert cached is not None and cached["data"] == {"k": "1"}
            assert cached["kind"] == "ConfigMap" and cached["apiVersion"] == "v1"
            cached["data"]["k"] = "mutated"  # a copy: the cache is unaffected
            assert informer.get("a", "default") == {**cached, "data": {"k": "1"}}

            await client.patch(CONFIGMAPS, "a", {"data": {"k": "2"}}, "default")
            await client.create(CONFIGMAPS, configmap("c"), "default")
            await client.delete(CONFIGMAPS, "b", "default")
            await log.wait_for(lambda: len(log.seen) == 5)
            assert log.pairs(2) == [("MODIFIED", "a"), ("ADDED", "c"), ("DELETED", "b")]
            _, _, new, old = log.seen[2]
            assert old is not None and (old["data"], new["data"]) == ({"k": "1"}, {"k": "2"})
            assert sorted(o["metadata"]["name"] for o in informer.items()) == ["a", "c"]
            assert informer.resource_version == log.seen[-1][2]["metadata"]["resourceVersion"]

    async def test_resumes_after_watch_timeout_without_relisting(self, client: Client) -> None:
        await client.create(CONFIGMAPS, configmap("a"), "default")
        log = EventLog()
        informer, recorder = await informer_with(client, log, watch_timeout=1)
        async with informer:
            recorder.gate.clear()  # the next watch waits: changes land while none is open
            await recorder.wait_for(lambda: len(recorder.watches) == 2)
            assert recorder.open_watches == 0
            await client.create(CONFIGMAPS, configmap("b"), "default")
            await client.patch(CONFIGMAPS, "a", {"data": {"k": "v"}}, "default")
            recorder.gate.set()
            await log.wait_for(lambda: len(log.seen) == 3)
            assert log.pairs() == [("ADDED", "a"), ("ADDED", "b"), ("MODIFIED", "a")]
            assert recorder.lists == 1  # resumed from the last resourceVersion: no relist
            first, second = recorder.watches
            assert first and int(second) >= int(first)

    async def test_relist_after_expired_synthesises_changes(
        self, client: Client, server: APIServer
    ) -> None:
        for name in ("gone", "changed", "same"):
            await client.create(CONFIGMAPS, configmap(name), "default")
        log = EventLog()
        informer, recorder = await informer_with(client, log, watch_timeout=1)
        async with informer:
            recorder.gate.clear()
            await recorder.wait_for(lambda: len(recorder.watches) == 2)
            await client.delete(CONFIGMAPS, "gone", "default")
            await client.patch(CONFIGMAPS, "changed", {"data": {"k": "v"}}, "default")
            await client.create(CONFIGMAPS, configmap("new"), "default")
            assert server.store is not None  # compacted past the informer's resourceVersion
            await server.store.compact(await server.store.current_revision())
            recorder.gate.set()
            await log.wait_for(lambda: len(log.seen) == 6)
            assert recorder.lists == 2
            assert sorted(log.pairs(3)) == [
                ("ADDED", "new"),
                ("DELETED", "gone"),
                ("MODIFIED", "changed"),
            ]
            by_name = {name: (obj, old) for _, name, obj, old in log.seen[3:]}
            changed, before = by_name["changed"]
            assert before is not None and (before["data"], changed["data"]) == ({}, {"k": "v"})
            gone, last_known = by_name["gone"]
            assert last_known is not None and gone["metadata"]["name"] == "gone"
            assert sorted(o["metadata"]["name"] for o in informer.items()) == [
                "changed",
                "new",
                "same",
            ]

    async def test_handler_errors_are_logged_not_fatal(
        self, client: Client, caplog: pytest.LogCaptureFixture
    ) -> None:
        log = EventLog(fail_on="bad")
        informer, _ = await informer_with(client, log)
        async with informer:
            with caplog.at_level(logging.ERROR, "orbiter.orchestration.client"):
                await client.create(CONFIGMAPS, configmap("bad"), "default")
                await client.create(CONFIGMAPS, configmap("good"), "default")
                await log.wait_for(lambda: len(log.seen) == 2)
            assert log.pairs() == [("ADDED", "bad"), ("ADDED", "good")]
            assert "handler refuses bad" in caplog.text

    async def test_backs_off_and_retries_a_failed_list(self, client: Client) -> None:
        await client.create(CONFIGMAPS, configmap("a"), "default")
        recorder = Recorder(client)
        recorder.fail_lists = 2
        log = EventLog()
        informer = Informer(recorder, CONFIGMAPS, "default", backoff=(0.01, 0.05))
        informer.on_event(log)
        async with informer:
            assert await informer.wait_synced(10)
            assert (recorder.fail_lists, recorder.lists) == (0, 1)
            assert log.pairs() == [("ADDED", "a")]

    async def test_resync_resends_the_cache(self, client: Client) -> None:
        await client.create(CONFIGMAPS, configmap("a"), "default")
        log = EventLog()
        informer, _ = await informer_with(client, log, resync=0.05)
        async with informer:
            await log.wait_for(lambda: len(log.seen) >= 2)
            etype, name, obj, old = log.seen[1]
            assert (etype, name, old) == ("MODIFIED", "a", obj)

    async def test_stop_leaves_no_tasks_or_watches(self, client: Client) -> None:
        log = EventLog()
        informer, recorder = await informer_with(client, log, resync=60)
        await recorder.wait_for(lambda: recorder.open_watches == 1)
        await informer.stop()
        assert recorder.open_watches == 0
        leftovers = [t for t in asyncio.all_tasks() if t.get_name().startswith("informer")]
        assert leftovers == []
        assert not informer.synced
        with pytest.raises(RuntimeError, match="not started"):
            await informer.wait_synced(0)
