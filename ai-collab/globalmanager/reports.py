"""The global manager's end of the local controllers' reports (reference ``sedna.md`` §1.6).

A node's LC sends, per joint inference service, the summary of that service's workers on the
node (:mod:`orbiter.collab.localcontroller.messages`). It becomes the service's
``status.metrics``: ``[{key, value}]`` with string values, in Sedna's keys
(``inferenceNumber``, ``hardExampleNumber``, ``uploadCloudRatio``) plus Orbiter's
``cloudCallNumber`` and ``fallbackNumber``; the timestamps are dropped, as Sedna's GM does. It is
a merge patch of the status subresource holding only ``metrics`` (the JI controller never
writes that field, and a merge patch replaces the list whole), so neither writer undoes the
other.

Only a node running an edge worker (pod) of the service may report on it; anything else is
refused (``error``: forbidden). Every message is answered, which acknowledges the node's
outbox row: a report for a service that does not exist (deleted meanwhile) or of an owner kind
without a manager yet is acknowledged and dropped with a log line; malformed content gets an
``error`` (the node drops it too: sending it again would not help); an API server failure
(5xx) goes unanswered, so the node sends it again. With edge workers of one service on several
nodes, the latest node's summary is what the status shows (Sedna overwrote per worker).

The LC's own announcement (content ``{"kind": "localcontroller", "url"}``, see
:mod:`orbiter.collab.localcontroller.messages`) is recorded on the reporting node as the
annotation :data:`LC_SERVER_ANNOTATION` (a merge patch), which the JI controller gives that
node's workers as ``LC_SERVER``. Only ``http://127.0.0.1:<port>`` or
``http://localhost:<port>`` is accepted (else an ``error``): a node may say where its own LC
listens, never point workers (and their reports) at another host.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from orbiter.orchestration.client import NODES, PODS, Client, ClientError, NotFoundError
from orbiter.orchestration.cloud.running import UpstreamFactory
from orbiter.orchestration.protocol import UPDATE, Message

from ..apis import JOINT_INFERENCE_SERVICES
from ..localcontroller.messages import JOINT_INFERENCE, LC_KIND, SOURCE
from .workers import EDGE, LC_SERVER_ANNOTATION, NAME_LABEL, WORKER_TYPE_LABEL

__all__ = [
    "LC_SERVER_ANNOTATION",
    "METRICS",
    "LocalControllerReports",
    "loopback_url",
    "metrics",
    "upstream_handlers",
]

log = logging.getLogger(__name__)

METRICS = (
    "inferenceNumber",
    "hardExampleNumber",
    "uploadCloudRatio",
    "cloudCallNumber",
    "fallbackNumber",
)

# A loopback URL with an explicit port, nothing else: the node's workers reach it on the node.
_LOOPBACK_URL = re.compile(r"http://(127\.0\.0\.1|localhost):([1-9][0-9]{0,4})")


def loopback_url(url: Any) -> bool:
    """Whether ``url`` is ``http://127.0.0.1:<port>`` or ``http://localhost:<port>``."""
    found = _LOOPBACK_URL.fullmatch(url) if isinstance(url, str) else None
    return found is not None and int(found.group(2)) < 65536


def upstream_handlers() -> dict[str, UpstreamFactory]:
    """For ``Cloud(upstream=...)``: the LC's source name → the handler's factory."""
    return {SOURCE: LocalControllerReports}


class LocalControllerReports:
    """``await handler(node, message)`` → the reply to send back to the node."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def __call__(self, node: str, message: Message) -> Message | None:
        content = message.content
        if message.operation != UPDATE or not isinstance(content, dict):
            return message.error("bad request: an update with an object content", source=SOURCE)
        if content.get("kind") == LC_KIND:
            return await self._lc_server(node, message, content.get("url"))
        kind, ns, name = (content.get(k) for k in ("ownerKind", "namespace", "ownerName"))
        info = content.get("ownerInfo")
        if not all(isinstance(v, str) and v for v in (kind, ns, name)) or not isinstance(
            info, dict
        ):
            return message.error(
                "bad request: ownerKind, namespace, ownerName and ownerInfo are required",
                source=SOURCE,
            )
        assert isinstance(kind, str) and isinstance(ns, str) and isinstance(name, str)
        if kind != JOINT_INFERENCE:
            log.info("node %s: dropped a %s report for %s/%s (no manager)", node, kind, ns, name)
            return message.response("ignored", source=SOURCE)
        body = {"status": {"metrics": metrics(info)}}
        try:
            if not await self._runs_edge_worker(node, ns, name):
                # Its pods go with a deleted service: say not found rather than forbidden.
                await self.client.get(JOINT_INFERENCE_SERVICES, name, ns)
                log.warning("node %s runs no edge worker of %s/%s: report refused", node, ns, name)
                return message.error(
                    f"forbidden: node {node} runs no edge worker of {ns}/{name}", source=SOURCE
                )
            await self.client.patch(
                JOINT_INFERENCE_SERVICES, name, body, ns, patch_type="merge", subresource="status"
            )
        except NotFoundError:
            log.info(
                "node %s: dropped a report for joint inference service %s/%s (not found)",
                node,
                ns,
                name,
            )
            return message.response("not found", source=SOURCE)
        except ClientError as exc:
            log.warning("node %s: the metrics of %s/%s were not written: %s", node, ns, name, exc)
            if exc.status >= 500:
                return None  # unanswered: the node sends it again after its ack timeout
            return message.error(f"{exc.reason}: {exc.message}", source=SOURCE)
        return message.response("OK", source=SOURCE)

    async def _lc_server(self, node: str, message: Message, url: Any) -> Message | None:
        if not loopback_url(url):
            log.warning("node %s: refused local controller URL %r", node, url)
            return message.error(
                "forbidden: the local controller URL must be http://127.0.0.1:<port> or "
                "http://localhost:<port>",
                source=SOURCE,
            )
        body = {"metadata": {"annotations": {LC_SERVER_ANNOTATION: url}}}
        try:
            await self.client.patch(NODES, node, body, patch_type="merge")
        except NotFoundError:
            log.info("node %s: not found, its local controller URL was dropped", node)
            return message.response("not found", source=SOURCE)
        except ClientError as exc:
            log.warning("node %s: its local controller URL was not written: %s", node, exc)
            if exc.status >= 500:
                return None  # unanswered: the node sends it again
            return message.error(f"{exc.reason}: {exc.message}", source=SOURCE)
        return message.response("OK", source=SOURCE)

    async def _runs_edge_worker(self, node: str, ns: str, name: str) -> bool:
        # As DeviceReports does for Devices: a node speaks only for what runs on it.
        pods = await self.client.list(
            PODS,
            ns,
            label_selector=f"{NAME_LABEL}={name},{WORKER_TYPE_LABEL}={EDGE}",
            field_selector=f"spec.nodeName={node}",
        )
        return bool(pods.get("items"))


def metrics(info: Mapping[str, Any]) -> list[dict[str, str]]:
    """Sedna's ``status.metrics`` from an ``ownerInfo``: the known numeric keys as strings, in
    a fixed order (anything else, timestamps included, is left out)."""
    out = []
    for key in METRICS:
        value = info.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out.append({"key": key, "value": str(value)})
    return out
