"""``APIServer``: the store, the API, TLS and the kubeconfig, started and stopped as one."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import secrets
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from ..protocol import listening_socket
from ..store import Store, open_store
from .certificates import CertificateAuthority, serving_context, serving_hosts
from .customresources import CustomResources
from .encryption import AESGCMTransformer
from .errors import APIError
from .files import write_private
from .handling import API
from .http import HTTPFrontend
from .tasks import cancel_and_wait

log = logging.getLogger(__name__)

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
KEEP_REVISIONS = 1000  # compaction keeps at least this much history, as kine does


def admin_token(data_dir: Path) -> str:
    path = data_dir / "admin.token"
    if not path.exists():
        write_private(path, secrets.token_urlsafe(32).encode())
    token = path.read_text().strip()
    if len(token) < 32:
        raise RuntimeError(f"{path} holds no usable token; delete it to have a new one made")
    return token


class APIServer:
    """The Kubernetes-compatible API server over HTTPS.

    ``port=0`` picks a free port; ``kubeconfig_path`` then holds the real address.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        store_url: str | None = None,
        listen: str = "127.0.0.1",
        port: int = 6443,
        bookmark_interval: float = 60.0,
        compact_interval: float = 300.0,
        encryption_key_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.store_url = store_url or f"sqlite:///{self.data_dir / 'state.db'}"
        self.listen = listen
        self.requested_port = port
        self.bookmark_interval = bookmark_interval
        self.compact_interval = compact_interval
        self.encryption_key_file = Path(encryption_key_file) if encryption_key_file else None
        self.port = 0
        self.store: Store | None = None
        self._api: API | None = None
        self._crds: CustomResources | None = None
        self._runner: web.AppRunner | None = None
        self._compactor: asyncio.Task[None] | None = None
        self._ready = False
        self._token: str | None = None

    @property
    def api(self) -> API:
        assert self._api is not None, "APIServer is not started"
        return self._api

    @property
    def kubeconfig_path(self) -> Path:
        return self.data_dir / "kubeconfig"

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.listen in ("", "0.0.0.0", "::") else self.listen
        if ":" in host:
            host = f"[{host}]"
        return f"https://{host}:{self.port}"

    @property
    def ca_path(self) -> Path:
        return self.data_dir / "ca.crt"

    @property
    def token(self) -> str:
        if self._token is None:
            self._token = admin_token(self.data_dir)
        return self._token

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        ca = CertificateAuthority.load_or_create(self.data_dir)
        ssl_ctx = serving_context(ca, self.data_dir, serving_hosts(self.listen))
        transformer = AESGCMTransformer.from_file(
            self.encryption_key_file or self.data_dir / "encryption.key"
        )
        self.store = open_store(self.store_url)
        await self.store.start()
        try:
            self._api = API(self.store, transformer=transformer)
            await self._api.namespaces.start()
            self._crds = CustomResources(self._api)
            await self._crds.start()
            await self._bootstrap()
            frontend = HTTPFrontend(
                self._api,
                tokens={self.token: "admin"},
                bookmark_interval=self.bookmark_interval,
                ready=lambda: self._ready,
            )
            # handler_cancellation: a watch whose client went away ends at once, not at its
            # timeout or next event.
            self._runner = web.AppRunner(
                frontend.app(), access_log=None, shutdown_timeout=2.0, handler_cancellation=True
            )
            await self._runner.setup()
            sock = listening_socket(self.listen, self.requested_port, backlog=1024)
            self.port = sock.getsockname()[1]
            frontend.server_address = f"{self.url.removeprefix('https://')}"
            site = web.SockSite(self._runner, sock, ssl_context=ssl_ctx)
            await site.start()
            self._write_kubeconfig(ca.cert_pem)
            self._compactor = asyncio.create_task(self._compact_loop(), name="compactor")
            self._ready = True
        except BaseException:
            await self.stop()
            raise
        log.info("API server listening on %s; kubeconfig at %s", self.url, self.kubeconfig_path)

    async def stop(self) -> None:
        self._ready = False
        if self._compactor is not None:
            await cancel_and_wait(self._compactor)
            self._compactor = None
        if self._runner is not None:
            server = self._runner.server
            transports = [
                h.transport for h in (server.connections if server else []) if h.transport
            ]
            await self._runner.cleanup()
            # aiohttp closes idle keep-alive connections, but a TLS close then waits for the
            # client's close_notify (up to asyncio's 30 s ssl_shutdown_timeout) and the socket
            # outlives stop(). A stopped server holds no sockets: drop whatever is left.
            for transport in transports:
                transport.abort()
            self._runner = None
        if self._api is not None:
            await self._api.namespaces.close()
        if self._crds is not None:
            await self._crds.close()
            self._crds = None
        if self.store is not None:
            await self.store.close()
            self.store = None

    async def __aenter__(self) -> APIServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _bootstrap(self) -> None:
        ns_rt = self.api.registry.lookup("", "v1", "namespaces")
        assert ns_rt is not None
        for name in DEFAULT_NAMESPACES:
            try:
                await self.api.create(ns_rt, "", {"metadata": {"name": name}})
            except APIError as exc:
                if exc.code != 409:
                    raise

    async def _compact_loop(self) -> None:
        assert self.store is not None
        while True:
            await asyncio.sleep(self.compact_interval)
            try:
                target = await self.store.current_revision() - KEEP_REVISIONS
                if target > await self.store.compacted_revision():
                    await self.store.compact(target)
            except Exception:
                log.exception("compaction failed; will retry")

    def _write_kubeconfig(self, ca_pem: bytes) -> None:
        config: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "orbiter",
                    "cluster": {
                        "server": self.url,
                        "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                    },
                }
            ],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": "orbiter",
                    "context": {"cluster": "orbiter", "user": "admin", "namespace": "default"},
                }
            ],
            "current-context": "orbiter",
            "preferences": {},
        }
        tmp = self.kubeconfig_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        tmp.replace(self.kubeconfig_path)
