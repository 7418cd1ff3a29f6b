"""Run an Orbiter cloud inside your own tests.

``CloudThread`` runs it on a background event loop, so blocking code (kubectl, the sync
``kubernetes`` client) can talk to it from the test's thread::

    with CloudThread(tmp_path) as cloud:
        subprocess.run(["kubectl", "--kubeconfig", cloud.kubeconfig, "get", "ns"], check=True)

In async tests, ``async with Cloud(tmp_path, port=0, hub_port=0, join_port=0) as cloud``
needs no thread.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from .orchestration.cloud.running import Cloud

T = TypeVar("T")

__all__ = ["Cloud", "CloudThread"]


class CloudThread:
    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        store_url: str | None = None,
        bookmark_interval: float = 1.0,
        start_timeout: float = 30.0,
    ) -> None:
        self.cloud = Cloud(
            data_dir,
            store_url=store_url,
            port=0,
            hub_port=0,
            join_port=0,
            bookmark_interval=bookmark_interval,
        )
        self._timeout = start_timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="orbiter-cloud")

    @property
    def kubeconfig(self) -> Path:
        return self.cloud.server.kubeconfig_path

    @property
    def url(self) -> str:
        return self.cloud.server.url

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 60.0) -> T:
        """Run a coroutine on the cloud's loop (e.g. ``cloud.server.api`` calls) and wait."""
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    def start(self) -> CloudThread:
        self._thread.start()
        try:
            self.call(self.cloud.start(), self._timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            try:
                self.call(self.cloud.stop(), self._timeout)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(self._timeout)
        self._loop.close()

    def __enter__(self) -> CloudThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
