"""Mappers: the SDK a protocol driver plugs into, and the Modbus TCP mapper (kubeedge.md §5.6).

A protocol is one ``Driver`` subclass; ``Mapper`` (or ``run_mapper`` as a program's main) does
the rest: DMI server and client, registration, twin loops. The Modbus TCP mapper is
``orbiter.orchestration.mappers.modbus`` (not imported here: it runs with ``python -m``).
"""

from .configuring import MapperConfig, parse_args
from .driving import OFFLINE, ONLINE, Driver, DriverError
from .registering import EdgeCoreClient, EdgeCoreError
from .running import DriverFactory, Mapper, run_mapper
from .serving import DeviceSet, MapperServer
from .twinning import DEFAULT_CYCLE_MS, DeviceTwin, Reporter, parse_value, value_text

__all__ = [
    "DEFAULT_CYCLE_MS",
    "OFFLINE",
    "ONLINE",
    "DeviceSet",
    "DeviceTwin",
    "Driver",
    "DriverError",
    "DriverFactory",
    "EdgeCoreClient",
    "EdgeCoreError",
    "Mapper",
    "MapperConfig",
    "MapperServer",
    "Reporter",
    "parse_args",
    "parse_value",
    "run_mapper",
    "value_text",
]
