"""Prometheus metrics of one server, in its own registry (several servers in one process do
not clash), and the ASGI app serving them as text at ``GET /metrics``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class Metrics:
    """Request counts and latencies by model, version, protocol and outcome; batch sizes
    and queue times by model and version. Label children are cached: ``labels()`` costs a
    lock and a dict lookup on every request otherwise."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "orbiter_inference_requests",
            "Inference requests by model, version, protocol and outcome.",
            ["model", "version", "protocol", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "orbiter_inference_request_duration_seconds",
            "Time from a decoded inference request to its result.",
            ["model", "version", "protocol"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "orbiter_inference_batch_size",
            "Rows per batch run by the model.",
            ["model", "version"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_time = Histogram(
            "orbiter_inference_queue_duration_seconds",
            "Time a request waited for its batch to start.",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._children: dict[tuple[str, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric._name, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def request(self, model: str, version: str, protocol: str, ok: bool, seconds: float) -> None:
        outcome = "success" if ok else "failure"
        self._child(self.requests, model, version, protocol, outcome).inc()
        if ok:
            self._child(self.latency, model, version, protocol).observe(seconds)

    def batch(self, model: str, version: str, rows: int, waits: list[float]) -> None:
        self._child(self.batch_size, model, version).observe(rows)
        queue_time = self._child(self.queue_time, model, version)
        for wait in waits:
            queue_time.observe(wait)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI: ``GET /metrics`` -> Prometheus text; anything else 404."""
        if scope["type"] != "http":
            return
        if scope["path"] == "/metrics" and scope["method"] in ("GET", "HEAD"):
            status, body, kind = 200, self.render(), CONTENT_TYPE_LATEST.encode()
        else:
            status, body, kind = 404, b"not found: metrics are at /metrics\n", b"text/plain"
        headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": body if scope["method"] != "HEAD" else b""}
        )
