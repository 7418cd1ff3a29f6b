"""The protocol plug-point of a mapper: one Driver per device (kubeedge.md §5.6).

A driver knows one protocol and nothing of DMI: the runtime (``twinning``) decides when to
read, write and ask for the device's state, and reports to EdgeCore.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

__all__ = ["OFFLINE", "ONLINE", "Driver", "DriverError"]

ONLINE = "online"
OFFLINE = "offline"


class DriverError(Exception):
    """The device did not answer, or answered with an error."""


class Driver(ABC):
    """Talks to one device. Built with the Device as Kubernetes JSON (``self.device``);
    ``self.config`` is its ``spec.protocol.configData``. Raise ValueError from ``__init__`` for
    a device the driver cannot serve: its registration is refused with that message.

    The runtime calls ``connect`` once, then ``read``/``write``/``state`` one at a time, and
    ``close`` at the end. ``read`` and ``write`` get a visitor::

        {"propertyName": str,
         "type": str,          # the model's property type: INT, FLOAT, DOUBLE, BOOLEAN, STRING...
         "accessMode": str,    # ReadWrite or ReadOnly
         "protocolName": str,  # the property's visitors.protocolName
         "configData": dict}   # the property's visitors.configData

    and exchange Python values (int, float, bool, str) of that type. Raise DriverError when the
    device does not answer; ``state`` then says whether it is reachable ("online", "offline",
    or any of KubeEdge's device states)."""

    def __init__(self, device: Mapping[str, Any]) -> None:
        self.device = device
        protocol = (device.get("spec") or {}).get("protocol") or {}
        self.config: dict[str, Any] = dict(protocol.get("configData") or {})

    @abstractmethod
    async def connect(self) -> None: ...

    @abstractmethod
    async def read(self, visitor: dict[str, Any]) -> Any: ...

    @abstractmethod
    async def write(self, visitor: dict[str, Any], value: Any) -> None: ...

    @abstractmethod
    async def state(self) -> str: ...

    @abstractmethod
    async def close(self) -> None: ...
