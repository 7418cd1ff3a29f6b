"""A mapper's client of EdgeCore's DeviceManagerService (kubeedge.md §5.5): register, then
report twins and device states."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from ..apis.dmi import (
    DEVICE_MANAGER_SERVICE,
    MAX_MESSAGE_BYTES,
    MapperInfo,
    api_pb2,
    device_from_pb,
    model_from_pb,
    twins_to_pb,
)

__all__ = ["EdgeCoreClient", "EdgeCoreError"]

log = logging.getLogger(__name__)

# Codes that mean "EdgeCore is not there yet (or busy)": registration tries again.
_TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)
# gRPC's own reconnect back-off starts at 1 s and grows to 2 min; EdgeCore is local, and a
# mapper should notice it is back within a couple of seconds.
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 16 * MAX_MESSAGE_BYTES),  # a big node's device list
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


class EdgeCoreError(Exception):
    """EdgeCore refused or did not answer a call; ``code`` is the gRPC status name."""

    def __init__(self, method: str, code: str, details: str) -> None:
        super().__init__(f"EdgeCore {method}: {code}: {details}")
        self.method, self.code, self.details = method, code, details


class EdgeCoreClient:
    """DeviceManagerService at ``unix:<socket_path>``."""

    def __init__(
        self,
        socket_path: str,
        *,
        timeout: float = 5.0,
        backoff: tuple[float, float] = (0.1, 5.0),
    ) -> None:
        self.socket_path = socket_path
        self._timeout = timeout
        self._backoff = backoff
        target = socket_path if socket_path.startswith("unix:") else f"unix:{socket_path}"
        self._channel: Any = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)

    async def close(self) -> None:
        channel, self._channel = self._channel, None  # drop it: grpc's poller lives while it does
        if channel is not None:
            await channel.close()

    async def register(
        self, mapper: MapperInfo
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """MapperRegister, trying again with back-off until EdgeCore answers. Returns the
        (DeviceModels, Devices) to run, as Kubernetes JSON; EdgeCoreError if it refuses."""
        request = api_pb2.MapperRegisterRequest(withData=True, mapper=mapper.to_pb())
        delay, longest = self._backoff
        while True:
            try:
                response = await self._call(
                    "MapperRegister", request, api_pb2.MapperRegisterResponse
                )
                break
            except EdgeCoreError as exc:
                if grpc.StatusCode[exc.code] not in _TRANSIENT:
                    raise
                log.info(
                    "EdgeCore at %s not answering (%s); registering again in %.1fs",
                    self.socket_path,
                    exc.code,
                    delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, longest)
        log.info("registered %s with EdgeCore: %d devices", mapper.name, len(response.deviceList))
        return _models(response.modelList, mapper.protocol), _devices(response.deviceList)

    async def report_status(
        self, namespace: str, name: str, twins: Sequence[Mapping[str, Any]]
    ) -> None:
        """ReportDeviceStatus: [{"propertyName", "reported", "observedDesired"}]."""
        request = api_pb2.ReportDeviceStatusRequest(
            deviceNamespace=namespace,
            deviceName=name,
            reportedDevice=api_pb2.DeviceStatus(twins=twins_to_pb(twins)),
        )
        await self._call("ReportDeviceStatus", request, api_pb2.ReportDeviceStatusResponse)

    async def report_state(self, namespace: str, name: str, state: str) -> None:
        request = api_pb2.ReportDeviceStatesRequest(
            deviceNamespace=namespace, deviceName=name, state=state
        )
        await self._call("ReportDeviceStates", request, api_pb2.ReportDeviceStatesResponse)

    async def _call(self, method: str, request: Any, reply: Any) -> Any:
        if self._channel is None:
            raise EdgeCoreError(method, "CANCELLED", "client closed")
        call = self._channel.unary_unary(
            f"/{DEVICE_MANAGER_SERVICE}/{method}",
            request_serializer=lambda message: message.SerializeToString(),
            response_deserializer=reply.FromString,
        )
        try:
            return await call(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            failure = (exc.code().name, exc.details() or "")
        # Raised outside the handler: chained to the gRPC error, it would keep the channel
        # (and grpc's poller thread) alive through the traceback.
        raise EdgeCoreError(method, *failure)


def _models(messages: Sequence[api_pb2.DeviceModel], protocol: str) -> list[dict[str, Any]]:
    out = []
    for message in messages:
        try:
            out.append(model_from_pb(message, protocol=protocol))
        except ValueError as exc:
            log.warning("EdgeCore sent a device model we cannot use: %s", exc)
    return out


def _devices(messages: Sequence[api_pb2.Device]) -> list[dict[str, Any]]:
    out = []
    for message in messages:
        try:
            out.append(device_from_pb(message))
        except ValueError as exc:
            log.warning("EdgeCore sent a device we cannot use: %s", exc)
    return out
