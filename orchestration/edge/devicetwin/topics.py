"""DeviceTwin's MQTT topics (kubeedge.md §5.4; KubeEdge's ``dtcommon`` constants).

``<id>`` is ``<namespace>/<deviceName>`` (v1beta1), so a device topic is
``$hw/events/device/<namespace>/<name>/<suffix>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "DEVICE_PREFIX",
    "NODE_PREFIX",
    "DeviceTopic",
    "device_topic",
    "membership_topic",
    "parse_device_topic",
    "parse_membership_get",
]

DEVICE_PREFIX = "$hw/events/device/"
NODE_PREFIX = "$hw/events/node/"

# What apps and mappers send; everything else under the prefixes (our own results echoed back
# by the broker, legacy topics) is not answered, so a reply can never trigger another reply.
TWIN_UPDATE, TWIN_GET, STATE_UPDATE = "twin/update", "twin/get", "state/update"
REQUESTS = frozenset({TWIN_UPDATE, TWIN_GET, STATE_UPDATE})
RESULT = {
    TWIN_UPDATE: "twin/update/result",
    TWIN_GET: "twin/get/result",
    STATE_UPDATE: "state/update/result",
}
DELTA, DOCUMENT = "twin/update/delta", "twin/update/document"
MEMBERSHIP_GET, MEMBERSHIP_GET_RESULT = "membership/get", "membership/get/result"
MEMBERSHIP_UPDATED = "membership/updated"

MAX_TOPIC = 1024  # longer topics are not ours (names are at most 253 characters each)
# Kubernetes object names: a topic segment that cannot be one names no device of this node.
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


def valid_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


@dataclass(frozen=True, slots=True)
class DeviceTopic:
    namespace: str
    name: str
    request: str  # one of REQUESTS

    @property
    def result(self) -> str:
        return device_topic(self.namespace, self.name, RESULT[self.request])


def device_topic(namespace: str, name: str, suffix: str) -> str:
    return f"{DEVICE_PREFIX}{namespace}/{name}/{suffix}"


def membership_topic(node: str, suffix: str) -> str:
    return f"{NODE_PREFIX}{node}/{suffix}"


def parse_device_topic(topic: str) -> DeviceTopic | None:
    """The request a device topic carries, or None for a topic that is not a request.

    Namespace and name are returned as sent (the caller answers 404 for a device it does not
    hold); only the segments' presence is checked here.
    """
    if not topic.startswith(DEVICE_PREFIX) or len(topic) > MAX_TOPIC:
        return None
    parts = topic[len(DEVICE_PREFIX) :].split("/", 2)
    if len(parts) != 3 or not parts[0] or not parts[1] or parts[2] not in REQUESTS:
        return None
    return DeviceTopic(parts[0], parts[1], parts[2])


def parse_membership_get(topic: str) -> str | None:
    """The node a ``membership/get`` topic asks about, or None for any other topic."""
    if not topic.startswith(NODE_PREFIX) or len(topic) > MAX_TOPIC:
        return None
    node, sep, suffix = topic[len(NODE_PREFIX) :].partition("/")
    return node if sep and node and suffix == MEMBERSHIP_GET else None
