"""Kubernetes JSON <-> DMI messages, as KubeEdge converts them (kubeedge.md §5.1, §5.5).

EdgeCore holds Devices and DeviceModels as the API server serves them
(``devices.kubeedge.io/v1beta1``); DMI carries them as protobuf. The mapping is KubeEdge's
(``dtcommon.ConvertDevice``): fields are matched by name case-insensitively, as Go's
encoding/json matches them, so ``pushMethod.http.hostName`` lands in ``hostname`` and back.
The free-form ``configData`` objects travel as ``map<string, Any>``, each value packed in a
google.protobuf wrapper: strings as StringValue, booleans as BoolValue, integers as Int64Value,
other numbers as FloatValue (KubeEdge packs every JSON number as FloatValue; Go mappers decode
Int32/Int64/Float/Bool/String wrappers). Nested objects and lists, which KubeEdge refuses, go as
google.protobuf.Struct/ListValue: our mappers read them, Go mappers skip the key.

Everything read from a peer is checked; bad input raises ValueError naming the field.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import grpc

# protobuf ships no type information; its generated classes are typed by api_pb2.pyi.
from google.protobuf import json_format, struct_pb2, wrappers_pb2
from google.protobuf.message import DecodeError

from . import api_pb2

__all__ = [
    "API_VERSION",
    "DEVICE_STATES",
    "MAX_MESSAGE_BYTES",
    "MapperInfo",
    "check_name",
    "check_namespace",
    "config_from_pb",
    "config_to_pb",
    "device_from_pb",
    "device_to_pb",
    "model_from_pb",
    "model_to_pb",
    "status_of",
    "twins_from_pb",
    "twins_to_pb",
]

API_VERSION = "devices.kubeedge.io/v1beta1"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # both DMI servers refuse bigger requests
# KubeEdge's states, plus the upper-case ones older mapper-framework releases send.
DEVICE_STATES = frozenset(
    {"ok", "online", "offline", "unhealthy", "unknown", "error", "disconnected"}
)

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_TWIN_KEY = re.compile(r"[a-zA-Z0-9\-_.,:/@#]{1,128}")  # KubeEdge's ValidateTwinKey
_PROTOCOL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_MAX_TWIN_VALUE = 512  # bytes, KubeEdge's twin value limit
_MAX_METADATA = 32
_MAX_TEXT = 4096

# Messages whose only field is ``map<string, Any> data``: in Kubernetes JSON they are the
# free-form object itself, not {"data": {...}}.
_ANY_MAPS = frozenset({"v1beta1.CustomizedValue", "v1beta1.AnomalyDetection"})
# DMI field names whose Kubernetes JSON spelling differs by more than case.
_K8S_NAMES = {
    "hostname": "hostName",
    "requestpath": "requestPath",
    "tdengine": "TDEngine",
    "tdEngineClientConfig": "TDEngineClientConfig",
    "dbname": "dbName",
}


# -- names and statuses ----------------------------------------------------------------------


def check_name(value: Any, what: str) -> str:
    """A Kubernetes object name (DNS-1123 subdomain), or ValueError."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} is required")
    if len(value) > 253 or not _DNS_SUBDOMAIN.fullmatch(value):
        raise ValueError(f"{what} {value[:64]!r} is not a valid name")
    return value


def check_namespace(value: Any, what: str) -> str:
    """A namespace (DNS-1123 label); empty means "default", as pre-v1beta1 mappers send it."""
    if value in (None, ""):
        return "default"
    if not isinstance(value, str) or len(value) > 63 or not _DNS_LABEL.fullmatch(value):
        raise ValueError(f"{what} {str(value)[:64]!r} is not a valid namespace")
    return value


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status a handler's exception is answered with."""
    if isinstance(exc, ValueError | DecodeError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc) or "invalid request"
    if isinstance(exc, LookupError):
        # str(KeyError("x")) quotes its argument; the argument itself reads better
        message = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
        return grpc.StatusCode.NOT_FOUND, message or "not found"
    return grpc.StatusCode.INTERNAL, "internal error"


# -- MapperInfo --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class MapperInfo:
    """A mapper as it registers: ``address`` is the Unix socket of its DeviceMapperService.
    Checked when made: ValueError for a missing name, protocol or address."""

    name: str
    version: str = ""
    api_version: str = ""
    protocol: str
    address: str
    state: str = ""

    def __post_init__(self) -> None:
        for key, value in asdict(self).items():
            if not isinstance(value, str):
                raise ValueError(f"mapper.{key}: expected a string, got {_shown(value)}")
        if not self.name or len(self.name) > 253 or not self.name.isprintable():
            raise ValueError("mapper.name is required (printable, at most 253 characters)")
        if not _PROTOCOL.fullmatch(self.protocol):
            raise ValueError(f"mapper.protocol {self.protocol[:64]!r} is not a protocol name")
        if not self.address or len(self.address) > _MAX_TEXT or "\0" in self.address:
            raise ValueError("mapper.address must be the mapper's Unix socket path")
        for key in ("version", "api_version", "state"):
            if len(getattr(self, key)) > 253:
                raise ValueError(f"mapper.{key} is too long")

    def to_json(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MapperInfo:
        obj = _object(data, "mapper")
        return cls(**{k: obj.get(k, "") for k in cls.__dataclass_fields__})

    def to_pb(self) -> api_pb2.MapperInfo:
        return api_pb2.MapperInfo(
            name=self.name,
            version=self.version,
            api_version=self.api_version,
            protocol=self.protocol,
            address=self.address.encode(),
            state=self.state,
        )

    @classmethod
    def from_pb(cls, msg: api_pb2.MapperInfo) -> MapperInfo:
        try:
            address = msg.address.decode()
        except UnicodeDecodeError:
            raise ValueError("mapper.address is not UTF-8") from None
        return cls(
            name=msg.name,
            version=msg.version,
            api_version=msg.api_version,
            protocol=msg.protocol,
            address=address,
            state=msg.state,
        )


# -- Devices and DeviceModels ------------------------------------------------------------------


def device_to_pb(device: Mapping[str, Any]) -> api_pb2.Device:
    """A Kubernetes Device (JSON) as DMI sends it."""
    obj = _object(device, "device")
    meta = _object(obj.get("metadata"), "metadata")
    spec = _object(obj.get("spec") or {}, "spec")
    msg = api_pb2.Device(
        name=check_name(meta.get("name"), "metadata.name"),
        namespace=check_namespace(meta.get("namespace"), "metadata.namespace"),
    )
    msg.spec.SetInParent()
    ref = spec.get("deviceModelRef")
    if ref is not None:
        msg.spec.deviceModelReference = _string(
            _object(ref, "spec.deviceModelRef").get("name", ""), "spec.deviceModelRef.name"
        )
    if spec.get("protocol") is not None:
        _fill(msg.spec.protocol, spec["protocol"], "spec.protocol")
    for i, prop in enumerate(_array(spec.get("properties") or [], "spec.properties")):
        where = f"spec.properties[{i}]"
        item = msg.spec.properties.add()
        _fill(item, prop, where)
        if not item.name:
            raise ValueError(f"{where}.name is required")
        # Go mappers dereference these without a nil check: always send them.
        item.desired.SetInParent()
        item.visitors.configData.SetInParent()
    for i, method in enumerate(_array(spec.get("methods") or [], "spec.methods")):
        _fill(msg.spec.methods.add(), method, f"spec.methods[{i}]")
    if obj.get("status") is not None:
        _fill(msg.status, obj["status"], "status")
    return msg


def device_from_pb(msg: api_pb2.Device) -> dict[str, Any]:
    """A DMI Device as Kubernetes JSON (``spec.nodeName`` does not travel over DMI)."""
    spec: dict[str, Any] = {}
    if msg.spec.deviceModelReference:
        spec["deviceModelRef"] = {"name": msg.spec.deviceModelReference}
    if msg.spec.HasField("protocol"):
        spec["protocol"] = _dump(msg.spec.protocol, "spec.protocol")
    names: set[str] = set()
    properties = []
    for i, prop in enumerate(msg.spec.properties):
        if not prop.name or prop.name in names:
            raise ValueError(f"spec.properties[{i}].name is missing or repeated")
        names.add(prop.name)
        properties.append(_dump(prop, f"spec.properties[{i}]"))
    if properties:
        spec["properties"] = properties
    if msg.spec.methods:
        spec["methods"] = [_dump(m, f"spec.methods[{i}]") for i, m in enumerate(msg.spec.methods)]
    out: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "Device",
        "metadata": {
            "name": check_name(msg.name, "device name"),
            "namespace": check_namespace(msg.namespace, "device namespace"),
        },
        "spec": _pruned(spec),
    }
    if msg.HasField("status"):
        out["status"] = _dump(msg.status, "status")
    return out


def model_to_pb(model: Mapping[str, Any]) -> api_pb2.DeviceModel:
    """A Kubernetes DeviceModel (JSON) as DMI sends it; ``spec.protocol`` does not travel."""
    obj = _object(model, "model")
    meta = _object(obj.get("metadata"), "metadata")
    spec = _object(obj.get("spec") or {}, "spec")
    msg = api_pb2.DeviceModel(
        name=check_name(meta.get("name"), "metadata.name"),
        namespace=check_namespace(meta.get("namespace"), "metadata.namespace"),
    )
    msg.spec.SetInParent()
    for i, prop in enumerate(_array(spec.get("properties") or [], "spec.properties")):
        item = msg.spec.properties.add()
        _fill(item, prop, f"spec.properties[{i}]")
        if not item.name:
            raise ValueError(f"spec.properties[{i}].name is required")
    return msg


def model_from_pb(msg: api_pb2.DeviceModel, *, protocol: str = "") -> dict[str, Any]:
    """A DMI DeviceModel as Kubernetes JSON; ``protocol`` restores ``spec.protocol``."""
    spec: dict[str, Any] = {}
    if protocol:
        spec["protocol"] = protocol
    properties = []
    for i, prop in enumerate(msg.spec.properties):
        if not prop.name:
            raise ValueError(f"spec.properties[{i}].name is required")
        properties.append(_dump(prop, f"spec.properties[{i}]"))
    if properties:
        spec["properties"] = properties
    return {
        "apiVersion": API_VERSION,
        "kind": "DeviceModel",
        "metadata": {
            "name": check_name(msg.name, "model name"),
            "namespace": check_namespace(msg.namespace, "model namespace"),
        },
        "spec": spec,
    }


# -- twins --------------------------------------------------------------------------------------


def twins_to_pb(twins: Sequence[Mapping[str, Any]]) -> list[api_pb2.Twin]:
    """``[{"propertyName", "reported": {...}, "observedDesired": {...}}]`` as DMI Twins."""
    out = []
    for i, twin in enumerate(_array(twins, "twins")):
        msg = api_pb2.Twin()
        _fill(msg, twin, f"twins[{i}]")
        # KubeEdge's EdgeCore dereferences both without a nil check: always send them.
        msg.reported.SetInParent()
        msg.observedDesired.SetInParent()
        out.append(msg)
    return out


def twins_from_pb(twins: Iterable[api_pb2.Twin]) -> list[dict[str, Any]]:
    """DMI Twins as JSON, each with both ``reported`` and ``observedDesired``; checked against
    KubeEdge's twin limits (property names as twin keys, values under 512 bytes)."""
    out = []
    for i, twin in enumerate(twins):
        if not _TWIN_KEY.fullmatch(twin.propertyName):
            raise ValueError(f"twins[{i}].propertyName {twin.propertyName[:64]!r} is not valid")
        out.append(
            {
                "propertyName": twin.propertyName,
                "reported": _twin_property(twin.reported, f"twins[{i}].reported"),
                "observedDesired": _twin_property(
                    twin.observedDesired, f"twins[{i}].observedDesired"
                ),
            }
        )
    return out


def _twin_property(msg: api_pb2.TwinProperty, where: str) -> dict[str, Any]:
    if len(msg.value.encode()) > _MAX_TWIN_VALUE:
        raise ValueError(f"{where}.value is longer than {_MAX_TWIN_VALUE} bytes")
    if len(msg.metadata) > _MAX_METADATA:
        raise ValueError(f"{where}.metadata has more than {_MAX_METADATA} entries")
    for key, value in msg.metadata.items():
        if len(key) > 128 or len(value) > _MAX_TWIN_VALUE:
            raise ValueError(f"{where}.metadata[{key[:64]!r}] is too long")
    return {"value": msg.value, "metadata": dict(msg.metadata)}


# -- free-form configData ------------------------------------------------------------------------


def config_to_pb(data: Mapping[str, Any]) -> api_pb2.CustomizedValue:
    """A free-form object as KubeEdge's CustomizedValue."""
    msg = api_pb2.CustomizedValue()
    _pack(msg.data, _object(data, "configData"), "configData")
    return msg


def config_from_pb(msg: api_pb2.CustomizedValue) -> dict[str, Any]:
    """A CustomizedValue as the free-form object it stands for."""
    return _unpack(msg.data, "configData")


def _pack(target: Any, data: Mapping[str, Any], where: str) -> None:
    for key, value in data.items():
        if not isinstance(key, str):
            raise ValueError(f"{where} has a non-string key {key!r}")
        target[key].Pack(_wrapped(value, f"{where}.{key}"))


def _wrapped(value: Any, where: str) -> Any:
    if isinstance(value, bool):
        return wrappers_pb2.BoolValue(value=value)
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise ValueError(f"{where}: {value} does not fit in 64 bits")
        return wrappers_pb2.Int64Value(value=value)
    if isinstance(value, float):
        try:
            struct.pack("<f", value)
        except OverflowError:
            raise ValueError(f"{where}: {value} does not fit in a float") from None
        return wrappers_pb2.FloatValue(value=value)
    if isinstance(value, str):
        return wrappers_pb2.StringValue(value=value)
    try:
        if isinstance(value, Mapping):
            packed = struct_pb2.Struct()
            packed.update(value)
            return packed
        if isinstance(value, list | tuple):
            listed = struct_pb2.ListValue()
            listed.extend(value)
            return listed
        if value is None:
            return struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    raise ValueError(f"{where}: a {type(value).__name__} cannot travel as configData")


_WRAPPERS: dict[str, Any] = {
    "google.protobuf.StringValue": wrappers_pb2.StringValue,
    "google.protobuf.BoolValue": wrappers_pb2.BoolValue,
    "google.protobuf.Int32Value": wrappers_pb2.Int32Value,
    "google.protobuf.Int64Value": wrappers_pb2.Int64Value,
    "google.protobuf.UInt32Value": wrappers_pb2.UInt32Value,
    "google.protobuf.UInt64Value": wrappers_pb2.UInt64Value,
    "google.protobuf.FloatValue": wrappers_pb2.FloatValue,
    "google.protobuf.DoubleValue": wrappers_pb2.DoubleValue,
    "google.protobuf.Struct": struct_pb2.Struct,
    "google.protobuf.ListValue": struct_pb2.ListValue,
    "google.protobuf.Value": struct_pb2.Value,
}


def _unpack(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    return {key: _unwrapped(value, f"{where}.{key}") for key, value in data.items()}


def _unwrapped(packed: Any, where: str) -> Any:
    type_name = packed.type_url.rpartition("/")[2]
    kind = _WRAPPERS.get(type_name)
    if kind is None:
        raise ValueError(f"{where}: unsupported type {type_name[:100]!r}")
    msg = kind()
    try:
        msg.ParseFromString(packed.value)
    except DecodeError as exc:
        raise ValueError(f"{where}: malformed {type_name}: {exc}") from None
    if type_name == "google.protobuf.FloatValue":
        return _number(_short_float32(msg.value))
    if type_name == "google.protobuf.DoubleValue":
        return _number(msg.value)
    if kind in (struct_pb2.Struct, struct_pb2.ListValue, struct_pb2.Value):
        return _numbers(json_format.MessageToDict(msg))
    return msg.value


def _short_float32(value: float) -> float:
    """The shortest decimal with the same float32 bits: FloatValue(0.1) reads back as 0.1."""
    bits = struct.pack("<f", value)
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack("<f", candidate) == bits:
            return candidate
    return value


def _number(value: float) -> float | int:
    # Go mappers read config through a JSON round trip, which prints 502.0 as 502; so do we.
    if value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _numbers(value: Any) -> Any:
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


# -- Kubernetes JSON <-> messages, field by field -----------------------------------------------


def _fill(msg: Any, data: Any, where: str) -> None:
    """Sets msg's fields from a JSON object, matching names case-insensitively as Go does.
    Unknown keys are skipped (as Go does); null means unset."""
    obj = _object(data, where)
    if msg.DESCRIPTOR.full_name in _ANY_MAPS:
        _pack(msg.data, obj, where)
        return
    fields = {f.name.lower(): f for f in msg.DESCRIPTOR.fields}
    for key, value in obj.items():
        field = fields.get(key.lower()) if isinstance(key, str) else None
        if field is None or value is None:
            continue
        at = f"{where}.{key}"
        target = getattr(msg, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for k, v in _object(value, at).items():  # map<string, string>
                target[_string(k, at)] = _string(v, f"{at}.{k}")
        elif field.is_repeated:
            for i, item in enumerate(_array(value, at)):
                if field.type == field.TYPE_MESSAGE:
                    _fill(target.add(), item, f"{at}[{i}]")
                else:
                    target.append(_scalar(field, item, f"{at}[{i}]"))
        elif field.type == field.TYPE_MESSAGE:
            target.SetInParent()
            _fill(target, value, at)
        else:
            setattr(msg, field.name, _scalar(field, value, at))


def _scalar(field: Any, value: Any, where: str) -> Any:
    if field.type == field.TYPE_STRING:
        return _string(value, where)
    if field.type == field.TYPE_BOOL:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected a boolean, got {_shown(value)}")
        return value
    if field.type in (field.TYPE_INT32, field.TYPE_INT64):
        bits = 32 if field.type == field.TYPE_INT32 else 64
        if isinstance(value, bool) or not isinstance(value, int) or value.bit_length() >= bits:
            raise ValueError(f"{where}: expected an integer, got {_shown(value)}")
        return value
    if field.type == field.TYPE_BYTES:
        return _string(value, where).encode()
    raise ValueError(f"{where}: unsupported field type")  # pragma: no cover - not in the proto


def _dump(msg: Any, where: str) -> dict[str, Any]:
    """A message as Kubernetes JSON: set fields only, with Kubernetes' spellings."""
    if msg.DESCRIPTOR.full_name in _ANY_MAPS:
        return _unpack(msg.data, where)
    out: dict[str, Any] = {}
    for field, value in msg.ListFields():
        key = _K8S_NAMES.get(field.name, field.name)
        at = f"{where}.{key}"
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            out[key] = dict(value)
        elif field.is_repeated:
            out[key] = [
                _dump(v, f"{at}[{i}]") if field.type == field.TYPE_MESSAGE else v
                for i, v in enumerate(value)
            ]
        elif field.type == field.TYPE_MESSAGE:
            out[key] = _dump(value, at)
        elif field.type == field.TYPE_BYTES:
            out[key] = value.decode(errors="replace")
        else:
            out[key] = value
    return out


def _pruned(value: dict[str, Any]) -> dict[str, Any]:
    """Drops empty objects: DMI always sends ``desired`` and ``visitors`` even when unset."""
    out = {}
    for key, item in value.items():
        if isinstance(item, dict):
            item = _pruned(item)
            if not item:
                continue
        elif isinstance(item, list):
            item = [_pruned(v) if isinstance(v, dict) else v for v in item]
        out[key] = item
    return out


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected an object, got {_shown(value)}")
    return value


def _array(value: Any, where: str) -> Sequence[Any]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"{where}: expected a list, got {_shown(value)}")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a string, got {_shown(value)}")
    if len(value) > MAX_MESSAGE_BYTES:
        raise ValueError(f"{where} is too long")
    return value


def _shown(value: Any) -> str:
    return f"{type(value).__name__} {str(value)[:40]!r}" if value is not None else "null"
