"""DeviceTwin on a real SQLite store: MQTT requests, mapper reports, the cloud's Devices."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from orbiter.orchestration.edge.devicetwin import DeviceTwin
from orbiter.orchestration.protocol import Message
from orbiter.orchestration.store import SQLiteStore, StoreError

NODE = "edge-1"
T0 = 1_700_000_000.0
MS = 1_700_000_000_000
DEV = "$hw/events/device/default/thermo"
KEY = "devicetwin/devices/default/thermo"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class FlakyStore(SQLiteStore):
    """Refuses updates while ``failing``: a disk that went read-only."""

    failing = False

    async def update(self, key: str, value: bytes, expected_revision: int) -> Any:
        if self.failing:
            raise StoreError("disk I/O error")
        return await super().update(key, value, expected_revision)


class Node:
    """A DeviceTwin with its MQTT publications and its outbox (latest per key) collected."""

    def __init__(self, store: SQLiteStore, clock: Clock, **options: Any) -> None:
        self.published: list[tuple[str, Any]] = []
        self.outbox: dict[str, Message] = {}
        self.puts: list[str] = []
        self.outbox_down = False
        self.twin = DeviceTwin(
            store, NODE, publish=self.publish, upstream=self.put, clock=clock, **options
        )

    async def publish(self, topic: str, payload: bytes) -> None:
        self.published.append((topic, orjson.loads(payload)))

    def put(self, key: str, message: Message) -> None:
        if self.outbox_down:
            raise OSError("outbox disk full")
        self.puts.append(key)
        self.outbox[key] = message

    def take(self) -> list[tuple[str, Any]]:
        out, self.published = self.published, []
        return out

    def only(self, topic: str) -> Any:
        """The one publication, which must be on ``topic``."""
        out = self.take()
        assert [t for t, _ in out] == [topic], out
        return out[0][1]

    async def send(self, suffix: str, body: Any, device: str = DEV) -> list[tuple[str, Any]]:
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        await self.twin.handle_mqtt(f"{device}/{suffix}", raw)
        return self.take()


def model(rv: int = 5) -> dict[str, Any]:
    props = [
        {"name": "temperature", "type": "INT", "accessMode": "ReadWrite"},
        {"name": "humidity", "type": "FLOAT", "accessMode": "ReadOnly"},
        {"name": "power", "type": "BOOLEAN", "accessMode": "ReadWrite"},
    ]
    meta = {"name": "thermo-model", "namespace": "default", "resourceVersion": str(rv)}
    return {"kind": "DeviceModel", "metadata": meta, "spec": {"properties": props}}


def device(rv: int = 10, temperature: str = "20", node: str = NODE) -> dict[str, Any]:
    props = [
        {"name": "temperature", "desired": {"value": temperature}},
        {"name": "humidity", "reportToCloud": False},
        {"name": "power", "desired": {"value": "false"}},
    ]
    meta = {
        "name": "thermo",
        "namespace": "default",
        "resourceVersion": str(rv),
        "labels": {"description": "hall"},
    }
    spec = {"deviceModelRef": {"name": "thermo-model"}, "nodeName": node, "properties": props}
    return {
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "Device",
        "metadata": meta,
        "spec": spec,
    }


def value(v: str) -> dict[str, Any]:
    return {"value": v, "metadata": {"timestamp": MS}}


def twin(
    expected: str | None = None, actual: str | None = None, kind: str = "int"
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if expected is not None:
        out["expected"] = value(expected)
    if actual is not None:
        out["actual"] = value(actual)
    return {**out, "optional": False, "metadata": {"type": kind}}


def document(node: Node) -> dict[str, Any]:
    """What twin/get/result would carry for the thermostat."""
    doc = node.twin.twin_document("default", "thermo")
    assert doc is not None
    return doc


async def row(store: SQLiteStore) -> dict[str, Any]:
    kv = await store.get(KEY)
    assert kv is not None
    data: dict[str, Any] = orjson.loads(kv.value)
    return data


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FlakyStore]:
    s = FlakyStore(str(tmp_path / "edgecore.db"))
    await s.start()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def empty(store: SQLiteStore, clock: Clock) -> AsyncIterator[Node]:
    node = Node(store, clock)
    await node.twin.start()
    yield node
    await node.twin.stop()


@pytest.fixture
async def node(empty: Node) -> Node:
    await empty.twin.model_changed(model())
    await empty.twin.device_changed(device())
    empty.take()
    return empty


# -- twin/update ------------------------------------------------------------------------------


async def test_update_actual_answers_result_document_and_delta(
    node: Node, store: SQLiteStore
) -> None:
    out = await node.send(
        "twin/update", {"event_id": "e1", "twin": {"temperature": {"actual": {"value": "18"}}}}
    )
    assert [t for t, _ in out] == [
        f"{DEV}/twin/update/result",
        f"{DEV}/twin/update/document",
        f"{DEV}/twin/update/delta",
    ]
    result, document, delta = (p for _, p in out)
    changed = {"actual": value("18"), "optional": False, "metadata": {"type": "int"}}
    assert result == {"event_id": "e1", "timestamp": MS, "twin": {"temperature": changed}}
    assert document == {
        "event_id": "e1",
        "timestamp": MS,
        "twin": {"temperature": {"last": twin("20"), "current": twin("20", "18")}},
    }
    assert delta["delta"] == {"temperature": "20", "power": "false"}
    assert delta["twin"] == {
        "temperature": twin("20", "18"),
        "power": twin("false", kind="boolean"),
    }
    assert delta["timestamp"] == MS and uuid.UUID(delta["event_id"])

    message = node.outbox["device/default/thermo/twin/temperature"]
    assert (message.source, message.group, message.operation, message.resource) == (
        "twin",
        "resource",
        "update",
        "device/default/thermo/twin/edge_updated",
    )
    assert set(message.content) == {"event_id", "timestamp", "twin"}
    assert message.content["timestamp"] == MS and uuid.UUID(message.content["event_id"])
    assert message.content["twin"] == {
        "temperature": {"expected": value("20"), "actual": value("18"), "metadata": {"type": "int"}}
    }
    # Written before it was answered, versions included.
    stored = (await row(store))["twin"]["temperature"]
    assert stored["actual"]["value"] == "18"
    assert stored["actual_version"] == {"cloud": 0, "edge": 1}
    assert stored["expected_version"] == {"cloud": 10, "edge": 0}


async def test_meeting_every_expected_value_ends_the_deltas(node: Node) -> None:
    body = {
        "twin": {
            "temperature": {"actual": {"value": "20"}},
            "power": {"actual": {"value": "false"}},
        }
    }
    out = await node.send("twin/update", body)
    assert [t.rsplit("/", 1)[1] for t, _ in out] == ["result", "document"]
    # The same values again: answered, but nothing changed, so nothing is written or sent up.
    node.puts.clear()
    out = await node.send("twin/update", body)
    assert out == [(f"{DEV}/twin/update/result", {"event_id": "", "timestamp": MS, "twin": {}})]
    assert node.puts == []


async def test_edge_added_twin_can_be_deleted_but_the_devices_own_cannot(node: Node) -> None:
    out = await node.send("twin/update", {"twin": {"note": {"expected": {"value": "hi"}}}})
    added = {"expected": value("hi"), "optional": True, "metadata": {"type": "string"}}
    assert out[0][1]["twin"] == {"note": added}
    assert out[1][1]["twin"] == {"note": {"last": None, "current": added}}
    out = await node.send("twin/update", {"twin": {"note": None}})
    assert out[0][1]["twin"] == {"note": None}
    assert out[1][1]["twin"] == {"note": {"last": added, "current": None}}
    gone = node.outbox["device/default/thermo/twin/note"].content["twin"]
    assert gone == {"note": {"metadata": {"type": "deleted"}}}
    out = await node.send("twin/update", {"twin": {"temperature": None}})
    assert out[0][1]["code"] == 400 and "'temperature' is not optional" in out[0][1]["reason"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not valid JSON"),
        ([1, 2], "must be a JSON object"),
        ({"event_id": 7, "twin": {}}, "event_id must be a string"),
        ({"timestamp": "now", "twin": {}}, "timestamp must be an integer"),
        ({"twin": "temperature=18"}, '"twin" object'),
        ({"event_id": "e"}, '"twin" object'),
        ({"twin": {"temperature": 18}}, "'temperature' must be an object or null"),
        ({"twin": {"temperature": {"actual": {"value": 18}}}}, "'temperature': actual must be"),
        ({"twin": {"temperature": {"actual": "18"}}}, "'temperature': actual must be"),
        ({"twin": {"temperature": {"optional": "no"}}}, "'temperature': optional must be"),
        ({"twin": {"temperature": {"metadata": {"type": 1}}}}, "metadata.type must be"),
        ({"twin": {"k" * 129: {"actual": {"value": "1"}}}}, "kkkk"),
        ({"twin": {"temp erature": {"actual": {"value": "1"}}}}, "'temp erature'"),
        (
            {"twin": {"temperature": {"actual": {"value": "1" * 513}}}},
            "'temperature': actual value",
        ),
        ({"twin": {"temperature": {"actual": {"value": "eighteen degrees"}}}}, "512"),
        ({"twin": {"temperature": {"actual": {"value": "18.5"}}}}, "'18.5' is not a valid int"),
        ({"twin": {"power": {"expected": {"value": "on"}}}}, "'on' is not a valid boolean"),
        ({"twin": {"humidity": {"expected": {"value": "40"}}}}, "'humidity' is ReadOnly"),
        ({"twin": {"x": {"metadata": {"type": "complex"}}}}, "type 'complex' is not one of"),
        ({"twin": {f"p{i}": {} for i in range(257)}}, "257 properties; at most 256 allowed"),
    ],
)
async def test_bad_updates_get_400_and_change_nothing(
    node: Node, store: SQLiteStore, body: Any, reason: str
) -> None:
    before = await store.get(KEY)
    out = await node.send("twin/update", body)
    assert len(out) == 1 and out[0][0] == f"{DEV}/twin/update/result"
    result = out[0][1]
    assert set(result) == {"event_id", "timestamp", "code", "reason"}
    assert result["code"] == 400 and reason in result["reason"], result["reason"]
    assert await store.get(KEY) == before and node.puts == []
    assert node.twin.twin_document("default", "thermo") == {
        "event_id": "",
        "timestamp": MS,
        "twin": {
            "temperature": twin("20"),
            "humidity": twin(kind="float"),
            "power": twin("false", kind="boolean"),
        },
    }


async def test_oversized_payload_is_refused_before_parsing(node: Node) -> None:
    big = orjson.dumps(
        {"event_id": "e", "twin": {"temperature": {"actual": {"value": "1" * (1 << 20)}}}}
    )
    result = (await node.send("twin/update", big))[0][1]
    assert (
        result["code"] == 400
        and f"{len(big)} bytes is over the 1048576-byte cap" in result["reason"]
    )


async def test_unknown_device_gets_404_on_its_own_result_topic(node: Node) -> None:
    other = "$hw/events/device/default/ghost"
    for suffix in ("twin/update", "twin/get", "state/update"):
        body = {"event_id": "e9", "twin": {}, "state": "online"}
        out = await node.send(suffix, body, device=other)
        assert [t for t, _ in out] == [f"{other}/{suffix}/result"]
        assert out[0][1]["code"] == 404 and out[0][1]["event_id"] == "e9"
        assert "default/ghost" in out[0][1]["reason"]


async def test_store_failure_answers_500_and_keeps_the_old_twin(
    node: Node, store: FlakyStore
) -> None:
    store.failing = True
    out = await node.send(
        "twin/update", {"event_id": "e", "twin": {"temperature": {"actual": {"value": "1"}}}}
    )
    assert [(t, p["code"]) for t, p in out] == [(f"{DEV}/twin/update/result", 500)]
    assert "disk I/O error" in out[0][1]["reason"] and node.puts == []
    store.failing = False
    out = await node.send("twin/get", {"event_id": "g"})
    assert out[0][1]["twin"]["temperature"] == twin("20")


async def test_own_results_coming_back_are_not_answered(node: Node) -> None:
    for suffix in (
        "twin/update/result",
        "twin/update/delta",
        "twin/get/result",
        "twin/cloud_updated",
    ):
        assert await node.send(suffix, {"twin": {}}) == []
    await node.twin.handle_mqtt(f"$hw/events/node/{NODE}/membership/updated", b"{}")
    await node.twin.handle_mqtt("$hw/events/node/other-node/membership/get", b"{}")
    assert node.take() == []


async def test_concurrent_updates_of_one_device_are_serialized(
    node: Node, store: SQLiteStore
) -> None:
    bodies = [
        {"event_id": f"e{i}", "twin": {"temperature": {"actual": {"value": str(i)}}}}
        for i in range(5)
    ]
    await asyncio.gather(
        *(node.twin.handle_mqtt(f"{DEV}/twin/update", orjson.dumps(b)) for b in bodies)
    )
    results = [p for t, p in node.take() if t.endswith("/result")]
    assert [r["event_id"] for r in results] == ["e0", "e1", "e2", "e3", "e4"]
    assert all("code" not in r for r in results)  # no CAS conflict reached anyone
    stored = (await row(store))["twin"]["temperature"]
    assert stored["actual"]["value"] == "4" and stored["actual_version"] == {"cloud": 0, "edge": 5}


# -- twin/get, state ---------------------------------------------------------------------------


async def test_twin_get(node: Node) -> None:
    result = (await node.send("twin/get", {"event_id": "g1"}))[0][1]
    assert result == document(node) | {"event_id": "g1"}
    assert "expected_version" not in result["twin"]["temperature"]
    bad = (await node.send("twin/get", b"[]"))[0][1]
    assert bad["code"] == 400


async def test_state_update_and_invalid_state(node: Node, store: SQLiteStore) -> None:
    out = await node.send("state/update", {"event_id": "s1", "state": "online"})
    assert out == [
        (
            f"{DEV}/state/update/result",
            {
                "event_id": "s1",
                "timestamp": MS,
                "device": {
                    "name": "thermo",
                    "state": "online",
                    "last_online": "2023-11-14 22:13:20",
                },
            },
        )
    ]
    message = node.outbox["device/default/thermo/state"]
    assert (message.source, message.group, message.operation, message.resource) == (
        "twin",
        "resource",
        "update",
        "device/default/thermo/state/update",
    )
    assert message.content["state"] == "online" and set(message.content) == {
        "event_id",
        "timestamp",
        "state",
    }
    assert (await row(store))["state"] == "online"
    node.puts.clear()
    await node.send("state/update", {"state": "online"})  # no change: nothing to tell the cloud
    assert node.puts == []
    for bad in ("broken", 1, None):
        result = (await node.send("state/update", {"event_id": "s2", "state": bad}))[0][1]
        assert (
            result["code"] == 400
            and "is not one of online, offline, ok, unhealthy, unknown" in result["reason"]
        )
    assert node.twin.state("default", "thermo") == "online"


# -- the cloud's Devices and models ------------------------------------------------------------


async def test_device_added_and_removed_publish_membership(empty: Node, store: SQLiteStore) -> None:
    await empty.twin.model_changed(model())
    await empty.twin.device_changed(device())
    out = empty.take()
    topic = f"$hw/events/node/{NODE}/membership/updated"
    assert [t for t, _ in out] == [topic, f"{DEV}/twin/update/document", f"{DEV}/twin/update/delta"]
    added = out[0][1]
    assert added["added_devices"] == [
        {
            "id": "default/thermo",
            "name": "thermo",
            "description": "hall",
            "state": "unknown",
            "twin": {
                "temperature": twin("20"),
                "humidity": twin(kind="float"),
                "power": twin("false", kind="boolean"),
            },
        }
    ]
    assert added["removed_devices"] == [] and empty.puts == []  # the cloud's change: not sent back
    assert out[2][1]["delta"] == {"temperature": "20", "power": "false"}
    assert empty.twin.devices() == [device()]

    get = f"$hw/events/node/{NODE}/membership/get"
    await empty.twin.handle_mqtt(get, b'{"event_id": "m1"}')
    assert empty.only(f"{get}/result") == {
        "event_id": "m1",
        "timestamp": MS,
        "devices": [
            {"id": "default/thermo", "name": "thermo", "description": "hall", "state": "unknown"}
        ],
    }
    await empty.twin.handle_mqtt(get, b"nope")
    assert empty.only(f"{get}/result")["code"] == 400

    await empty.twin.device_removed("default", "thermo")
    removed = empty.only(topic)
    assert (
        removed["added_devices"] == [] and removed["removed_devices"][0]["id"] == "default/thermo"
    )
    assert empty.twin.devices() == [] and await store.get(KEY) is None


async def test_cloud_desired_change_and_older_resource_version(
    node: Node, store: SQLiteStore
) -> None:
    await node.twin.device_changed(device(rv=12, temperature="25"))
    out = node.take()
    assert [t for t, _ in out] == [f"{DEV}/twin/update/document", f"{DEV}/twin/update/delta"]
    assert out[0][1]["twin"] == {"temperature": {"last": twin("20"), "current": twin("25")}}
    assert out[1][1]["delta"] == {"temperature": "25", "power": "false"}
    assert (await row(store))["twin"]["temperature"]["expected_version"] == {"cloud": 12, "edge": 0}
    # A late delivery of an older Device never rolls the twin back.
    await node.twin.device_changed(device(rv=11, temperature="30"))
    assert node.take() == []
    assert node.twin.devices() == [device(rv=12, temperature="25")]
    assert document(node)["twin"]["temperature"] == twin("25")
    assert node.puts == []


async def test_cloud_desired_still_wins_after_an_app_set_expected(
    node: Node, store: SQLiteStore
) -> None:
    await node.send("twin/update", {"twin": {"temperature": {"expected": {"value": "22"}}}})
    assert (await row(store))["twin"]["temperature"]["expected_version"] == {"cloud": 10, "edge": 1}
    await node.twin.device_changed(device(rv=13, temperature="26"))
    assert document(node)["twin"]["temperature"] == twin("26")
    assert (await row(store))["twin"]["temperature"]["expected_version"] == {"cloud": 13, "edge": 1}


async def test_cloud_sync_version_rules(node: Node) -> None:
    await node.send("twin/update", {"twin": {"temperature": {"actual": {"value": "18"}}}})
    node.puts.clear()

    def sync(actual: str, cloud: int, edge: int) -> dict[str, Any]:
        entry = {"actual": {"value": actual}, "actual_version": {"cloud": cloud, "edge": edge}}
        return {"event_id": "c", "twin": {"temperature": entry}}

    # The local edge version (1) is newer than the one offered (0): refused, edge copy goes up.
    await node.twin.cloud_sync("default", "thermo", sync("5", 3, 0))
    assert node.take() == [] and node.puts == ["device/default/thermo/twin/temperature"]
    assert node.outbox["device/default/thermo/twin/temperature"].content["twin"]["temperature"][
        "actual"
    ] == value("18")
    await node.twin.cloud_sync("default", "thermo", sync("5", 3, 1))  # accepted
    assert node.take()[0][1]["twin"]["temperature"]["current"]["actual"] == value("5")
    node.puts.clear()
    await node.twin.cloud_sync("default", "thermo", orjson.dumps(sync("7", 2, 1)))  # cloud 3 > 2
    assert node.puts == ["device/default/thermo/twin/temperature"]
    assert document(node)["twin"]["temperature"]["actual"] == value("5")
    await node.twin.cloud_sync("default", "thermo", b"{broken")  # logged, nothing else
    assert node.take() == []


async def test_device_moved_to_another_node_is_removed(node: Node) -> None:
    await node.twin.device_changed(device(rv=20, node="edge-2"))
    assert (
        node.only(f"$hw/events/node/{NODE}/membership/updated")["removed_devices"][0]["name"]
        == "thermo"
    )


async def test_bad_cloud_objects_are_ignored(empty: Node) -> None:
    for bad in (
        {},
        {"metadata": {"name": "Bad_Name"}},
        {"metadata": {"name": "ok", "resourceVersion": "x1"}},
        {"metadata": {"name": "ok"}, "spec": {"properties": "temperature"}},
        {"metadata": {"name": "ok"}, "spec": {"properties": [{"name": 3}]}},
    ):
        await empty.twin.device_changed(bad)
        await empty.twin.model_changed(bad)
    assert empty.take() == [] and empty.twin.devices() == [] and empty.twin.models() == []


# -- mappers (DMI) -----------------------------------------------------------------------------


async def test_mapper_reports_follow_the_mqtt_path(node: Node) -> None:
    report = [
        {"propertyName": "temperature", "reported": {"value": "21", "metadata": {"type": "int"}}},
        {
            "propertyName": "humidity",
            "reported": {"value": "40.5"},
            "observedDesired": {"value": "1"},
        },
        {"propertyName": "power", "reported": {"value": ""}, "observedDesired": {"value": "true"}},
    ]
    await node.twin.report_twins("default", "thermo", report)
    out = node.take()
    assert [t.rsplit("/", 1)[1] for t, _ in out] == ["result", "document", "delta"]
    assert out[0][1]["twin"] == {
        "temperature": {"actual": value("21"), "optional": False, "metadata": {"type": "int"}},
        "humidity": {"actual": value("40.5"), "optional": False, "metadata": {"type": "float"}},
        "power": {"expected": value("true"), "optional": False, "metadata": {"type": "boolean"}},
    }
    # humidity has reportToCloud: false; the others go up, one message per property.
    assert sorted(node.outbox) == [
        "device/default/thermo/twin/power",
        "device/default/thermo/twin/temperature",
    ]

    await node.twin.report_twins(
        "default", "thermo", [{"propertyName": "temperature", "reported": {"value": "hot"}}]
    )
    assert node.only(f"{DEV}/twin/update/result")["code"] == 400
    await node.twin.report_twins("default", "thermo", "temperature=1")  # type: ignore[arg-type]
    assert node.only(f"{DEV}/twin/update/result")["code"] == 400
    await node.twin.report_twins("default", "ghost", report)
    assert node.take()[0][1]["code"] == 404

    await node.twin.report_state("default", "thermo", "offline")
    assert node.only(f"{DEV}/state/update/result")["device"]["state"] == "offline"
    assert node.outbox["device/default/thermo/state"].content["state"] == "offline"
    await node.twin.report_state("default", "thermo", "asleep")
    assert node.only(f"{DEV}/state/update/result")["code"] == 400


async def test_outbox_keeps_the_latest_of_each_property(node: Node) -> None:
    for reading in ("18", "19", "21"):
        await node.send("twin/update", {"twin": {"temperature": {"actual": {"value": reading}}}})
    await node.send("twin/update", {"twin": {"power": {"actual": {"value": "true"}}}})
    await node.send("twin/update", {"twin": {"temperature": {"expected": {"value": "23"}}}})
    assert node.puts.count("device/default/thermo/twin/temperature") == 4
    assert sorted(node.outbox) == [
        "device/default/thermo/twin/power",
        "device/default/thermo/twin/temperature",
    ]
    latest = node.outbox["device/default/thermo/twin/temperature"].content["twin"]["temperature"]
    assert latest == {"expected": value("23"), "actual": value("21"), "metadata": {"type": "int"}}
    assert node.outbox["device/default/thermo/twin/power"].content["twin"]["power"][
        "actual"
    ] == value("true")


# -- restarts ----------------------------------------------------------------------------------


async def test_restart_restores_devices_models_and_twins(
    node: Node, store: SQLiteStore, clock: Clock
) -> None:
    await node.send(
        "twin/update",
        {"twin": {"temperature": {"actual": {"value": "18"}}, "note": {"actual": {"value": "x"}}}},
    )
    await node.send("state/update", {"state": "ok"})
    before = document(node)
    await node.twin.stop()

    reopened = SQLiteStore(store.path)  # a second handle on the file: only what was committed
    await reopened.start()
    try:
        again = Node(reopened, clock)
        await again.twin.start()
        assert document(again) == before
        assert again.twin.devices() == [device()] and again.twin.models() == [model()]
        assert again.twin.state("default", "thermo") == "ok"
        # The model's rules are back too, and the versions go on from where they were.
        out = await again.send("twin/update", {"twin": {"temperature": {"actual": {"value": "x"}}}})
        assert out[0][1]["code"] == 400
        await again.send("twin/update", {"twin": {"temperature": {"actual": {"value": "19"}}}})
        stored = (await row(reopened))["twin"]["temperature"]
        assert stored["actual_version"] == {"cloud": 0, "edge": 2}
        await again.twin.stop()
    finally:
        await reopened.close()


async def test_restart_resends_what_never_reached_the_outbox(
    node: Node, store: SQLiteStore, clock: Clock
) -> None:
    node.outbox_down = True
    out = await node.send("twin/update", {"twin": {"temperature": {"actual": {"value": "18"}}}})
    assert "code" not in out[0][1]  # committed, so answered OK even though the outbox failed
    await node.twin.stop()

    again = Node(store, clock)
    await again.twin.start()
    assert again.puts == ["device/default/thermo/twin/temperature"]
    content = again.outbox["device/default/thermo/twin/temperature"].content
    assert content["twin"]["temperature"]["actual"] == value("18")
    assert (await row(store))["pending"] == []  # sent: not again at the next start
    await again.twin.stop()
    third = Node(store, clock)
    await third.twin.start()
    assert third.puts == []
    await third.twin.stop()


async def test_nothing_is_answered_before_start(store: SQLiteStore, clock: Clock) -> None:
    idle = Node(store, clock)
    await idle.twin.handle_mqtt(f"{DEV}/twin/get", b"{}")
    await idle.twin.device_changed(device())
    assert idle.take() == [] and await store.get(KEY) is None
