"""A mapper: its devices and models, served to EdgeCore and run by their drivers.

``Mapper.start`` serves DeviceMapperService on the mapper's socket, registers with EdgeCore
(trying again until EdgeCore answers) and runs the devices EdgeCore returns; afterwards EdgeCore
adds, changes and removes devices over DMI. ``run_mapper`` is a mapper program's ``main``: it
runs until SIGTERM or SIGINT, then stops every device and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .configuring import MapperConfig, parse_args
from .driving import Driver
from .registering import EdgeCoreClient
from .serving import MapperServer
from .twinning import DeviceTwin

__all__ = ["DriverFactory", "Mapper", "run_mapper"]

log = logging.getLogger(__name__)

# Builds the driver of one device from the Device (Kubernetes JSON); a Driver class is one.
DriverFactory = Callable[[Mapping[str, Any]], Driver]


class Mapper:
    """Runs the devices of one protocol with ``driver``; see the module docstring."""

    def __init__(self, config: MapperConfig, driver: DriverFactory) -> None:
        self.config = config
        self._driver = driver
        self._edgecore = EdgeCoreClient(config.edgecore_sock)
        self._server = MapperServer(config.socket_path, self, protocol=config.protocol)
        self._models: dict[tuple[str, str], dict[str, Any]] = {}
        self._twins: dict[tuple[str, str], DeviceTwin] = {}
        self._lock = asyncio.Lock()  # one change to the device set at a time

    @property
    def devices(self) -> list[tuple[str, str]]:
        """(namespace, name) of the devices running."""
        return sorted(self._twins)

    async def start(self) -> None:
        await self._server.start()
        models, devices = await self._edgecore.register(self.config.mapper_info())
        for model in models:
            await self.put_model(model)
        for device in devices:
            if _key(device) in self._twins:
                continue  # EdgeCore sent it over DMI already, while we were registering
            try:
                await self.register_device(device)
            except (LookupError, ValueError) as exc:
                log.warning("not running device %s/%s: %s", *_key(device), exc)

    async def stop(self) -> None:
        await self._server.stop()
        async with self._lock:
            twins, self._twins = self._twins, {}
            for twin in twins.values():
                await twin.stop()
        await self._edgecore.close()

    # -- the DeviceSet that MapperServer serves ----------------------------------------------

    async def register_device(self, device: dict[str, Any]) -> None:
        async with self._lock:
            await self._run(device)

    async def update_device(self, device: dict[str, Any]) -> None:
        async with self._lock:
            twin = self._twins.get(_key(device))
            if twin is not None and _without_desired(twin.device) == _without_desired(device):
                twin.update(device)  # only desired values changed: keep the connection
            else:
                await self._run(device)

    async def remove_device(self, namespace: str, name: str) -> None:
        async with self._lock:
            twin = self._twins.pop((namespace, name), None)
            if twin is None:
                raise LookupError(f"device {namespace}/{name} is not registered")
            await twin.stop()

    async def put_model(self, model: dict[str, Any]) -> None:
        async with self._lock:
            key = _key(model)
            changed = key in self._models and self._models[key] != model
            self._models[key] = model
            if changed:  # the devices of the model restart with its new property types
                for twin in list(self._twins.values()):
                    if _model_key(twin.device) == key:
                        await self._run(twin.device)

    async def remove_model(self, namespace: str, name: str) -> None:
        async with self._lock:
            if self._models.pop((namespace, name), None) is None:
                raise LookupError(f"device model {namespace}/{name} is not known")

    def get_device(self, namespace: str, name: str) -> dict[str, Any]:
        twin = self._twins.get((namespace, name))
        if twin is None:
            raise LookupError(f"device {namespace}/{name} is not registered")
        return twin.snapshot()

    async def _run(self, device: Mapping[str, Any]) -> None:
        """(Re)starts a device's twin; the caller holds the lock."""
        protocol = ((device.get("spec") or {}).get("protocol") or {}).get("protocolName")
        if protocol != self.config.protocol:
            raise ValueError(f"device speaks {protocol!r}; this mapper {self.config.protocol!r}")
        model = self._models.get(_model_key(device))
        if model is None:
            raise LookupError(
                "device model {}/{} is not known: create it first".format(*_model_key(device))
            )
        driver = self._driver(device)  # ValueError: a device this driver cannot serve
        old = self._twins.pop(_key(device), None)
        if old is not None:
            await old.stop()
        twin = DeviceTwin(device, model, driver, self._edgecore)
        self._twins[_key(device)] = twin
        twin.start()
        log.info("running device %s/%s", *_key(device))


def run_mapper(
    argv: Sequence[str] | None, driver: DriverFactory, *, protocol: str, name: str
) -> int:
    """A mapper program: parses ``--config``/flags, runs until SIGTERM/SIGINT, returns 0."""
    config, level = parse_args(argv, protocol=protocol, name=name)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve(config, driver))
    return 0


async def _serve(config: MapperConfig, driver: DriverFactory) -> None:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, main.cancel)
    mapper = Mapper(config, driver)
    try:
        await mapper.start()
        await asyncio.Event().wait()  # until a signal cancels us
    except asyncio.CancelledError:
        log.info("stopping")
    finally:
        await mapper.stop()


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj["metadata"]
    return meta["namespace"], meta["name"]


def _model_key(device: Mapping[str, Any]) -> tuple[str, str]:
    ref = (device.get("spec") or {}).get("deviceModelRef") or {}
    return device["metadata"]["namespace"], ref.get("name", "")


def _without_desired(device: Mapping[str, Any]) -> Any:
    spec = dict(device.get("spec") or {})
    spec["properties"] = [
        {k: v for k, v in prop.items() if k != "desired"} for prop in spec.get("properties") or []
    ]
    return spec
