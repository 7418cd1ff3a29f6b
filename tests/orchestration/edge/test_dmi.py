"""EdgeCore's DMI ends: the DeviceManagerServer called as a mapper would, and MapperClients
against a small in-test DeviceMapperService standing in for a mapper."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from orbiter.orchestration.apis.dmi import MapperInfo, api_pb2, api_pb2_grpc, device_from_pb
from orbiter.orchestration.edge.dmi import DeviceManagerServer, MapperCallError, MapperClients

from ..mappers import WITHIN, RecordingHandler, _grpc_released, device, model, short_dir  # noqa: F401

MODEL = model([{"name": "temperature", "type": "INT", "accessMode": "ReadWrite"}])
SENSOR = device(
    "sensor-1",
    [
        {
            "name": "temperature",
            "desired": {"value": "20"},
            "visitors": {"protocolName": "modbus", "configData": {"offset": 1}},
        }
    ],
    config={"ip": "10.0.0.1"},
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Edge:
    """The server under test and a raw client of it, as a mapper would call it."""

    def __init__(self, path: str) -> None:
        self.handler = RecordingHandler([MODEL], [SENSOR])
        self.clock = Clock()
        self.server = DeviceManagerServer(
            os.path.join(path, "dmi.sock"), self.handler, report_burst=3, clock=self.clock
        )
        self.channel: Any = None

    async def call(self, method: str, request: Any, reply: Any = None) -> Any:
        rpc = self.channel.unary_unary(
            f"/v1beta1.DeviceManagerService/{method}",
            request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
            response_deserializer=reply.FromString if reply is not None else None,
        )
        return await rpc(request, timeout=WITHIN)

    async def refused(self, method: str, request: Any) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await self.call(method, request)
        return refused.value.code(), refused.value.details()


@pytest.fixture
def sockets() -> Iterator[str]:
    with short_dir() as path:
        yield path


@pytest_asyncio.fixture
async def edge(sockets: str) -> AsyncIterator[Edge]:
    edge = Edge(sockets)
    await edge.server.start()
    edge.channel = grpc.aio.insecure_channel(f"unix:{edge.server.path}")
    try:
        yield edge
    finally:
        # Let go of the channel: grpc's poller thread lives while it does.
        channel, edge.channel = edge.channel, None
        await channel.close()
        await edge.server.stop()


def status(
    name: str, value: str = "21", namespace: str = "default"
) -> api_pb2.ReportDeviceStatusRequest:
    twin = api_pb2.Twin(propertyName="temperature", reported=api_pb2.TwinProperty(value=value))
    return api_pb2.ReportDeviceStatusRequest(
        deviceName=name,
        deviceNamespace=namespace,
        reportedDevice=api_pb2.DeviceStatus(twins=[twin]),
    )


MAPPER = api_pb2.MapperInfo(
    name="modbus-mapper", protocol="modbus", address=b"/etc/kubeedge/modbus.sock", state="ok"
)


async def test_mapper_register_answers_the_protocols_devices(edge: Edge) -> None:
    reply = await edge.call(
        "MapperRegister",
        api_pb2.MapperRegisterRequest(withData=True, mapper=MAPPER),
        api_pb2.MapperRegisterResponse,
    )
    [mapper] = edge.handler.mappers
    assert mapper == MapperInfo(
        name="modbus-mapper", protocol="modbus", address="/etc/kubeedge/modbus.sock", state="ok"
    )
    assert [m.name for m in reply.modelList] == ["model-a"]
    [sent] = reply.deviceList
    assert sent.spec.deviceModelReference == "model-a"
    assert device_from_pb(sent)["spec"]["properties"] == SENSOR["spec"]["properties"]
    # Without data: registered all the same, nothing sent back.
    other = api_pb2.MapperInfo(name="opc", protocol="opcua", address=b"/s")
    reply = await edge.call(
        "MapperRegister",
        api_pb2.MapperRegisterRequest(withData=False, mapper=other),
        api_pb2.MapperRegisterResponse,
    )
    assert (list(reply.deviceList), [m.protocol for m in edge.handler.mappers]) == (
        [],
        ["modbus", "opcua"],
    )


async def test_reports_reach_the_handler(edge: Edge) -> None:
    await edge.call("ReportDeviceStatus", status("sensor-1"), api_pb2.ReportDeviceStatusResponse)
    await edge.call(
        "ReportDeviceStates",
        api_pb2.ReportDeviceStatesRequest(
            deviceName="sensor-1", deviceNamespace="default", state="OK"
        ),
    )
    assert edge.handler.statuses == [
        (
            "default",
            "sensor-1",
            [
                {
                    "propertyName": "temperature",
                    "reported": {"value": "21", "metadata": {}},
                    "observedDesired": {"value": "", "metadata": {}},
                }
            ],
        )
    ]
    assert edge.handler.states == [("default", "sensor-1", "ok")]  # old mappers' "OK"


async def test_malformed_requests_are_refused_and_the_server_keeps_serving(edge: Edge) -> None:
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    twin_value = status("sensor-1", value="x" * 600)
    empty = api_pb2.ReportDeviceStatusRequest(deviceName="sensor-1")
    cases: list[tuple[str, Any, str]] = [
        ("ReportDeviceStatus", status(""), "deviceName is required"),
        ("ReportDeviceStatus", status("UPPER"), "not a valid name"),
        ("ReportDeviceStatus", status("s", namespace="a.b"), "not a valid namespace"),
        ("ReportDeviceStatus", empty, "carries no twins"),
        ("ReportDeviceStatus", twin_value, "longer than 512 bytes"),
        (
            "ReportDeviceStates",
            api_pb2.ReportDeviceStatesRequest(deviceName="sensor-1", state="exploded"),
            "is not one of",
        ),
        ("ReportDeviceStates", api_pb2.ReportDeviceStatesRequest(state="online"), "required"),
        ("MapperRegister", api_pb2.MapperRegisterRequest(), "mapper.name is required"),
        (
            "MapperRegister",
            api_pb2.MapperRegisterRequest(mapper=api_pb2.MapperInfo(name="m", protocol="p")),
            "address",
        ),
        ("ReportDeviceStates", b"\x0a\x05ab", "Error parsing message"),  # truncated
    ]
    for method, request, text in cases:
        code, details = await edge.refused(method, request)
        assert (code, text in details) == (invalid, True), (method, details)
    # Past the 4 MiB cap: refused by gRPC itself, before any parsing.
    code, _ = await edge.refused("ReportDeviceStatus", status("sensor-1", value="x" * (5 << 20)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert edge.handler.statuses == [] and edge.handler.states == []
    await edge.call("ReportDeviceStatus", status("sensor-1"))
    assert len(edge.handler.statuses) == 1


async def test_handler_errors_become_statuses(edge: Edge, caplog: pytest.LogCaptureFixture) -> None:
    codes = {
        ValueError: grpc.StatusCode.INVALID_ARGUMENT,
        KeyError: grpc.StatusCode.NOT_FOUND,
        RuntimeError: grpc.StatusCode.INTERNAL,
    }
    for failure, expected in [
        (ValueError("no temperature in the model"), "no temperature in the model"),
        (KeyError("device default/sensor-1 is unknown"), "device default/sensor-1 is unknown"),
        (RuntimeError("disk on fire"), "internal error"),  # no internals to the peer
    ]:
        edge.handler.failure = failure
        assert await edge.refused("ReportDeviceStatus", status("sensor-1")) == (
            codes[type(failure)],
            expected,
        )
    assert "disk on fire" in caplog.text  # logged here instead
    # Their tracebacks hold the server's frames, and grpc's poller thread lives while they do.
    edge.handler.failure = None
    caplog.clear()


async def test_reports_are_rate_limited_per_device(edge: Edge) -> None:
    for _ in range(3):  # the burst
        await edge.call("ReportDeviceStatus", status("sensor-1"))
    code, details = await edge.refused("ReportDeviceStatus", status("sensor-1"))
    assert (code, "too many status calls" in details) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        True,
    )
    # Other devices and the other report have their own buckets.
    await edge.call("ReportDeviceStatus", status("sensor-2"))
    await edge.call(
        "ReportDeviceStates",
        api_pb2.ReportDeviceStatesRequest(deviceName="sensor-1", state="online"),
    )
    edge.clock.now += 1.0  # 20 tokens a second, up to the burst
    for _ in range(3):
        await edge.call("ReportDeviceStatus", status("sensor-1"))
    code, _ = await edge.refused("ReportDeviceStatus", status("sensor-1"))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(edge.handler.statuses) == 7
    # A mapper registering in a loop is held back the same way.
    register = api_pb2.MapperRegisterRequest(mapper=MAPPER)
    for _ in range(3):
        await edge.call("MapperRegister", register)
    code, _ = await edge.refused("MapperRegister", register)
    assert (code, len(edge.handler.mappers)) == (grpc.StatusCode.RESOURCE_EXHAUSTED, 3)


def leave_socket_behind(path: str) -> None:
    """What a crashed EdgeCore leaves: a socket file nobody listens on."""
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(path)


async def test_a_stale_socket_is_replaced_and_other_files_are_kept(sockets: str) -> None:
    handler = RecordingHandler()
    server = DeviceManagerServer(os.path.join(sockets, "dmi.sock"), handler)
    await asyncio.to_thread(leave_socket_behind, server.path)
    await server.start()
    try:
        channel = grpc.aio.insecure_channel(f"unix:{server.path}")
        request = api_pb2.ReportDeviceStatesRequest(deviceName="d", state="online")
        await channel.unary_unary(
            "/v1beta1.DeviceManagerService/ReportDeviceStates",
            request_serializer=lambda m: m.SerializeToString(),
        )(request, timeout=WITHIN)
        await channel.close()
        assert handler.states == [("default", "d", "online")]
    finally:
        await server.stop()
    blocker = DeviceManagerServer(os.path.join(sockets, "not-a-socket"), handler)
    await asyncio.to_thread(lambda: open(blocker.path, "w").close())
    with pytest.raises(FileExistsError):
        await blocker.start()


class FakeMapper(api_pb2_grpc.DeviceMapperServiceServicer):  # type: ignore[misc]
    """A mapper's DeviceMapperService that records requests; GetDevice of "missing" is
    NOT_FOUND and of "slow" never answers."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def RegisterDevice(self, request: Any, context: Any) -> Any:
        self.calls.append(("RegisterDevice", request))
        return api_pb2.RegisterDeviceResponse(
            deviceName=request.device.name, deviceNamespace=request.device.namespace
        )

    async def UpdateDevice(self, request: Any, context: Any) -> Any:
        self.calls.append(("UpdateDevice", request))
        return api_pb2.UpdateDeviceResponse()

    async def RemoveDevice(self, request: Any, context: Any) -> Any:
        self.calls.append(("RemoveDevice", request))
        return api_pb2.RemoveDeviceResponse()

    async def CreateDeviceModel(self, request: Any, context: Any) -> Any:
        self.calls.append(("CreateDeviceModel", request))
        return api_pb2.CreateDeviceModelResponse(deviceModelName=request.model.name)

    async def UpdateDeviceModel(self, request: Any, context: Any) -> Any:
        self.calls.append(("UpdateDeviceModel", request))
        return api_pb2.UpdateDeviceModelResponse()

    async def RemoveDeviceModel(self, request: Any, context: Any) -> Any:
        self.calls.append(("RemoveDeviceModel", request))
        return api_pb2.RemoveDeviceModelResponse()

    async def GetDevice(self, request: Any, context: Any) -> Any:
        self.calls.append(("GetDevice", request))
        if request.deviceName == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such device")
        if request.deviceName == "slow":
            await asyncio.Event().wait()  # cancelled when the server stops
        stored = [r.device for m, r in self.calls if m == "RegisterDevice"][-1]
        return api_pb2.GetDeviceResponse(device=stored)


@pytest_asyncio.fixture
async def mapper(sockets: str) -> AsyncIterator[tuple[FakeMapper, str]]:
    fake = FakeMapper()
    server = grpc.aio.server()
    api_pb2_grpc.add_DeviceMapperServiceServicer_to_server(fake, server)  # type: ignore[no-untyped-call]
    path = os.path.join(sockets, "modbus.sock")
    server.add_insecure_port(f"unix:{path}")
    await server.start()
    try:
        yield fake, path
    finally:
        await server.stop(None)


async def test_mapper_clients_drive_the_mapper_of_each_protocol(
    mapper: tuple[FakeMapper, str],
) -> None:
    fake, path = mapper
    clients = MapperClients()
    try:
        await clients.add(MapperInfo(name="modbus-mapper", protocol="modbus", address=path))
        await clients.register_device(SENSOR, MODEL)
        await clients.update_device(SENSOR, MODEL)
        got = await clients.get_device("default", "sensor-1")
        await clients.remove_device("default", "sensor-1")
        await clients.create_device_model(MODEL)
        await clients.remove_device_model("default", "model-a")
    finally:
        await clients.close()
    assert [m for m, _ in fake.calls] == [
        "CreateDeviceModel",
        "RegisterDevice",
        "UpdateDeviceModel",
        "UpdateDevice",
        "GetDevice",
        "RemoveDevice",
        "CreateDeviceModel",
        "RemoveDeviceModel",
    ]
    registered = fake.calls[1][1].device
    assert (registered.name, registered.spec.protocol.protocolName) == ("sensor-1", "modbus")
    assert got["spec"]["properties"] == SENSOR["spec"]["properties"]
    remove = fake.calls[5][1]
    assert (remove.deviceNamespace, remove.deviceName) == ("default", "sensor-1")


async def test_mapper_clients_say_clearly_what_went_wrong(mapper: tuple[FakeMapper, str]) -> None:
    fake, path = mapper
    clients = MapperClients(timeout=0.3)
    try:
        with pytest.raises(LookupError, match="no mapper registered for protocol 'modbus'"):
            await clients.register_device(SENSOR, MODEL)
        await clients.add(MapperInfo(name="modbus-mapper", protocol="modbus", address=path))
        await clients.add(MapperInfo(name="opc", protocol="opcua", address=path + ".none"))
        with pytest.raises(LookupError, match="pass protocol="):
            await clients.remove_device("default", "never-sent")
        with pytest.raises(ValueError, match=r"spec\.protocol\.protocolName"):
            await clients.register_device({**SENSOR, "spec": {}}, MODEL)
        with pytest.raises(MapperCallError) as failed:
            await clients.get_device("default", "missing", protocol="modbus")
        assert (failed.value.code, failed.value.details) == ("NOT_FOUND", "no such device")
        with pytest.raises(MapperCallError) as failed:
            await clients.get_device("default", "slow", protocol="modbus")
        assert failed.value.code == "DEADLINE_EXCEEDED"
        with pytest.raises(MapperCallError) as failed:
            await clients.get_device("default", "x", protocol="opcua")
        assert failed.value.code == "UNAVAILABLE"  # nothing listens there
        # Re-pointing a protocol at another socket.
        await clients.add(MapperInfo(name="opc", protocol="opcua", address=path))
        await clients.register_device(device("s2", [], protocol="opcua"), MODEL)
        assert fake.calls[-1][0] == "RegisterDevice"
        assert set(clients.mappers) == {"modbus", "opcua"}
    finally:
        await clients.close()
