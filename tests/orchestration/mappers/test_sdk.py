"""The mapper SDK with an in-memory driver, against the real EdgeCore DMI server (with a
recording handler) and the real EdgeCore DMI clients."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import grpc
import pytest
import pytest_asyncio
from orbiter.orchestration.apis.dmi import api_pb2, device_to_pb
from orbiter.orchestration.edge.dmi import DeviceManagerServer, MapperCallError, MapperClients
from orbiter.orchestration.mappers import (
    Driver,
    DriverError,
    Mapper,
    MapperConfig,
    parse_args,
    parse_value,
    value_text,
)

from . import WITHIN, RecordingHandler, _grpc_released, device, model, short_dir  # noqa: F401

MODEL = model(
    [
        {"name": "temperature", "type": "FLOAT", "accessMode": "ReadOnly"},
        {"name": "door", "type": "BOOLEAN", "accessMode": "ReadOnly"},
        {"name": "setpoint", "type": "INT", "accessMode": "ReadWrite"},
        {"name": "serial", "type": "STRING", "accessMode": "ReadOnly"},
    ],
    protocol="fake",
)
CYCLE = 100  # ms


def prop(name: str, *, desired: str = "", report: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name,
        "visitors": {"protocolName": "fake", "configData": {"slot": name}},
        "collectCycle": CYCLE,
        "reportCycle": CYCLE,
        "reportToCloud": report,
    }
    if desired:
        out["desired"] = {"value": desired, "metadata": {"timestamp": "1"}}
    return out


def thermostat(setpoint: str = "7", name: str = "thermo-1") -> dict[str, Any]:
    return device(
        name,
        [
            prop("temperature"),
            prop("door"),
            prop("setpoint", desired=setpoint),
            prop("serial", report=False),
        ],
        protocol="fake",
    )


class Bench:
    """The fake devices' memory, shared with the test."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {"temperature": 21.5, "door": True, "serial": "A-1"}
        self.online = True
        self.writes: list[tuple[str, str, Any]] = []
        self.closed: list[str] = []
        self.changed = asyncio.Condition()

    async def wait_for_write(self, entry: tuple[str, str, Any], within: float) -> None:
        async with asyncio.timeout(within), self.changed:
            await self.changed.wait_for(lambda: entry in self.writes)


class FakeDriver(Driver):
    def __init__(self, device: Mapping[str, Any], bench: Bench) -> None:
        super().__init__(device)
        if self.config.get("broken"):
            raise ValueError("fake: this device cannot be served")
        self.bench = bench
        self.name = device["metadata"]["name"]

    async def connect(self) -> None:
        pass

    async def read(self, visitor: dict[str, Any]) -> Any:
        if not self.bench.online:
            raise DriverError("no answer")
        return self.bench.values[visitor["configData"]["slot"]]

    async def write(self, visitor: dict[str, Any], value: Any) -> None:
        if not self.bench.online:
            raise DriverError("no answer")
        assert visitor["type"] == "INT" and visitor["accessMode"] == "ReadWrite"
        self.bench.values[visitor["configData"]["slot"]] = value
        async with self.bench.changed:
            self.bench.writes.append((self.name, visitor["propertyName"], value))
            self.bench.changed.notify_all()

    async def state(self) -> str:
        return "online" if self.bench.online else "offline"

    async def close(self) -> None:
        self.bench.closed.append(self.name)


class Node:
    """EdgeCore's DMI ends and one fake mapper, on short Unix sockets."""

    def __init__(self, path: str, devices: list[dict[str, Any]]) -> None:
        self.clients = MapperClients(timeout=5.0)
        self.handler = RecordingHandler([MODEL], devices, clients=self.clients)
        self.edgecore = DeviceManagerServer(os.path.join(path, "dmi.sock"), self.handler)
        self.bench = Bench()
        self.config = MapperConfig(
            name="fake-mapper",
            protocol="fake",
            socket_path=os.path.join(path, "fake.sock"),
            edgecore_sock=self.edgecore.path,
        )
        self.mapper = Mapper(self.config, lambda device: FakeDriver(device, self.bench))


@pytest.fixture
def sockets() -> Iterator[str]:
    with short_dir() as path:
        yield path


@pytest_asyncio.fixture
async def node(sockets: str) -> AsyncIterator[Node]:
    node = Node(sockets, [thermostat()])
    await node.edgecore.start()
    await node.mapper.start()
    try:
        yield node
    finally:
        await node.mapper.stop()
        await node.clients.close()
        await node.edgecore.stop()


async def test_registers_then_reports_reads_and_applied_desired_values(node: Node) -> None:
    [mapper] = node.handler.mappers
    assert (mapper.name, mapper.protocol, mapper.address) == (
        "fake-mapper",
        "fake",
        node.config.socket_path,
    )
    assert node.mapper.devices == [("default", "thermo-1")]
    # The desired value is written once at start.
    await node.bench.wait_for_write(("thermo-1", "setpoint", 7), WITHIN)

    await node.handler.wait_for(lambda: len(node.handler.statuses) >= 2)
    first_two = [twins for _, _, twins in node.handler.statuses[:2]]
    # Every reported property was in one of the first two reports (the first is sent right
    # after the first reads, the next a report cycle later).
    seen = {t["propertyName"]: t for twins in first_two for t in twins}
    assert {k: t["reported"]["value"] for k, t in seen.items()} == {
        "temperature": "21.5",
        "door": "true",
        "setpoint": "7",
    }  # serial has reportToCloud false: read, not reported
    assert seen["temperature"]["reported"]["metadata"]["type"] == "float"
    assert seen["temperature"]["reported"]["metadata"]["timestamp"].isdigit()
    # Writes read back; observedDesired is the desired value the device was set to.
    latest = {t["propertyName"]: t for t in node.handler.statuses[-1][2]}
    assert latest["setpoint"]["observedDesired"] == {"value": "7", "metadata": {"timestamp": "1"}}
    assert latest["temperature"]["observedDesired"]["value"] == ""
    assert node.handler.states[0] == ("default", "thermo-1", "online")


async def test_a_new_desired_value_is_written_within_two_seconds(node: Node) -> None:
    await node.bench.wait_for_write(("thermo-1", "setpoint", 7), WITHIN)
    await node.clients.update_device(thermostat(setpoint="9"), MODEL)
    await node.bench.wait_for_write(("thermo-1", "setpoint", 9), 2.0)
    await node.handler.wait_for(
        lambda: node.handler.reported("default", "thermo-1").get("setpoint") == "9"
    )
    # Only the desired value changed: the device kept its driver.
    assert node.bench.closed == []


async def test_device_state_follows_the_device(node: Node) -> None:
    await node.handler.wait_for(lambda: node.handler.last_state("default", "thermo-1") == "online")
    node.bench.online = False
    await node.handler.wait_for(lambda: node.handler.last_state("default", "thermo-1") == "offline")
    reports = len(node.handler.statuses)
    node.bench.online = True
    await node.handler.wait_for(lambda: node.handler.last_state("default", "thermo-1") == "online")
    await node.handler.wait_for(lambda: len(node.handler.statuses) > reports)
    states = [s for _, _, s in node.handler.states]
    assert states == ["online", "offline", "online"]  # reported on change only


async def test_edgecore_keeps_the_device_set_in_step(node: Node) -> None:
    other = thermostat(name="thermo-2")
    await node.clients.register_device(other, MODEL)
    assert node.mapper.devices == [("default", "thermo-1"), ("default", "thermo-2")]
    await node.handler.wait_for(lambda: node.handler.reported("default", "thermo-2"))
    got = await node.clients.get_device("default", "thermo-2")
    assert got["spec"]["protocol"]["protocolName"] == "fake"
    assert {t["propertyName"] for t in got["status"]["twins"]} >= {"temperature", "door"}

    await node.clients.remove_device("default", "thermo-2")
    assert node.bench.closed == ["thermo-2"]
    for call in (node.clients.get_device, node.clients.remove_device):
        with pytest.raises(MapperCallError) as refused:
            await call("default", "thermo-2", protocol="fake")
        assert refused.value.code == "NOT_FOUND"
        assert "thermo-2" in refused.value.details

    # A device the driver refuses, one of another protocol, one of an unknown model.
    bad = device("bad", [prop("door")], protocol="fake", config={"broken": True})
    stranger = device("stranger", [prop("door")], protocol="zigbee")
    orphan = device("orphan", [prop("door")], protocol="fake", model="nope")
    for dev, code, text in [
        (bad, "INVALID_ARGUMENT", "cannot be served"),
        (stranger, "INVALID_ARGUMENT", "zigbee"),
        (orphan, "NOT_FOUND", "default/nope"),
    ]:
        request = api_pb2.RegisterDeviceRequest(device=device_to_pb(dev))
        with pytest.raises(MapperCallError) as refused:
            await node.clients._call("fake", "RegisterDevice", request, None)
        assert (refused.value.code, text in refused.value.details) == (code, True)
    assert node.mapper.devices == [("default", "thermo-1")]


async def test_changing_a_model_restarts_its_devices(node: Node) -> None:
    await node.handler.wait_for(lambda: node.handler.reported("default", "thermo-1"))
    changed = model(
        [*MODEL["spec"]["properties"], {"name": "extra", "type": "INT"}], protocol="fake"
    )
    await node.clients.update_device_model(changed)
    assert node.bench.closed == ["thermo-1"]  # restarted with the new model
    await node.clients.remove_device_model("default", "model-a")
    with pytest.raises(MapperCallError) as refused:
        await node.clients.remove_device_model("default", "model-a")
    assert refused.value.code == "NOT_FOUND"


async def test_malformed_requests_are_refused_and_the_mapper_keeps_serving(node: Node) -> None:
    channel = grpc.aio.insecure_channel(f"unix:{node.config.socket_path}")
    try:

        async def call(method: str, payload: bytes) -> grpc.StatusCode:
            rpc = channel.unary_unary(f"/v1beta1.DeviceMapperService/{method}")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await rpc(payload, timeout=WITHIN)
            return refused.value.code()

        nameless = api_pb2.RegisterDeviceRequest(device=api_pb2.Device(namespace="default"))
        bad_config = device_to_pb(thermostat())
        bad_config.spec.protocol.configData.data["ip"].type_url = "type.googleapis.com/x.Y"
        assert await call("RegisterDevice", b"\x0a\x05ab") == grpc.StatusCode.INVALID_ARGUMENT
        assert await call("RegisterDevice", nameless.SerializeToString()) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
        assert await call(
            "UpdateDevice", api_pb2.UpdateDeviceRequest(device=bad_config).SerializeToString()
        ) == (grpc.StatusCode.INVALID_ARGUMENT)
        wrong_names = api_pb2.RemoveDeviceRequest(deviceName="x", deviceNamespace="Not_A_NS")
        assert await call("RemoveDevice", wrong_names.SerializeToString()) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
        # A string field sent as a number: the wire types disagree.
        assert await call("GetDevice", b"\x08\x01") == grpc.StatusCode.INVALID_ARGUMENT
        huge = api_pb2.GetDeviceRequest(deviceName="x" * (5 * 1024 * 1024))
        assert await call("GetDevice", huge.SerializeToString()) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED
        )
    finally:
        await channel.close()
    got = await node.clients.get_device("default", "thermo-1")
    assert got["metadata"]["name"] == "thermo-1"


async def test_registration_waits_for_edgecore(
    sockets: str, caplog: pytest.LogCaptureFixture
) -> None:
    node = Node(sockets, [thermostat()])
    waiting = asyncio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "not answering" in record.getMessage():
                waiting.set()

    watch = Watch()
    logging.getLogger("orbiter.orchestration.mappers.registering").addHandler(watch)
    caplog.set_level(logging.INFO, "orbiter.orchestration.mappers.registering")
    starting = asyncio.create_task(node.mapper.start())
    try:
        async with asyncio.timeout(WITHIN):
            await waiting.wait()  # a first attempt failed: EdgeCore is not there
        await node.edgecore.start()
        async with asyncio.timeout(WITHIN):
            await starting
        assert [m.name for m in node.handler.mappers] == ["fake-mapper"]
        await node.handler.wait_for(lambda: node.handler.reported("default", "thermo-1"))
    finally:
        logging.getLogger("orbiter.orchestration.mappers.registering").removeHandler(watch)
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await node.mapper.stop()
        await node.clients.close()
        await node.edgecore.stop()


def test_config_reads_kubeedges_config_yaml() -> None:
    text = """
grpc_server:
  socket_path: /etc/kubeedge/modbus.sock
common:
  name: Modbus-mapper
  version: v1.13.0
  api_version: v1.0.0
  protocol: modbus
  address: 127.0.0.1
  edgecore_sock: /etc/kubeedge/dmi.sock
dev_init:
  mode: register
"""
    config = MapperConfig.from_yaml(text)
    assert config == MapperConfig(
        name="Modbus-mapper",
        protocol="modbus",
        socket_path="/etc/kubeedge/modbus.sock",
        edgecore_sock="/etc/kubeedge/dmi.sock",
        version="v1.13.0",
        api_version="v1.0.0",
        address="127.0.0.1",
    )
    info = config.mapper_info()
    assert (info.address, info.protocol, info.state) == (
        "/etc/kubeedge/modbus.sock",
        "modbus",
        "ok",
    )
    assert (
        MapperConfig.from_yaml(text, socket_path="/tmp/m.sock", name="").socket_path
        == "/tmp/m.sock"
    )
    assert MapperConfig(name="m", protocol="opcua").socket_path == "/etc/kubeedge/opcua.sock"
    for broken in ("common: [1]", "common: {name: m, protocol: 5}", "- a", "common: {name: m}"):
        with pytest.raises(ValueError):
            MapperConfig.from_yaml(broken)


def test_command_line_flags_override_the_file(tmp_path: Any) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("common: {name: m, protocol: modbus, edgecore_sock: /a/dmi.sock}\n")
    config, level = parse_args(
        ["--config", str(path), "--socket", "/b/m.sock", "--log-level", "debug"],
        protocol="modbus",
        name="default-name",
    )
    assert (config.name, config.socket_path, config.edgecore_sock, level) == (
        "m",
        "/b/m.sock",
        "/a/dmi.sock",
        "DEBUG",
    )
    config, _ = parse_args(["--edgecore-sock", "/c/dmi.sock"], protocol="modbus", name="dflt")
    assert (config.name, config.edgecore_sock) == ("dflt", "/c/dmi.sock")
    with pytest.raises(SystemExit):
        parse_args(["--config", str(path)], protocol="opcua", name="x")


def test_values_convert_by_model_type() -> None:
    assert parse_value("INT", "42") == 42 and parse_value("int", "12.0") == 12
    assert parse_value("FLOAT", "2.5") == 2.5 and parse_value("DOUBLE", "-1") == -1.0
    assert parse_value("BOOLEAN", "true") is True and parse_value("BOOLEAN", "0") is False
    assert parse_value("STRING", " a ") == " a "
    for kind, text in [("INT", "1.5"), ("INT", "x"), ("FLOAT", "nan"), ("BOOLEAN", "yes")]:
        with pytest.raises(ValueError):
            parse_value(kind, text)
    assert [value_text(v) for v in (True, 3, 2.0, 21.5, "s", b"b", [1])] == [
        "true",
        "3",
        "2",
        "21.5",
        "s",
        "b",
        "[1]",
    ]
