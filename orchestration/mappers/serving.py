"""A mapper's DeviceMapperService (kubeedge.md §5.5): how EdgeCore keeps the mapper's devices
and models in step. A thin adapter: each RPC becomes a call on a ``DeviceSet`` with Kubernetes
JSON. Requests are capped at 4 MiB and checked; bad ones get INVALID_ARGUMENT, unknown devices
NOT_FOUND, and the server keeps serving.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from ..apis.dmi import (
    DEVICE_MAPPER_SERVICE,
    api_pb2,
    check_name,
    check_namespace,
    device_from_pb,
    device_to_pb,
    model_from_pb,
)
from ..apis.dmi.serving import Call, UnixServer

__all__ = ["DeviceSet", "MapperServer"]

log = logging.getLogger(__name__)


class DeviceSet(Protocol):
    """The devices and models a mapper runs. Raise ValueError to refuse a request
    (INVALID_ARGUMENT) and KeyError/LookupError for an unknown device or model (NOT_FOUND)."""

    async def register_device(self, device: dict[str, Any]) -> None: ...

    async def update_device(self, device: dict[str, Any]) -> None: ...

    async def remove_device(self, namespace: str, name: str) -> None: ...

    async def put_model(self, model: dict[str, Any]) -> None: ...

    async def remove_model(self, namespace: str, name: str) -> None: ...

    def get_device(self, namespace: str, name: str) -> dict[str, Any]: ...


class MapperServer:
    """DeviceMapperService on ``unix:<path>``, adapting each RPC to ``devices``; ``protocol``
    is the mapper's (DMI's DeviceModels do not carry it)."""

    def __init__(self, path: str, devices: DeviceSet, *, protocol: str) -> None:
        self.path = path
        self._devices = devices
        self._protocol = protocol
        methods: dict[str, tuple[Any, Call]] = {
            "RegisterDevice": (api_pb2.RegisterDeviceRequest, self._register_device),
            "RemoveDevice": (api_pb2.RemoveDeviceRequest, self._remove_device),
            "UpdateDevice": (api_pb2.UpdateDeviceRequest, self._update_device),
            "CreateDeviceModel": (api_pb2.CreateDeviceModelRequest, self._create_model),
            "RemoveDeviceModel": (api_pb2.RemoveDeviceModelRequest, self._remove_model),
            "UpdateDeviceModel": (api_pb2.UpdateDeviceModelRequest, self._update_model),
            "GetDevice": (api_pb2.GetDeviceRequest, self._get_device),
        }
        self._server = UnixServer(path, DEVICE_MAPPER_SERVICE, methods)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, grace: float | None = None) -> None:
        await self._server.stop(grace)

    async def _register_device(
        self, request: api_pb2.RegisterDeviceRequest
    ) -> api_pb2.RegisterDeviceResponse:
        device = device_from_pb(request.device)
        await self._devices.register_device(device)
        meta = device["metadata"]
        return api_pb2.RegisterDeviceResponse(
            deviceName=meta["name"], deviceNamespace=meta["namespace"]
        )

    async def _update_device(
        self, request: api_pb2.UpdateDeviceRequest
    ) -> api_pb2.UpdateDeviceResponse:
        await self._devices.update_device(device_from_pb(request.device))
        return api_pb2.UpdateDeviceResponse()

    async def _remove_device(
        self, request: api_pb2.RemoveDeviceRequest
    ) -> api_pb2.RemoveDeviceResponse:
        await self._devices.remove_device(
            check_namespace(request.deviceNamespace, "deviceNamespace"),
            check_name(request.deviceName, "deviceName"),
        )
        return api_pb2.RemoveDeviceResponse()

    async def _create_model(
        self, request: api_pb2.CreateDeviceModelRequest
    ) -> api_pb2.CreateDeviceModelResponse:
        model = model_from_pb(request.model, protocol=self._protocol)
        await self._devices.put_model(model)
        meta = model["metadata"]
        return api_pb2.CreateDeviceModelResponse(
            deviceModelName=meta["name"], deviceModelNamespace=meta["namespace"]
        )

    async def _update_model(
        self, request: api_pb2.UpdateDeviceModelRequest
    ) -> api_pb2.UpdateDeviceModelResponse:
        await self._devices.put_model(model_from_pb(request.model, protocol=self._protocol))
        return api_pb2.UpdateDeviceModelResponse()

    async def _remove_model(
        self, request: api_pb2.RemoveDeviceModelRequest
    ) -> api_pb2.RemoveDeviceModelResponse:
        await self._devices.remove_model(
            check_namespace(request.modelNamespace, "modelNamespace"),
            check_name(request.modelName, "modelName"),
        )
        return api_pb2.RemoveDeviceModelResponse()

    async def _get_device(self, request: api_pb2.GetDeviceRequest) -> api_pb2.GetDeviceResponse:
        device = self._devices.get_device(
            check_namespace(request.deviceNamespace, "deviceNamespace"),
            check_name(request.deviceName, "deviceName"),
        )
        return api_pb2.GetDeviceResponse(device=device_to_pb(device))
