"""A real API server per test, with the cloud's controllers on an in-process client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from orbiter.orchestration.apiserver import APIServer
from orbiter.orchestration.client import LocalClient
from orbiter.orchestration.cloud import ControllerManager


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[APIServer]:
    before = asyncio.all_tasks()
    server = APIServer(tmp_path / "data", port=0)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
    # Everything the test, the controllers and the server started must be gone by now.
    await asyncio.sleep(0)
    leaked = [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task()]
    assert not leaked, leaked


@pytest.fixture
async def client(server: APIServer) -> AsyncIterator[LocalClient]:
    client = LocalClient(server.api)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def controllers(client: LocalClient) -> AsyncIterator[ControllerManager]:
    # No periodic resync: every change a test waits for must come from events.
    async with ControllerManager(client, resync=None) as manager:
        yield manager
