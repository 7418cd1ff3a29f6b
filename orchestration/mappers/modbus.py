"""The Modbus TCP mapper: a Driver on pymodbus, and its program (kubeedge.md §5.6).

Device ``spec.protocol.configData``: ``ip``, ``port`` (502), ``slaveID`` (1), ``timeout``
(milliseconds, 1000). Property ``visitors.configData``: ``register`` (CoilRegister,
DiscreteInputRegister, HoldingRegister, InputRegister), ``offset``, ``limit`` (1), ``scale``
(1), ``isSwap`` (swap the bytes of each register), ``isRegisterSwap`` (reverse the registers).

Reads convert per the model's property type, as KubeEdge's Modbus mapper does: registers are
big-endian and read unsigned; INT is that integer times scale (truncated), FLOAT/DOUBLE an IEEE
float of 2 or 4 registers (1 register: the integer) times scale, BOOLEAN any bit set, STRING the
bytes as UTF-8. Writes go to coils (0 or 1) and holding registers (the value divided by scale).
One client per endpoint and slave serves all its devices, one call at a time.

Run it as ``python -m orbiter.orchestration.mappers.modbus --config config.yaml`` (or
``--socket``, ``--edgecore-sock``, ``--name``): as a pod on an edge node, or standalone.
"""

from __future__ import annotations

import asyncio
import math
import struct
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from .driving import OFFLINE, ONLINE, Driver, DriverError
from .running import run_mapper

__all__ = ["REGISTERS", "ModbusDriver", "ModbusPool", "main"]

REGISTERS = ("CoilRegister", "DiscreteInputRegister", "HoldingRegister", "InputRegister")
_BITS = ("CoilRegister", "DiscreteInputRegister")
_MAX_LIMIT = {"CoilRegister": 2000, "DiscreteInputRegister": 2000}  # per request, by Modbus
_MAX_REGISTERS = 125


@dataclass(frozen=True)
class _Endpoint:
    host: str
    port: int
    slave: int
    timeout: float  # seconds


@dataclass(frozen=True)
class _Visitor:
    register: str
    offset: int
    limit: int
    scale: float
    swap: bool
    register_swap: bool
    kind: str  # the model's type, upper-case


class _Connection:
    """One pymodbus client for an endpoint and slave; its calls are serialised."""

    def __init__(self, endpoint: _Endpoint) -> None:
        self.endpoint = endpoint
        # Reconnecting is ours to do (on the next call): pymodbus' own would run in the
        # background, outliving the devices that use it.
        self.client = AsyncModbusTcpClient(
            endpoint.host,
            port=endpoint.port,
            timeout=endpoint.timeout,
            retries=0,
            reconnect_delay=0,
        )
        self.lock = asyncio.Lock()
        self.users = 0
        self.answering = False  # did the device answer the last request?
        self._retry_at = 0.0  # no new connection before then: an unreachable host costs timeout

    async def call(self, function: str, *args: Any, **kwargs: Any) -> Any:
        async with self.lock:
            return await self._call(function, *args, **kwargs)

    async def probe(self) -> bool:
        """Does the device answer? Any reply counts, an exception reply too."""
        async with self.lock:
            if self.answering and self.client.connected:
                return True
            try:
                await self._call("read_holding_registers", 0, count=1)
            except DriverError:
                return self.answering
            return True

    async def _call(self, function: str, *args: Any, **kwargs: Any) -> Any:
        where = f"{self.endpoint.host}:{self.endpoint.port} slave {self.endpoint.slave}"
        if not self.client.connected:
            loop = asyncio.get_running_loop()
            if loop.time() < self._retry_at:
                raise DriverError(f"cannot connect to {where}")
            self.client.close()
            if not await self.client.connect():
                self.answering = False
                self._retry_at = loop.time() + self.endpoint.timeout
                raise DriverError(f"cannot connect to {where}")
        try:
            response = await getattr(self.client, function)(
                *args, device_id=self.endpoint.slave, **kwargs
            )
        except ModbusException as exc:
            self.answering = False
            self.client.close()  # a late reply must not be taken for the next request's
            raise DriverError(f"{where}: {exc}") from None
        self.answering = True
        if response.isError():
            raise DriverError(f"{where}: {function} answered exception {response}")
        return response


class ModbusPool:
    """The connections of one mapper, shared by the devices at the same endpoint and slave.
    ``pool.driver`` is the mapper's driver factory."""

    def __init__(self) -> None:
        self._connections: dict[_Endpoint, _Connection] = {}

    def driver(self, device: Mapping[str, Any]) -> ModbusDriver:
        return ModbusDriver(device, pool=self)

    def acquire(self, endpoint: _Endpoint) -> _Connection:
        connection = self._connections.get(endpoint)
        if connection is None:
            connection = self._connections[endpoint] = _Connection(endpoint)
        connection.users += 1
        return connection

    def release(self, connection: _Connection) -> None:
        connection.users -= 1
        if connection.users <= 0:
            self._connections.pop(connection.endpoint, None)
            connection.client.close()


class ModbusDriver(Driver):
    """A Modbus TCP device; see the module docstring for its configData."""

    def __init__(self, device: Mapping[str, Any], *, pool: ModbusPool | None = None) -> None:
        super().__init__(device)
        self._endpoint = _endpoint(self.config)
        for prop in (device.get("spec") or {}).get("properties") or []:
            config = (prop.get("visitors") or {}).get("configData") or {}
            _visitor(config, "", f"property {prop.get('name')!r}")  # refuse bad ones now
        self._pool = pool or ModbusPool()
        self._connection: _Connection | None = None

    async def connect(self) -> None:
        if self._connection is None:
            self._connection = self._pool.acquire(self._endpoint)
        await self._connection.probe()

    async def read(self, visitor: dict[str, Any]) -> Any:
        v = _visitor(visitor.get("configData") or {}, visitor.get("type", ""), "visitor")
        connection = self._live()
        if v.register in _BITS:
            function = "read_coils" if v.register == "CoilRegister" else "read_discrete_inputs"
            response = await connection.call(function, v.offset, count=v.limit)
            return _from_bits(v, list(response.bits[: v.limit]))
        function = (
            "read_holding_registers" if v.register == "HoldingRegister" else "read_input_registers"
        )
        response = await connection.call(function, v.offset, count=v.limit)
        return _from_registers(v, list(response.registers))

    async def write(self, visitor: dict[str, Any], value: Any) -> None:
        v = _visitor(visitor.get("configData") or {}, visitor.get("type", ""), "visitor")
        connection = self._live()
        if v.register == "CoilRegister":
            if value not in (0, 1):  # True and False included
                raise ValueError(f"a coil takes 0 or 1, not {value!r}")
            await connection.call("write_coil", v.offset, bool(value))
        elif v.register == "HoldingRegister":
            registers = _to_registers(v, value)
            if len(registers) == 1:
                await connection.call("write_register", v.offset, registers[0])
            else:
                await connection.call("write_registers", v.offset, registers)
        else:
            raise ValueError(f"{v.register} is read-only")

    async def state(self) -> str:
        return ONLINE if await self._live().probe() else OFFLINE

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool.release(connection)

    def _live(self) -> _Connection:
        if self._connection is None:
            self._connection = self._pool.acquire(self._endpoint)
        return self._connection


def _from_bits(v: _Visitor, bits: list[bool]) -> Any:
    if v.kind in ("BOOLEAN", ""):
        return bool(bits[0])
    number = sum(1 << i for i, bit in enumerate(bits) if bit)  # the first coil is bit 0
    if v.kind == "INT":
        return int(number * v.scale) if v.scale != 1 else number
    if v.kind in ("FLOAT", "DOUBLE"):
        return number * v.scale
    raise ValueError(f"coils cannot be read as {v.kind}")


def _from_registers(v: _Visitor, registers: list[int]) -> Any:
    data = _swapped(v, b"".join(r.to_bytes(2, "big") for r in registers))
    if v.kind in ("INT", ""):
        number = int.from_bytes(data, "big")
        return int(number * v.scale) if v.scale != 1 else number
    if v.kind in ("FLOAT", "DOUBLE"):
        if len(data) == 4:
            return struct.unpack(">f", data)[0] * v.scale
        if len(data) == 8:
            return struct.unpack(">d", data)[0] * v.scale
        return int.from_bytes(data, "big") * v.scale
    if v.kind == "BOOLEAN":
        return any(data)
    return data.rstrip(b"\0").decode(errors="replace")  # STRING, BYTES


def _to_registers(v: _Visitor, value: Any) -> list[int]:
    width = 2 * v.limit
    if v.kind == "STRING":
        data = str(value).encode()
        if len(data) > width:
            raise ValueError(f"{value!r} does not fit in {v.limit} registers")
        data = data.ljust(width, b"\0")
    elif v.kind in ("FLOAT", "DOUBLE") and width in (4, 8):
        try:
            data = struct.pack(">f" if width == 4 else ">d", float(value) / v.scale)
        except OverflowError:
            raise ValueError(f"{value!r} does not fit in {v.limit} registers") from None
    else:
        raw = round(float(value) / v.scale) if v.scale != 1 else int(value)
        if not -(1 << (8 * width - 1)) <= raw < 1 << (8 * width):
            raise ValueError(f"{value!r} does not fit in {v.limit} registers")
        data = raw.to_bytes(width, "big", signed=raw < 0)
    data = _swapped(v, data)
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, width, 2)]


def _swapped(v: _Visitor, data: bytes) -> bytes:
    # Both are their own inverse and commute, so writes undo them the same way.
    if v.register_swap:
        data = b"".join(data[i : i + 2] for i in range(len(data) - 2, -1, -2))
    if v.swap:
        data = b"".join(data[i + 1 : i + 2] + data[i : i + 1] for i in range(0, len(data), 2))
    return data


def _endpoint(config: Mapping[str, Any]) -> _Endpoint:
    host = config.get("ip")
    if not isinstance(host, str) or not host:
        raise ValueError("modbus: spec.protocol.configData.ip is required (Modbus TCP)")
    port = _integer(config.get("port", 502), "port", 1, 65535)
    slave = _integer(config.get("slaveID", 1), "slaveID", 0, 255)
    timeout = _integer(config.get("timeout", 1000) or 1000, "timeout", 1, 3_600_000)
    return _Endpoint(host, port, slave, timeout / 1000)


def _visitor(config: Mapping[str, Any], kind: str, where: str) -> _Visitor:
    register = config.get("register")
    if register not in REGISTERS:
        raise ValueError(f"modbus: {where}: register must be one of {', '.join(REGISTERS)}")
    limit = _integer(config.get("limit", 1) or 1, f"{where}: limit", 1, 0)
    if limit > _MAX_LIMIT.get(register, _MAX_REGISTERS):
        raise ValueError(f"modbus: {where}: limit {limit} is more than one request can read")
    scale = config.get("scale", 1) or 1  # KubeEdge's 0 would zero every value
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
        raise ValueError(f"modbus: {where}: scale must be a number")
    flags = {key: config.get(key, False) for key in ("isSwap", "isRegisterSwap")}
    for key, flag in flags.items():
        if not isinstance(flag, bool):
            raise ValueError(f"modbus: {where}: {key} must be true or false")
    return _Visitor(
        register=register,
        offset=_integer(config.get("offset", 0), f"{where}: offset", 0, 65535),
        limit=limit,
        scale=scale,
        swap=flags["isSwap"],
        register_swap=flags["isRegisterSwap"],
        kind=str(kind).upper(),
    )


def _integer(value: Any, what: str, low: int, high: int) -> int:
    """An integer, from KubeEdge's FloatValue too (12.0); ``high`` 0 means unbounded."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"modbus: {what} must be an integer of at least {low}")
    if high and value > high:
        raise ValueError(f"modbus: {what} must be at most {high}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    pool = ModbusPool()
    return run_mapper(argv, pool.driver, protocol="modbus", name="modbus-mapper")


if __name__ == "__main__":
    sys.exit(main())
