"""KubeEdge's Device Management Interface v1beta1 (gRPC over a Unix socket; kubeedge.md §5.5).

``api.proto`` is KubeEdge's contract (names and field numbers kept, so real KubeEdge mappers
interoperate); ``api_pb2*`` are generated from it by ``make protos``. ``converting`` maps
the messages to and from the Kubernetes JSON the rest of Orbiter works with.
"""

from . import api_pb2
from .converting import (
    API_VERSION,
    DEVICE_STATES,
    MAX_MESSAGE_BYTES,
    MapperInfo,
    check_name,
    check_namespace,
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

# Full method names: the servers and clients bind them directly (see edge/dmi.py).
DEVICE_MANAGER_SERVICE = "v1beta1.DeviceManagerService"
DEVICE_MAPPER_SERVICE = "v1beta1.DeviceMapperService"

__all__ = [
    "API_VERSION",
    "DEVICE_MANAGER_SERVICE",
    "DEVICE_MAPPER_SERVICE",
    "DEVICE_STATES",
    "MAX_MESSAGE_BYTES",
    "MapperInfo",
    "api_pb2",
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
