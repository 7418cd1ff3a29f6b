"""The node as the cloud sees it: its Node object, its status, and its Lease (kubeedge.md §1.3).

Capacity and system info come from the real machine (``/proc``, ``/etc/os-release``,
``uname``); the edge reports, the cloud decides (the node-lifecycle controller marks a node
whose Lease stops being renewed NotReady).
"""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "EDGE_LABELS",
    "KUBELET_VERSION",
    "LEASE_DURATION",
    "LEASE_NAMESPACE",
    "MAX_PODS",
    "lease_object",
    "node_object",
    "node_status",
]

KUBELET_VERSION = "v1.31.0-orbiter"
LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION = 40  # seconds, KubeEdge's nodeLeaseDurationSeconds
MAX_PODS = 110
EDGE_LABELS = {"node-role.kubernetes.io/edge": "", "node-role.kubernetes.io/agent": ""}
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}


def _timestamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_time(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def memory_kib(meminfo: Path = Path("/proc/meminfo")) -> int:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def os_image(os_release: Path = Path("/etc/os-release")) -> str:
    try:
        for line in os_release.read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.partition("=")[2].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def _machine_id() -> str:
    for path in (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id")):
        try:
            return path.read_text().strip()
        except OSError:
            continue
    return ""


def _resources() -> dict[str, str]:
    return {
        "cpu": str(os.cpu_count() or 1),
        "memory": f"{memory_kib()}Ki",
        "pods": str(MAX_PODS),
    }


def node_status(name: str, now: datetime | None = None) -> dict[str, Any]:
    """The NodeStatus this node reports: capacity, addresses, nodeInfo, Ready=True."""
    now = now or datetime.now(UTC)
    stamp = _timestamp(now)
    uname = platform.uname()
    return {
        "capacity": _resources(),
        "allocatable": _resources(),
        "addresses": [
            {"type": "InternalIP", "address": "127.0.0.1"},
            {"type": "Hostname", "address": name},
        ],
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "EdgeReady",
                "message": "edge is posting ready status",
                "lastHeartbeatTime": stamp,
                "lastTransitionTime": stamp,
            }
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10350}},
        "nodeInfo": {
            "machineID": _machine_id(),
            "systemUUID": "",
            "bootID": "",
            "kernelVersion": uname.release,
            "osImage": os_image(),
            "containerRuntimeVersion": "process://orbiter",
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": "",
            "operatingSystem": uname.system.lower(),
            "architecture": _ARCH.get(uname.machine, uname.machine),
        },
    }


def node_object(name: str, now: datetime | None = None) -> dict[str, Any]:
    """The Node this edge registers itself as."""
    now = now or datetime.now(UTC)
    uname = platform.uname()
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                **EDGE_LABELS,
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": uname.system.lower(),
                "kubernetes.io/arch": _ARCH.get(uname.machine, uname.machine),
            },
        },
        "spec": {},
        "status": node_status(name, now),
    }


def lease_object(name: str, now: datetime | None = None) -> dict[str, Any]:
    """The node's heartbeat Lease, renewed at ``now``."""
    now = now or datetime.now(UTC)
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": LEASE_NAMESPACE},
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": LEASE_DURATION,
            "renewTime": _micro_time(now),
        },
    }
