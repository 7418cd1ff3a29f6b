"""Test doubles for the joint-inference tests: a fake local controller (the real one is not
written yet), a fake Open Inference Protocol server whose behaviour a test controls, and
stub estimators and clouds. All servers are real aiohttp servers on 127.0.0.1, port 0."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import orjson
from aiohttp import web

__all__ = [
    "FakeLocalController",
    "FakeOipServer",
    "FixedEstimator",
    "StubCloud",
    "serve",
]


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[int]:
    """Serves ``app`` on 127.0.0.1 at a free port (yielded) until the block ends."""
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


class FakeLocalController:
    """TEST DOUBLE of the local controller's worker-status route (``POST
    /sedna/workers/{name}/info``, reference ``sedna.md`` §1.2): it checks that the body's
    ``name`` is the path's, as the LC does, and queues each accepted body."""

    def __init__(self) -> None:
        self.bodies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.refuse = False  # answer 400 to every report
        self.app = web.Application()
        self.app.router.add_post("/sedna/workers/{name}/info", self._info)

    async def _info(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.refuse or body.get("name") != request.match_info["name"]:
            return web.json_response({"Status": "Failure", "Message": "refused"}, status=400)
        await self.bodies.put(body)
        return web.json_response({"Status": "Success", "Message": "ok"})


class FakeOipServer:
    """An Open Inference Protocol model ``name`` with one FP32 input ``x`` whose output
    ``y`` is ``2 * x``. ``status``: answer every infer with this error status instead;
    ``hang``: hold every infer until :meth:`release`. Records each infer body and the
    client ports it was reached from (one port: one keep-alive connection)."""

    def __init__(self, name: str = "double") -> None:
        self.name = name
        self.requests: list[dict[str, Any]] = []
        self.client_ports: set[int] = set()
        self.status: int | None = None
        self.hang = False
        self._released = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_get("/v2/models/{name}", self._metadata)
        self.app.router.add_post("/v2/models/{name}/infer", self._infer)

    def release(self) -> None:
        self._released.set()

    async def _metadata(self, request: web.Request) -> web.Response:
        if request.match_info["name"] != self.name:
            return web.json_response({"error": "unknown model"}, status=404)
        return web.json_response(
            {
                "name": self.name,
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
                "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
            }
        )

    async def _infer(self, request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer is not None:
            self.client_ports.add(int(peer[1]))
        body = await request.json()
        self.requests.append(body)
        if self.hang:
            await self._released.wait()
        if self.status is not None:
            return web.json_response({"error": "model exploded"}, status=self.status)
        [tensor] = body["inputs"]
        x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        out = {"name": "y", "datatype": "FP32", "shape": list(x.shape), "data": (2 * x).ravel()}
        document = {"model_name": self.name, "outputs": [out]}
        return web.Response(
            body=orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY),
            content_type="application/json",
        )


class FixedEstimator:
    """An edge estimator whose "model" is a function of the input (``x -> scores``);
    records the keyword arguments ``predict`` received and the URL it loaded."""

    def __init__(self, scores: Callable[[Any], Any], model_url: str | None = None) -> None:
        self.scores = scores
        self.loaded: list[str] = []
        self.model_url = model_url
        self.predict_kwargs: list[dict[str, Any]] = []

    def load(self, model_url: str) -> None:
        self.loaded.append(model_url)

    def predict(self, data: Any, threshold: float = 0.0) -> Any:
        self.predict_kwargs.append({"threshold": threshold})
        return self.scores(data)


class StubCloud:
    """A cloud double: ``answer(data)`` is the big model; ``fail`` makes every call raise;
    ``on_call`` runs before answering (e.g. advancing a fake clock)."""

    def __init__(self, answer: Callable[[Any], Any]) -> None:
        self.answer = answer
        self.fail = False
        self.calls: list[Any] = []
        self.timeouts: list[float | None] = []
        self.on_call: Callable[[], None] | None = None
        self.closed = False

    def infer(self, data: Any, *, timeout: float | None = None) -> Any:
        self.calls.append(data)
        self.timeouts.append(timeout)
        if self.on_call is not None:
            self.on_call()
        if self.fail:
            raise ConnectionRefusedError("the cloud is down")
        return self.answer(data)

    def close(self) -> None:
        self.closed = True
