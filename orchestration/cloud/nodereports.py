"""What edge nodes report about themselves: registration, node status and their Lease.

A node may only speak for itself: the session's node name (from its certificate) must be
the object's name, as Kubernetes' NodeRestriction admission requires of kubelets.
"""

from __future__ import annotations

import logging
from typing import Any

from ..client import LEASES, NODES, Client, ClientError, NotFoundError
from ..protocol import INSERT, PATCH, UPDATE, Message, MessageError, parse_resource

log = logging.getLogger(__name__)

SOURCE = "edgecontroller"
KINDS = frozenset({"node", "nodestatus", "nodepatch", "lease"})
_EDGE_LABELS = {"node-role.kubernetes.io/edge": "", "node-role.kubernetes.io/agent": ""}
LEASE_NS = "kube-node-lease"  # a node's Lease lives here and nowhere else
# NodeRestriction: a node may not give itself labels that steer workloads or claim roles.
_PROTECTED_LABEL_PREFIXES = ("node-restriction.kubernetes.io/", "node-role.kubernetes.io/")


class NodeReports:
    def __init__(self, client: Client) -> None:
        self.client = client

    @staticmethod
    def handles(message: Message) -> bool:
        try:
            _, kind, _ = parse_resource(message.resource)
        except MessageError:
            return False
        return kind in KINDS

    async def handle(self, node: str, message: Message) -> Message:
        """The reply to send back: ``response`` on success, ``error`` saying why not."""
        try:
            ns, kind, name = parse_resource(message.resource)
        except MessageError as exc:
            return message.error(f"bad request: {exc}", source=SOURCE)
        if name != node:
            log.warning("node %s tried to write %s for %r: refused", node, kind, name)
            return message.error(
                f"forbidden: node {node} may not write {kind} {name}", source=SOURCE
            )
        content = message.content
        if not isinstance(content, dict):
            return message.error("bad request: content must be an object", source=SOURCE)
        try:
            if kind == "node" and message.operation in (INSERT, UPDATE):
                await self._register(node, content)
            elif kind in ("nodestatus", "nodepatch") and message.operation in (UPDATE, PATCH):
                status = content.get("status")
                if not isinstance(status, dict):
                    return message.error("bad request: content.status must be an object")
                await self.client.patch(NODES, node, {"status": status}, subresource="status")
            elif kind == "lease" and message.operation in (INSERT, UPDATE) and ns == LEASE_NS:
                await self._renew(node, ns, content)
            else:
                return message.error(
                    f"not supported: {message.operation} {message.resource}", source=SOURCE
                )
        except ClientError as exc:
            return message.error(f"{exc.reason.lower()}: {exc.message}", source=SOURCE)
        return message.response("OK", source=SOURCE)

    async def _register(self, node: str, reported: dict[str, Any]) -> None:
        """Create the Node on first connect (with the edge role labels); later, refresh its
        labels and status from what the node reports."""
        meta = _object(reported.get("metadata"))
        reported_labels = _object(meta.get("labels"))
        labels = {
            **{
                k: v
                for k, v in reported_labels.items()
                if isinstance(v, str) and not k.startswith(_PROTECTED_LABEL_PREFIXES)
            },
            **_EDGE_LABELS,
        }
        status = _object(reported.get("status"))
        try:
            await self.client.get(NODES, node)
        except NotFoundError:
            body = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": node, "labels": labels},
                "spec": {},  # taints and unschedulable are the admin's, not the node's
            }
            await self.client.create(NODES, body)
        else:
            await self.client.patch(NODES, node, {"metadata": {"labels": labels}})
        if status:
            await self.client.patch(NODES, node, {"status": status}, subresource="status")

    async def _renew(self, node: str, namespace: str, lease: dict[str, Any]) -> None:
        spec = _object(lease.get("spec"))
        try:
            await self.client.patch(LEASES, node, {"spec": spec}, namespace)
        except NotFoundError:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": node, "namespace": namespace},
                "spec": spec,
            }
            await self.client.create(LEASES, body, namespace)


def _object(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (a node's report is untrusted)."""
    return value if isinstance(value, dict) else {}
