"""Kubernetes JSON <-> DMI messages: KubeEdge's field numbers and conversions."""

from __future__ import annotations

import copy
import re
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, wrappers_pb2
from orbiter.orchestration.apis.dmi import (
    MapperInfo,
    api_pb2,
    config_from_pb,
    config_to_pb,
    device_from_pb,
    device_to_pb,
    model_from_pb,
    model_to_pb,
    status_of,
    twins_from_pb,
    twins_to_pb,
)

DEVICE: dict[str, Any] = {
    "apiVersion": "devices.kubeedge.io/v1beta1",
    "kind": "Device",
    "metadata": {"name": "plc-1", "namespace": "factory"},
    "spec": {
        "deviceModelRef": {"name": "plc-model"},
        "protocol": {
            "protocolName": "modbus",
            "configData": {
                "ip": "10.0.0.7",
                "port": 502,
                "slaveID": 1,
                "timeout": 1.5,
                "tls": False,
                "tags": {"line": "a", "ids": [1, 2]},
            },
        },
        "properties": [
            {
                "name": "temperature",
                "desired": {"value": "20", "metadata": {"timestamp": "1550049403598"}},
                "visitors": {
                    "protocolName": "modbus",
                    "configData": {"register": "HoldingRegister", "offset": 2, "scale": 0.1},
                },
                "reportCycle": 1000,
                "collectCycle": 500,
                "reportToCloud": True,
                "pushMethod": {
                    "http": {"hostName": "h", "port": 80, "requestPath": "/p", "timeout": 5},
                    "mqtt": {"address": "tcp://b:1883", "topic": "t", "qos": 1, "retained": True},
                    "otel": {"endpointURL": "http://o:4318/v1/metrics"},
                    "dbMethod": {
                        "influxdb2": {
                            "influxdb2ClientConfig": {"url": "u", "org": "o", "bucket": "b"},
                            "influxdb2DataConfig": {
                                "measurement": "m",
                                "tag": {"k": "v"},
                                "fieldKey": "f",
                            },
                        },
                        "redis": {"redisClientConfig": {"addr": "r:6379", "db": 1, "poolsize": 2}},
                        "TDEngine": {"TDEngineClientConfig": {"addr": "t:6041", "dbName": "d"}},
                        "mysql": {
                            "mysqlClientConfig": {"addr": "m", "database": "d", "userName": "u"}
                        },
                    },
                    "anomalyDetection": {"threshold": 3},
                },
            },
            {"name": "door", "visitors": {"protocolName": "modbus", "configData": {"offset": 1}}},
        ],
        "methods": [{"name": "reset", "description": "d", "propertyNames": ["temperature"]}],
    },
    "status": {
        "twins": [
            {
                "propertyName": "temperature",
                "reported": {"value": "21", "metadata": {"type": "int"}},
                "observedDesired": {"value": "20"},
            }
        ]
    },
}

MODEL: dict[str, Any] = {
    "apiVersion": "devices.kubeedge.io/v1beta1",
    "kind": "DeviceModel",
    "metadata": {"name": "plc-model", "namespace": "factory"},
    "spec": {
        "protocol": "modbus",
        "properties": [
            {
                "name": "temperature",
                "description": "in tenths",
                "type": "INT",
                "accessMode": "ReadWrite",
                "minimum": "0",
                "maximum": "100",
                "unit": "C",
            }
        ],
    },
}


def test_field_numbers_are_kubeedges() -> None:
    # A sample of the contract: names and numbers as in KubeEdge's v1beta1 api.proto.
    expected = {
        "MapperRegisterRequest": {"withData": 1, "mapper": 2},
        "MapperRegisterResponse": {"modelList": 1, "deviceList": 2},
        "MapperInfo": {
            "name": 1,
            "version": 2,
            "api_version": 3,
            "protocol": 4,
            "address": 5,
            "state": 6,
        },
        "Device": {"name": 1, "spec": 2, "status": 3, "namespace": 4},
        "DeviceSpec": {"deviceModelReference": 1, "protocol": 2, "properties": 3, "methods": 4},
        "DeviceProperty": {
            "name": 1,
            "desired": 2,
            "visitors": 3,
            "reportCycle": 4,
            "collectCycle": 5,
            "reportToCloud": 6,
            "pushMethod": 7,
        },
        "PushMethod": {"http": 1, "mqtt": 2, "dbMethod": 3, "otel": 4, "anomalyDetection": 5},
        "DeviceModel": {"name": 1, "spec": 2, "namespace": 3},
        "ModelProperty": {"name": 1, "type": 3, "accessMode": 4, "unit": 7},
        "ReportDeviceStatusRequest": {"deviceName": 1, "reportedDevice": 2, "deviceNamespace": 3},
        "ReportDeviceStatesRequest": {"deviceName": 1, "deviceNamespace": 2, "state": 3},
        "DeviceStatus": {"twins": 1, "reportToCloud": 2, "reportCycle": 3},
        "Twin": {"propertyName": 1, "observedDesired": 2, "reported": 3},
        "RemoveDeviceModelRequest": {"modelName": 1, "modelNamespace": 2},
        "CreateDeviceModelResponse": {"deviceModelName": 1, "deviceModelNamespace": 2},
    }
    for message, fields in expected.items():
        descriptor = getattr(api_pb2, message).DESCRIPTOR
        assert descriptor.full_name == f"v1beta1.{message}"
        assert {f: descriptor.fields_by_name[f].number for f in fields} == fields, message
    services = api_pb2.DESCRIPTOR.services_by_name
    assert [m.name for m in services["DeviceManagerService"].methods] == [
        "MapperRegister",
        "ReportDeviceStatus",
        "ReportDeviceStates",
    ]
    assert len(services["DeviceMapperService"].methods) == 7


def test_a_device_travels_and_comes_back() -> None:
    message = device_to_pb(DEVICE)
    # Through the wire and back, as a mapper would get it.
    back = device_from_pb(api_pb2.Device.FromString(message.SerializeToString()))
    expected = copy.deepcopy(DEVICE)
    assert back == expected


def test_a_device_is_packed_as_kubeedge_packs_it() -> None:
    message = device_to_pb(DEVICE)
    assert (message.name, message.namespace) == ("plc-1", "factory")
    assert message.spec.deviceModelReference == "plc-model"
    data = message.spec.protocol.configData.data
    assert data["ip"].type_url == "type.googleapis.com/google.protobuf.StringValue"
    assert data["port"].type_url.endswith("google.protobuf.Int64Value")
    assert data["timeout"].type_url.endswith("google.protobuf.FloatValue")
    assert data["tls"].type_url.endswith("google.protobuf.BoolValue")
    assert data["tags"].type_url.endswith("google.protobuf.Struct")
    temperature, door = message.spec.properties
    assert temperature.pushMethod.http.hostname == "h"  # matched case-insensitively, as Go
    assert temperature.pushMethod.dbMethod.tdengine.tdEngineClientConfig.dbname == "d"
    assert (temperature.reportCycle, temperature.collectCycle) == (1000, 500)
    # Go mappers dereference these unchecked: present even when the Device has none.
    assert door.HasField("desired") and door.visitors.HasField("configData")
    assert "nodeName" not in str(message)


def test_kubeedges_packing_reads_back() -> None:
    # KubeEdge packs every JSON number as a FloatValue; older ones Int32Value.
    packed = api_pb2.CustomizedValue()
    packed.data["port"].Pack(wrappers_pb2.FloatValue(value=502.0))
    packed.data["scale"].Pack(wrappers_pb2.FloatValue(value=0.1))
    packed.data["slaveID"].Pack(wrappers_pb2.Int32Value(value=3))
    packed.data["name"].Pack(wrappers_pb2.StringValue(value="x"))
    assert config_from_pb(packed) == {"port": 502, "scale": 0.1, "slaveID": 3, "name": "x"}
    assert isinstance(config_from_pb(packed)["port"], int)
    assert config_from_pb(config_to_pb({"n": None, "l": [1, "a"]})) == {"n": None, "l": [1, "a"]}


def test_a_model_travels_without_its_protocol() -> None:
    message = model_to_pb({**MODEL, "spec": {**MODEL["spec"], "visitors": {"ignored": 1}}})
    assert not message.spec.commands
    assert model_from_pb(message, protocol="modbus") == MODEL
    assert "protocol" not in model_from_pb(message)["spec"]


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (lambda d: d["metadata"].pop("name"), "metadata.name is required"),
        (lambda d: d["metadata"].update(name="Bad_Name"), "not a valid name"),
        (lambda d: d["metadata"].update(namespace="x" * 64), "not a valid namespace"),
        (lambda d: d["spec"]["properties"][0].update(reportCycle="1000"), "reportCycle"),
        (lambda d: d["spec"]["properties"][0].update(reportToCloud=1), "expected a boolean"),
        (lambda d: d["spec"]["properties"][1].pop("name"), "properties[1].name is required"),
        (lambda d: d["spec"].update(properties={"a": 1}), "expected a list"),
        (lambda d: d["spec"]["protocol"]["configData"].update({"big": 2**70}), "64 bits"),
        (lambda d: d["spec"]["protocol"]["configData"].update({"set": {1}}), "cannot travel"),
        (lambda d: d["spec"]["properties"][0]["desired"].update(value=20), "expected a string"),
        (lambda d: d["spec"]["properties"][0]["pushMethod"]["mqtt"].update(qos=2**40), "qos"),
    ],
)
def test_bad_devices_are_refused_with_the_field_named(change: Any, complaint: str) -> None:
    broken = copy.deepcopy(DEVICE)
    change(broken)
    with pytest.raises(ValueError, match=re.escape(complaint)):
        device_to_pb(broken)


def test_bad_messages_are_refused() -> None:
    nameless = api_pb2.Device(namespace="default")
    with pytest.raises(ValueError, match="device name is required"):
        device_from_pb(nameless)
    twice = device_to_pb(DEVICE)
    twice.spec.properties[1].name = "temperature"
    with pytest.raises(ValueError, match="missing or repeated"):
        device_from_pb(twice)
    odd = device_to_pb(DEVICE)
    odd.spec.protocol.configData.data["ip"].CopyFrom(
        any_pb2.Any(type_url="type.googleapis.com/acme.Secret", value=b"")
    )
    with pytest.raises(
        ValueError, match=re.escape("configData.ip: unsupported type 'acme.Secret'")
    ):
        device_from_pb(odd)
    corrupt = device_to_pb(DEVICE)
    corrupt.spec.protocol.configData.data["ip"].value = b"\x0a\x09ab"
    with pytest.raises(ValueError, match=re.escape("malformed google.protobuf.StringValue")):
        device_from_pb(corrupt)
    # No namespace (pre-v1beta1 mappers send none) means "default".
    assert device_from_pb(api_pb2.Device(name="d"))["metadata"]["namespace"] == "default"


def test_twins_carry_both_values_and_respect_kubeedges_limits() -> None:
    twins = [{"propertyName": "temperature", "reported": {"value": "21", "metadata": {"t": "1"}}}]
    message = twins_to_pb(twins)
    assert message[0].HasField("observedDesired")  # EdgeCore dereferences it unchecked
    assert twins_from_pb(message) == [
        {
            "propertyName": "temperature",
            "reported": {"value": "21", "metadata": {"t": "1"}},
            "observedDesired": {"value": "", "metadata": {}},
        }
    ]
    for bad, complaint in [
        (api_pb2.Twin(propertyName="has space"), "propertyName"),
        (api_pb2.Twin(propertyName=""), "propertyName"),
        (api_pb2.Twin(propertyName="p", reported=api_pb2.TwinProperty(value="x" * 513)), "512"),
        (
            api_pb2.Twin(
                propertyName="p",
                observedDesired=api_pb2.TwinProperty(metadata={str(i): "" for i in range(33)}),
            ),
            "entries",
        ),
    ]:
        with pytest.raises(ValueError, match=complaint):
            twins_from_pb([bad])


def test_mapper_info_is_checked_and_persists() -> None:
    info = MapperInfo(
        name="modbus-mapper",
        version="v1",
        api_version="v1.0.0",
        protocol="modbus",
        address="/etc/kubeedge/modbus.sock",
        state="ok",
    )
    assert MapperInfo.from_json(info.to_json()) == info
    assert MapperInfo.from_pb(api_pb2.MapperInfo.FromString(info.to_pb().SerializeToString())) == (
        info
    )
    assert info.to_pb().address == b"/etc/kubeedge/modbus.sock"
    refused: list[tuple[dict[str, Any], str]] = [
        ({"protocol": "modbus", "address": "/s"}, "name is required"),
        ({"name": "m", "address": "/s"}, "not a protocol name"),
        ({"name": "m", "protocol": "mod bus", "address": "/s"}, "not a protocol name"),
        ({"name": "m", "protocol": "modbus"}, "address"),
        ({"name": "m", "protocol": "modbus", "address": "/s", "state": 1}, "expected a string"),
    ]
    for bad, complaint in refused:
        with pytest.raises(ValueError, match=complaint):
            MapperInfo.from_json(bad)
    with pytest.raises(ValueError, match="UTF-8"):
        MapperInfo.from_pb(api_pb2.MapperInfo(name="m", protocol="p", address=b"\xff"))


def test_exceptions_map_to_statuses() -> None:
    assert status_of(ValueError("bad")) == (grpc.StatusCode.INVALID_ARGUMENT, "bad")
    assert status_of(KeyError("device d/x")) == (grpc.StatusCode.NOT_FOUND, "device d/x")
    assert status_of(RuntimeError("secret")) == (grpc.StatusCode.INTERNAL, "internal error")
