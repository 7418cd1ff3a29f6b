"""EdgeCore's side of DMI, the Device Management Interface (kubeedge.md §5.5).

Mappers reach EdgeCore through ``DeviceManagerServer`` (gRPC on a Unix socket, by default
``/etc/kubeedge/dmi.sock``): they register, then report twin values and device states. EdgeCore
reaches each mapper through ``MapperClients``, one DeviceMapperService client per protocol name,
at the socket the mapper registered.

Both are thin adapters over plain data: the server turns each RPC into a call on a
``DeviceManagerHandler`` (EdgeCore's twin logic) with Kubernetes JSON, the clients turn calls
with Kubernetes JSON into RPCs. Peers are not trusted: requests are capped at 4 MiB, names,
states and twins are checked, and each device's reports are rate-limited (KubeEdge limits them
too), so a confused mapper gets a clear gRPC status and EdgeCore keeps serving.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import grpc

from ..apis.dmi import (
    DEVICE_MANAGER_SERVICE,
    DEVICE_MAPPER_SERVICE,
    DEVICE_STATES,
    MAX_MESSAGE_BYTES,
    MapperInfo,
    api_pb2,
    check_name,
    check_namespace,
    device_from_pb,
    device_to_pb,
    model_to_pb,
    twins_from_pb,
)
from ..apis.dmi.serving import Call, RateLimited, UnixServer

__all__ = [
    "DEFAULT_SOCKET",
    "DeviceManagerHandler",
    "DeviceManagerServer",
    "MapperCallError",
    "MapperClients",
    "MapperInfo",
]

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/etc/kubeedge/dmi.sock"
CALL_TIMEOUT = 10.0  # seconds, KubeEdge's context for every DeviceMapperService call
_MAX_TWINS = 1000  # per report
_MAX_BUCKETS = 10_000  # rate-limit state kept for this many devices at most
# gRPC's reconnect back-off grows to 2 min by default; a restarted mapper is local and should
# be reachable again within a couple of seconds.
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


class DeviceManagerHandler(Protocol):
    """What EdgeCore does with each DeviceManagerService call.

    Raise ValueError for a request it refuses (answered INVALID_ARGUMENT with the message) and
    KeyError/LookupError for an unknown device (NOT_FOUND)."""

    async def mapper_registered(
        self, mapper: MapperInfo
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Records the mapper (and makes a client for it); returns the (DeviceModels, Devices),
        as Kubernetes JSON, of the devices whose protocol is ``mapper.protocol``."""
        ...

    async def device_status_reported(
        self, namespace: str, name: str, twins: list[dict[str, Any]]
    ) -> None:
        """``twins``: [{"propertyName", "reported": {"value", "metadata"},
        "observedDesired": {"value", "metadata"}}]."""
        ...

    async def device_state_reported(self, namespace: str, name: str, state: str) -> None:
        """``state`` is lower-case, one of apis.dmi.DEVICE_STATES."""
        ...


class _Buckets:
    """A token bucket per key: ``burst`` calls at once, then ``rate`` per second."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self._rate, self._burst, self._clock = rate, float(burst), clock
        self._state: collections.OrderedDict[tuple[str, ...], tuple[float, float]] = (
            collections.OrderedDict()
        )

    def take(self, key: tuple[str, ...]) -> bool:
        now = self._clock()
        tokens, stamp = self._state.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - stamp) * self._rate)
        allowed = tokens >= 1.0
        self._state[key] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._state) > _MAX_BUCKETS:
            self._state.popitem(last=False)  # the least recently heard device
        return allowed


class DeviceManagerServer:
    """DeviceManagerService on ``unix:<path>``, adapting each RPC to ``handler``.

    ``report_rate``/``report_burst``: each device may send ``report_burst`` reports of each kind
    at once, then ``report_rate`` a second (and each mapper as many registrations); beyond that
    it gets RESOURCE_EXHAUSTED."""

    def __init__(
        self,
        path: str,
        handler: DeviceManagerHandler,
        *,
        report_rate: float = 20.0,
        report_burst: int = 100,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._handler = handler
        self._buckets = _Buckets(report_rate, report_burst, clock)
        methods: dict[str, tuple[Any, Call]] = {
            "MapperRegister": (api_pb2.MapperRegisterRequest, self._mapper_register),
            "ReportDeviceStatus": (api_pb2.ReportDeviceStatusRequest, self._report_status),
            "ReportDeviceStates": (api_pb2.ReportDeviceStatesRequest, self._report_state),
        }
        self._server = UnixServer(path, DEVICE_MANAGER_SERVICE, methods)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, grace: float | None = None) -> None:
        await self._server.stop(grace)

    async def __aenter__(self) -> DeviceManagerServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _mapper_register(
        self, request: api_pb2.MapperRegisterRequest
    ) -> api_pb2.MapperRegisterResponse:
        mapper = MapperInfo.from_pb(request.mapper)
        self._admit("register", mapper.protocol, mapper.name)
        models, devices = await self._handler.mapper_registered(mapper)
        response = api_pb2.MapperRegisterResponse()
        if not request.withData:
            return response
        # One bad object must not keep the mapper from the rest (KubeEdge skips it too).
        for model in models:
            try:
                response.modelList.append(model_to_pb(model))
            except ValueError as exc:
                log.warning("DMI: not sending device model to %s: %s", mapper.name, exc)
        for device in devices:
            try:
                response.deviceList.append(device_to_pb(device))
            except ValueError as exc:
                log.warning("DMI: not sending device to %s: %s", mapper.name, exc)
        return response

    async def _report_status(
        self, request: api_pb2.ReportDeviceStatusRequest
    ) -> api_pb2.ReportDeviceStatusResponse:
        namespace, name = _device(request.deviceNamespace, request.deviceName)
        reported = request.reportedDevice.twins
        if not reported:
            raise ValueError("ReportDeviceStatus carries no twins")
        if len(reported) > _MAX_TWINS:
            raise ValueError(f"ReportDeviceStatus carries more than {_MAX_TWINS} twins")
        twins = twins_from_pb(reported)
        self._admit("status", namespace, name)
        # Shielded: a mapper's deadline must not cut a report between its store write and
        # its upstream message.
        await asyncio.shield(self._handler.device_status_reported(namespace, name, twins))
        return api_pb2.ReportDeviceStatusResponse()

    async def _report_state(
        self, request: api_pb2.ReportDeviceStatesRequest
    ) -> api_pb2.ReportDeviceStatesResponse:
        namespace, name = _device(request.deviceNamespace, request.deviceName)
        state = request.state.lower()
        if state not in DEVICE_STATES:
            raise ValueError(
                f"state {request.state[:64]!r} is not one of {', '.join(sorted(DEVICE_STATES))}"
            )
        self._admit("state", namespace, name)
        await asyncio.shield(self._handler.device_state_reported(namespace, name, state))
        return api_pb2.ReportDeviceStatesResponse()

    def _admit(self, kind: str, namespace: str, name: str) -> None:
        if not self._buckets.take((kind, namespace, name)):
            raise RateLimited(f"too many {kind} calls for {namespace}/{name}")


class MapperCallError(Exception):
    """A DeviceMapperService call failed; ``code`` is the gRPC status name ("UNAVAILABLE",
    "NOT_FOUND", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", ...)."""

    def __init__(self, protocol: str, method: str, code: str, details: str) -> None:
        super().__init__(f"mapper for {protocol!r}: {method} failed: {code}: {details}")
        self.protocol, self.method, self.code, self.details = protocol, method, code, details


class MapperClients:
    """A DeviceMapperService client per protocol name; the device's or model's protocol picks
    the mapper. Calls take Kubernetes JSON and give up after ``timeout`` seconds.

    Removals and GetDevice name only the object: the protocol is the one it was last sent with,
    or ``protocol=``, or the only mapper there is."""

    def __init__(self, *, timeout: float = CALL_TIMEOUT) -> None:
        self._timeout = timeout
        self._mappers: dict[str, MapperInfo] = {}
        self._channels: dict[str, Any] = {}
        self._routes: dict[tuple[str, str, str], str] = {}  # (kind, namespace, name) -> protocol

    @property
    def mappers(self) -> dict[str, MapperInfo]:
        return dict(self._mappers)

    async def add(self, mapper: MapperInfo) -> None:
        """Adds (or re-points) the client for ``mapper.protocol``."""
        old = self._mappers.get(mapper.protocol)
        self._mappers[mapper.protocol] = mapper
        if old is not None and old.address == mapper.address:
            return
        channel = self._channels.pop(mapper.protocol, None)
        if channel is not None:
            await channel.close()
        target = mapper.address if mapper.address.startswith("unix:") else f"unix:{mapper.address}"
        self._channels[mapper.protocol] = grpc.aio.insecure_channel(
            target,
            options=_CHANNEL_OPTIONS,
        )

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        self._mappers.clear()
        for channel in channels.values():
            await channel.close()

    async def register_device(self, device: Mapping[str, Any], model: Mapping[str, Any]) -> None:
        """Sends the model (CreateDeviceModel), then the device (RegisterDevice)."""
        protocol = _device_protocol(device)
        await self._send_model(protocol, model, create=True)
        request = api_pb2.RegisterDeviceRequest(device=device_to_pb(device))
        await self._call(protocol, "RegisterDevice", request, api_pb2.RegisterDeviceResponse)
        self._routes[("device", *_key(request.device))] = protocol

    async def update_device(self, device: Mapping[str, Any], model: Mapping[str, Any]) -> None:
        """Sends the model (UpdateDeviceModel), then the device (UpdateDevice)."""
        protocol = _device_protocol(device)
        await self._send_model(protocol, model, create=False)
        request = api_pb2.UpdateDeviceRequest(device=device_to_pb(device))
        await self._call(protocol, "UpdateDevice", request, api_pb2.UpdateDeviceResponse)
        self._routes[("device", *_key(request.device))] = protocol

    async def remove_device(
        self, namespace: str, name: str, *, protocol: str | None = None
    ) -> None:
        key = ("device", check_namespace(namespace, "namespace"), check_name(name, "name"))
        request = api_pb2.RemoveDeviceRequest(deviceNamespace=key[1], deviceName=key[2])
        await self._call(self._route(key, protocol), "RemoveDevice", request, None)
        self._routes.pop(key, None)

    async def create_device_model(self, model: Mapping[str, Any]) -> None:
        await self._send_model(_model_protocol(model), model, create=True)

    async def update_device_model(self, model: Mapping[str, Any]) -> None:
        await self._send_model(_model_protocol(model), model, create=False)

    async def remove_device_model(
        self, namespace: str, name: str, *, protocol: str | None = None
    ) -> None:
        key = ("model", check_namespace(namespace, "namespace"), check_name(name, "name"))
        request = api_pb2.RemoveDeviceModelRequest(modelNamespace=key[1], modelName=key[2])
        await self._call(self._route(key, protocol), "RemoveDeviceModel", request, None)
        self._routes.pop(key, None)

    async def get_device(
        self, namespace: str, name: str, *, protocol: str | None = None
    ) -> dict[str, Any]:
        """The device as the mapper holds it, ``status.twins`` carrying its latest values."""
        key = ("device", check_namespace(namespace, "namespace"), check_name(name, "name"))
        request = api_pb2.GetDeviceRequest(deviceNamespace=key[1], deviceName=key[2])
        response = await self._call(
            self._route(key, protocol), "GetDevice", request, api_pb2.GetDeviceResponse
        )
        return device_from_pb(response.device)

    async def _send_model(self, protocol: str, model: Mapping[str, Any], *, create: bool) -> None:
        pb = model_to_pb(model)
        if create:
            request = api_pb2.CreateDeviceModelRequest(model=pb)
            await self._call(protocol, "CreateDeviceModel", request, None)
        else:
            update = api_pb2.UpdateDeviceModelRequest(model=pb)
            await self._call(protocol, "UpdateDeviceModel", update, None)
        self._routes[("model", *_key(pb))] = protocol

    def _route(self, key: tuple[str, str, str], protocol: str | None) -> str:
        if protocol is not None:
            return protocol
        if key in self._routes:
            return self._routes[key]
        if len(self._mappers) == 1:
            return next(iter(self._mappers))
        raise LookupError(
            f"no mapper known for {key[0]} {key[1]}/{key[2]}: pass protocol= to choose one"
        )

    async def _call(self, protocol: str, method: str, request: Any, reply: Any) -> Any:
        channel = self._channels.get(protocol)
        if channel is None:
            raise LookupError(f"no mapper registered for protocol {protocol!r}")
        call = channel.unary_unary(
            f"/{DEVICE_MAPPER_SERVICE}/{method}",
            request_serializer=_serialized_request,
            # Nothing to read from most replies: they are empty or echo the request.
            response_deserializer=reply.FromString if reply is not None else None,
        )
        try:
            return await call(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            failure = (exc.code().name, exc.details() or "")
        # Raised outside the handler: chained to the gRPC error, it would keep the channel
        # (and grpc's poller thread) alive through the traceback.
        raise MapperCallError(protocol, method, *failure)


def _device(namespace: str, name: str) -> tuple[str, str]:
    return check_namespace(namespace, "deviceNamespace"), check_name(name, "deviceName")


def _key(message: Any) -> tuple[str, str]:
    return message.namespace, message.name


def _device_protocol(device: Mapping[str, Any]) -> str:
    protocol = (device.get("spec") or {}).get("protocol") or {}
    name = protocol.get("protocolName") if isinstance(protocol, Mapping) else None
    if not isinstance(name, str) or not name:
        raise ValueError("device has no spec.protocol.protocolName: no mapper can serve it")
    return name


def _model_protocol(model: Mapping[str, Any]) -> str:
    name = (model.get("spec") or {}).get("protocol")
    if not isinstance(name, str) or not name:
        raise ValueError("device model has no spec.protocol: no mapper can serve it")
    return name


def _serialized_request(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data
