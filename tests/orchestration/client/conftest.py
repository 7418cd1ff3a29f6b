"""An API server per test, on a free port, with quick bookmarks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from orbiter.orchestration.apiserver.serving import APIServer


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[APIServer]:
    srv = APIServer(tmp_path / "server", port=0, bookmark_interval=0.1, compact_interval=3600)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()
