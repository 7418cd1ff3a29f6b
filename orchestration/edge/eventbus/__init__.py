"""EventBus: the node's MQTT broker (embedded by default) and its bridge to DeviceTwin and the
cloud router (kubeedge.md §5.4)."""

from .broker import Broker
from .packets import ConnectRefused, PacketTooLarge, ProtocolError

__all__ = ["Broker", "ConnectRefused", "PacketTooLarge", "ProtocolError"]
