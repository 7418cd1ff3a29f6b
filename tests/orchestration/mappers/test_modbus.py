"""The Modbus TCP mapper against a real pymodbus server as the device, with EdgeCore's DMI
side played by the real DeviceManagerServer (recording handler) and MapperClients."""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import pytest_asyncio
from orbiter.orchestration.edge.dmi import DeviceManagerServer, MapperCallError, MapperClients
from orbiter.orchestration.mappers import Mapper, MapperConfig
from orbiter.orchestration.mappers.modbus import (
    ModbusDriver,
    ModbusPool,
    _from_registers,
    _to_registers,
    _visitor,
)
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from . import WITHIN, RecordingHandler, _grpc_released, device, model, short_dir  # noqa: F401

CYCLE = 100  # ms
HR, CO = 3, 1  # function codes reading holding registers and coils

MODEL = model(
    [
        {"name": "temperature", "type": "INT", "accessMode": "ReadOnly"},
        {"name": "humidity", "type": "FLOAT", "accessMode": "ReadOnly"},
        {"name": "pressure", "type": "INT", "accessMode": "ReadOnly"},
        {"name": "energy", "type": "INT", "accessMode": "ReadOnly"},
        {"name": "alarm", "type": "BOOLEAN", "accessMode": "ReadOnly"},
        {"name": "door", "type": "BOOLEAN", "accessMode": "ReadOnly"},
        {"name": "setpoint", "type": "INT", "accessMode": "ReadWrite", "minimum": "0"},
        {"name": "fan", "type": "BOOLEAN", "accessMode": "ReadWrite"},
    ]
)


def visit(name: str, register: str, offset: int, desired: str = "", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name,
        "visitors": {
            "protocolName": "modbus",
            "configData": {"register": register, "offset": offset, "limit": 1, **extra},
        },
        "collectCycle": CYCLE,
        "reportCycle": CYCLE,
        "reportToCloud": True,
    }
    if desired:
        out["desired"] = {"value": desired}
    return out


def plc(port: int, *, setpoint: str = "20", fan: str = "true") -> dict[str, Any]:
    return device(
        "plc-1",
        [
            visit("temperature", "HoldingRegister", 0, scale=0.1),
            visit("humidity", "HoldingRegister", 2, limit=2, isRegisterSwap=True),
            visit("pressure", "InputRegister", 0, isSwap=True),
            visit("energy", "InputRegister", 4, limit=2),
            visit("alarm", "CoilRegister", 3),
            visit("door", "DiscreteInputRegister", 1),
            visit("setpoint", "HoldingRegister", 10, setpoint, scale=0.5),
            visit("fan", "CoilRegister", 5, fan),
        ],
        config={"ip": "127.0.0.1", "port": port, "slaveID": 1, "timeout": 300},
    )


def registers(value: float, fmt: str) -> list[int]:
    data = struct.pack(fmt, value)
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


class Device:
    """A pymodbus TCP server with coils, discrete inputs, holding and input registers; it can
    be stopped and started again on the same port. ``written`` is set on each write."""

    def __init__(self) -> None:
        humidity = registers(21.5, ">f")
        energy = registers(70000, ">I")
        bits = [False] * 16
        holding = [0] * 20
        holding[0] = 1234  # temperature, tenths
        holding[2:4] = humidity[::-1]  # stored with its registers swapped
        inputs = [0] * 20
        inputs[0] = 0x3412  # pressure 0x1234, stored with its bytes swapped
        inputs[4:6] = energy
        coils, discrete = list(bits), list(bits)
        coils[3] = True
        discrete[1] = True
        self.blocks = (
            [SimData(0, values=coils, datatype=DataType.BITS)],
            [SimData(0, values=discrete, datatype=DataType.BITS)],
            [SimData(0, values=holding, datatype=DataType.REGISTERS)],
            [SimData(0, values=inputs, datatype=DataType.REGISTERS)],
        )
        self.port = 0
        self.server: Any = None  # a ModbusTcpServer; its transport and shutdown are untyped
        self.written = asyncio.Event()

    async def _action(
        self, function: int, start: int, address: int, count: int, regs: Any, values: Any
    ) -> None:
        if values is not None:
            self.written.set()

    async def start(self) -> None:
        sim = SimDevice(1, simdata=self.blocks, action=self._action)
        self.server = ModbusTcpServer(sim, address=("127.0.0.1", self.port))
        await self.server.serve_forever(background=True)
        self.port = self.server.transport.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            await server.shutdown()

    async def get(self, function: int, address: int, count: int = 1) -> list[Any]:
        assert self.server is not None
        return list(await self.server.async_getValues(1, function, address, count))

    async def wait_until(self, function: int, address: int, expected: list[Any]) -> None:
        """Waits, write after write, until the server holds ``expected``: 2 s at most."""
        async with asyncio.timeout(2.0):
            while True:
                self.written.clear()
                if await self.get(function, address, len(expected)) == expected:
                    return
                await self.written.wait()


class Node:
    def __init__(self, path: str, plc_device: Device) -> None:
        self.clients = MapperClients(timeout=5.0)
        self.handler = RecordingHandler([MODEL], [plc(plc_device.port)], clients=self.clients)
        self.edgecore = DeviceManagerServer(os.path.join(path, "dmi.sock"), self.handler)
        self.config = MapperConfig(
            name="modbus-mapper",
            protocol="modbus",
            socket_path=os.path.join(path, "modbus.sock"),
            edgecore_sock=self.edgecore.path,
        )
        self.pool = ModbusPool()
        self.mapper = Mapper(self.config, self.pool.driver)

    def reported(self) -> dict[str, str]:
        return self.handler.reported("default", "plc-1")


@pytest.fixture
def sockets() -> Iterator[str]:
    with short_dir() as path:
        yield path


@pytest_asyncio.fixture
async def plc_device() -> AsyncIterator[Device]:
    dev = Device()
    await dev.start()
    try:
        yield dev
    finally:
        await dev.stop()


@pytest_asyncio.fixture
async def node(sockets: str, plc_device: Device) -> AsyncIterator[Node]:
    node = Node(sockets, plc_device)
    await node.edgecore.start()
    await node.mapper.start()
    try:
        yield node
    finally:
        await node.mapper.stop()
        await node.clients.close()
        await node.edgecore.stop()


EXPECTED = {
    "temperature": "123",  # 1234 x 0.1, truncated as KubeEdge does
    "humidity": "21.5",  # float32 over two swapped registers
    "pressure": "4660",  # 0x1234 after the byte swap
    "energy": "70000",  # 32 bits over two registers
    "alarm": "true",
    "door": "true",
}


async def test_reads_registers_and_coils_within_two_report_cycles(node: Node) -> None:
    await node.handler.wait_for(lambda: len(node.handler.statuses) >= 2)
    seen: dict[str, str] = {}
    for _, _, twins in node.handler.statuses[:2]:
        seen.update({t["propertyName"]: t["reported"]["value"] for t in twins})
    assert {k: seen.get(k) for k in EXPECTED} == EXPECTED
    assert node.handler.states[0] == ("default", "plc-1", "online")


async def test_desired_values_are_written_to_holding_registers_and_coils(
    node: Node, plc_device: Device
) -> None:
    # At start: setpoint 20 / scale 0.5 = 40, fan on.
    await plc_device.wait_until(HR, 10, [40])
    await plc_device.wait_until(CO, 5, [True])
    await node.clients.update_device(plc(plc_device.port, setpoint="30", fan="false"), MODEL)
    await plc_device.wait_until(HR, 10, [60])  # within 2 s
    await plc_device.wait_until(CO, 5, [False])
    await node.handler.wait_for(lambda: node.reported().get("setpoint") == "30")
    latest = {t["propertyName"]: t for t in node.handler.statuses[-1][2]}
    assert latest["setpoint"]["observedDesired"]["value"] == "30"


async def test_state_goes_offline_with_the_device_and_back(node: Node, plc_device: Device) -> None:
    await node.handler.wait_for(lambda: node.handler.last_state("default", "plc-1") == "online")
    await plc_device.stop()
    await node.handler.wait_for(lambda: node.handler.last_state("default", "plc-1") == "offline")
    reports = len(node.handler.statuses)
    await plc_device.start()  # the same port
    await node.handler.wait_for(lambda: node.handler.last_state("default", "plc-1") == "online")
    await node.handler.wait_for(lambda: len(node.handler.statuses) > reports)
    assert {k: node.reported()[k] for k in EXPECTED} == EXPECTED


async def test_bad_visitors_are_refused_at_registration(node: Node, plc_device: Device) -> None:
    for broken, text in [
        ({"register": "Nope", "offset": 0}, "register must be one of"),
        ({"register": "HoldingRegister", "offset": -1}, "offset"),
        ({"register": "HoldingRegister", "offset": 0, "limit": 126}, "limit"),
        ({"register": "CoilRegister", "offset": 0, "isSwap": "yes"}, "isSwap"),
    ]:
        bad = plc(plc_device.port)
        bad["metadata"]["name"] = "bad"
        bad["spec"]["properties"][0]["visitors"]["configData"] = broken
        with pytest.raises(MapperCallError) as refused:
            await node.clients.register_device(bad, MODEL)
        assert refused.value.code == "INVALID_ARGUMENT"
        assert text in refused.value.details
    assert node.mapper.devices == [("default", "plc-1")]


async def test_devices_of_one_endpoint_share_a_client(plc_device: Device) -> None:
    pool = ModbusPool()
    first, second = pool.driver(plc(plc_device.port)), pool.driver(plc(plc_device.port))
    visitor = {"type": "INT", "configData": {"register": "HoldingRegister", "offset": 0}}
    try:
        values = await asyncio.gather(first.read(visitor), second.read(visitor))
        assert list(values) == [1234, 1234]
        assert first._connection is second._connection
        assert await first.state() == "online"
    finally:
        await first.close()
        await second.close()
    assert first._connection is None and not pool._connections


def test_register_conversions_round_trip_with_scale_and_swaps() -> None:
    cases: list[tuple[str, dict[str, Any], Any, Any]] = [
        ("FLOAT", {"limit": 2, "isSwap": True, "isRegisterSwap": True}, 1.5, 1.5),
        ("DOUBLE", {"limit": 4, "isRegisterSwap": True, "scale": 2}, 3.25, 3.25),
        ("INT", {"limit": 2, "scale": 0.5}, 70000, 70000),
        ("INT", {"limit": 1, "isSwap": True}, 0x1234, 0x1234),
        ("STRING", {"limit": 3}, "abc", "abc"),
    ]
    for kind, extra, value, expected in cases:
        v = _visitor({"register": "HoldingRegister", "offset": 0, **extra}, kind, "test")
        assert _from_registers(v, _to_registers(v, value)) == expected, (kind, extra)
    swapped = _visitor({"register": "HoldingRegister", "offset": 0, "isSwap": True}, "INT", "t")
    assert _to_registers(swapped, 0x1234) == [0x3412]
    too_big: list[tuple[str, dict[str, Any], Any]] = [
        ("INT", {}, 70000),
        ("STRING", {}, "abc"),
        ("FLOAT", {"limit": 2}, 1e39),
    ]
    for kind, extra, value in too_big:
        with pytest.raises(ValueError):
            _to_registers(
                _visitor({"register": "HoldingRegister", "offset": 0, **extra}, kind, "t"), value
            )
    with pytest.raises(ValueError, match="ip is required"):
        ModbusDriver(device("d", [], config={"port": 502}))


@pytest.fixture
def program(sockets: str) -> Iterator[tuple[str, str, BinaryIO]]:
    """The mapper program's config.yaml, its socket path and its log."""
    path = Path(sockets)
    (path / "config.yaml").write_text(
        "grpc_server:\n"
        f"  socket_path: {path / 'modbus.sock'}\n"
        "common:\n"
        "  name: modbus-mapper\n"
        "  version: v1.0.0\n"
        "  api_version: v1.0.0\n"
        "  protocol: modbus\n"
        "  address: 127.0.0.1\n"
        f"  edgecore_sock: {path / 'dmi.sock'}\n"
    )
    with (path / "mapper.log").open("w+b") as log:
        yield str(path / "config.yaml"), str(path / "modbus.sock"), log


async def test_mapper_runs_as_a_program(
    sockets: str, plc_device: Device, program: tuple[str, str, BinaryIO]
) -> None:
    config, mapper_sock, log = program
    clients = MapperClients(timeout=5.0)
    handler = RecordingHandler([MODEL], [plc(plc_device.port)], clients=clients)
    edgecore = DeviceManagerServer(os.path.join(sockets, "dmi.sock"), handler)
    await edgecore.start()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orbiter.orchestration.mappers.modbus",
        "--config",
        config,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    try:
        await handler.wait_for(lambda: handler.mappers)
        assert handler.mappers[0].address == mapper_sock
        await handler.wait_for(
            lambda: all(
                handler.reported("default", "plc-1").get(k) == v for k, v in EXPECTED.items()
            )
        )
        # EdgeCore reaches the program's own DMI server.
        got = await clients.get_device("default", "plc-1")
        assert got["spec"]["protocol"]["configData"]["port"] == plc_device.port
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(WITHIN):
            await proc.wait()
        log.seek(0)
        text = log.read().decode()
        assert proc.returncode == 0, text[-2000:]
        assert "stopping" in text  # the SIGTERM path, not a crash
        assert not await asyncio.to_thread(os.path.exists, mapper_sock)  # removed on exit
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await clients.close()
        await edgecore.stop()
