"""What DeviceTwin tells the cloud (kubeedge.md §5.2): one outbox key per thing reported on.

``device/<ns>/<name>/twin/<property>`` carries that property's whole current state in a
``twin/edge_updated`` message, and ``device/<ns>/<name>/state`` the device's state in a
``state/update`` one. The outbox keeps the latest message per key, so each message is built
from the current record, never from the change alone: while the node is offline nothing is
lost, and nothing stale is replayed.
"""

from __future__ import annotations

from ...protocol import GROUP_RESOURCE, UPDATE, Message
from . import documents as docs
from .membership import reports_to_cloud, state_reports_to_cloud
from .storing import DeviceRecord

__all__ = ["SOURCE", "message", "state_key", "twin_key"]

SOURCE = "twin"  # KubeEdge's module name: CloudHub routes it to the device controller


def twin_key(record: DeviceRecord, prop: str) -> str:
    return f"device/{record.id}/twin/{prop}"


def state_key(record: DeviceRecord) -> str:
    return f"device/{record.id}/state"


def message(record: DeviceRecord, key: str, now: int) -> Message | None:
    """The message for ``key`` as of ``record``; None when the Device keeps it on the edge
    (``reportToCloud: false``) or the key is not one of this device's."""
    prefix = f"device/{record.id}/"
    rest = key[len(prefix) :] if key.startswith(prefix) else ""
    if rest.startswith("twin/"):
        prop = rest[len("twin/") :]
        if not reports_to_cloud(record.device, prop):
            return None
        resource = f"{prefix}twin/edge_updated"
        content = docs.upstream_twin(now, prop, record.twins.get(prop))
    elif rest == "state":
        if not state_reports_to_cloud(record.device):
            return None
        resource, content = f"{prefix}state/update", docs.upstream_state(now, record.state)
    else:
        return None
    return Message(SOURCE, GROUP_RESOURCE, UPDATE, resource, content)
