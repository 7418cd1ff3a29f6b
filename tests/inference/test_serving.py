"""The server's life cycle: bound ports, a busy port failing cleanly, serve_forever ending on
stop or cancellation, and stop being idempotent — each leaving nothing running."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from ..converging import until
from .conftest import make_server


async def _live(port: int | None) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/v2/health/live") as response,
    ):
        return response.status


@pytest.mark.parametrize("busy", ["http_port", "grpc_port", "metrics_port"])
async def test_a_busy_port_fails_start_cleanly(repo: Path, busy: str) -> None:
    async with make_server(repo) as first:
        second = make_server(repo, **{busy: getattr(first, busy)})
        with pytest.raises(OSError):
            await second.start()
        assert await _live(first.http_port) == 200


async def test_serve_forever_until_stopped_or_cancelled(repo: Path) -> None:
    server = make_server(repo)
    ports = await server.start()
    assert ports == (server.http_port, server.grpc_port, server.metrics_port)
    assert all(isinstance(p, int) and p > 0 for p in ports)
    serving = asyncio.create_task(server.serve_forever())
    assert await _live(server.http_port) == 200
    await server.stop()
    async with asyncio.timeout(10):
        await serving
    await server.stop()  # a second stop is harmless

    server = make_server(repo)
    serving = asyncio.create_task(server.serve_forever())

    async def ready() -> bool:
        return server.service.ready

    await until(ready, "serve_forever to have started the server")
    assert await _live(server.http_port) == 200
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving
    with pytest.raises(aiohttp.ClientConnectionError):
        await _live(server.http_port)
