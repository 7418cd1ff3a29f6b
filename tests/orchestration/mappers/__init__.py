"""Shared by the DMI tests: EdgeCore's side played by the real DeviceManagerServer with a
handler that records what mappers send, and short Unix socket directories."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from orbiter.orchestration.apis.dmi import MapperInfo
from orbiter.orchestration.edge.dmi import MapperClients

T = TypeVar("T")
WITHIN = 10.0  # seconds any awaited condition may take on a loaded machine


@pytest.fixture(autouse=True)
def _grpc_released() -> Iterator[None]:
    """grpc.aio keeps a poller thread while any channel or server object lives, and a failed
    call's traceback holds its channel in a reference cycle: collect those before the suite's
    leaked-thread check. Import it into each DMI test module."""
    yield
    gc.collect()


@contextlib.contextmanager
def short_dir() -> Iterator[str]:
    """A directory for Unix sockets: pytest's tmp_path can exceed their ~107-byte limit."""
    path = tempfile.mkdtemp(prefix="dmi", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class RecordingHandler:
    """EdgeCore's DeviceManagerHandler, recording every call. It answers MapperRegister with
    ``models``/``devices`` of the mapper's protocol and, like EdgeCore, adds the mapper to
    ``clients`` when given."""

    def __init__(
        self,
        models: list[dict[str, Any]] | None = None,
        devices: list[dict[str, Any]] | None = None,
        clients: MapperClients | None = None,
    ) -> None:
        self.models = models or []
        self.devices = devices or []
        self.clients = clients
        self.mappers: list[MapperInfo] = []
        self.statuses: list[tuple[str, str, list[dict[str, Any]]]] = []
        self.states: list[tuple[str, str, str]] = []
        self.failure: Exception | None = None  # raised by the report handlers when set
        self._changed = asyncio.Condition()

    async def mapper_registered(
        self, mapper: MapperInfo
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        if self.clients is not None:
            await self.clients.add(mapper)
        await self._record(self.mappers, mapper)
        devices = [
            d for d in self.devices if d["spec"]["protocol"]["protocolName"] == mapper.protocol
        ]
        models = [m for m in self.models if m["spec"].get("protocol") == mapper.protocol]
        return models, devices

    async def device_status_reported(
        self, namespace: str, name: str, twins: list[dict[str, Any]]
    ) -> None:
        if self.failure is not None:
            raise self.failure
        await self._record(self.statuses, (namespace, name, twins))

    async def device_state_reported(self, namespace: str, name: str, state: str) -> None:
        if self.failure is not None:
            raise self.failure
        await self._record(self.states, (namespace, name, state))

    async def _record(self, log: list[Any], item: Any) -> None:
        async with self._changed:
            log.append(item)
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], T], within: float = WITHIN) -> T:
        """The first truthy value of ``predicate``, re-evaluated at each recorded call."""
        async with asyncio.timeout(within), self._changed:
            return await self._changed.wait_for(predicate)

    def reported(self, namespace: str, name: str) -> dict[str, str]:
        """The latest reported value of each property of a device."""
        values: dict[str, str] = {}
        for ns, n, twins in self.statuses:
            if (ns, n) == (namespace, name):
                values.update({t["propertyName"]: t["reported"]["value"] for t in twins})
        return values

    def last_state(self, namespace: str, name: str) -> str | None:
        states = [s for ns, n, s in self.states if (ns, n) == (namespace, name)]
        return states[-1] if states else None


def device(
    name: str,
    properties: list[dict[str, Any]],
    *,
    protocol: str = "modbus",
    config: dict[str, Any] | None = None,
    model: str = "model-a",
    namespace: str = "default",
) -> dict[str, Any]:
    """A Device as kubectl applies it."""
    spec: dict[str, Any] = {
        "deviceModelRef": {"name": model},
        "nodeName": "edge-1",
        "protocol": {"protocolName": protocol, "configData": config or {}},
        "properties": properties,
    }
    return {
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "Device",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def model(
    properties: list[dict[str, Any]],
    *,
    name: str = "model-a",
    protocol: str = "modbus",
    namespace: str = "default",
) -> dict[str, Any]:
    """A DeviceModel as kubectl applies it."""
    return {
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "DeviceModel",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"protocol": protocol, "properties": properties},
    }
