"""``Cloud``: the API server plus the cloud's controllers, run as one (``orbiter cloud``)."""

from __future__ import annotations

import os

from ..apiserver import APIServer
from ..client import LocalClient
from .controlling import ControllerManager


class Cloud:
    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        store_url: str | None = None,
        listen: str = "127.0.0.1",
        port: int = 6443,
        bookmark_interval: float = 60.0,
        encryption_key_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.server = APIServer(
            data_dir,
            store_url=store_url,
            listen=listen,
            port=port,
            bookmark_interval=bookmark_interval,
            encryption_key_file=encryption_key_file,
        )
        self._controllers: ControllerManager | None = None
        self._client: LocalClient | None = None

    async def start(self) -> None:
        await self.server.start()
        try:
            self._client = LocalClient(self.server.api)
            self._controllers = ControllerManager(self._client)
            await self._controllers.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self._controllers is not None:
            await self._controllers.stop()
            self._controllers = None
        if self._client is not None:
            await self._client.close()
            self._client = None
        await self.server.stop()

    async def __aenter__(self) -> Cloud:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
