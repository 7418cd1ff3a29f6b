""":class:`InferenceServer`: the repository, the handlers and three listeners — REST, gRPC
and Prometheus metrics — in the running asyncio loop, plus an optional repository poller.

Sockets are bound here (port 0: a free port) so the bound ports are known when :meth:`start`
returns; uvicorn serves the sockets it is given and never touches signal handlers (the
embedding program owns those). Nothing is printed or logged at start: the caller reports."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import uvicorn

from .grpcserving import GrpcServer
from .handling import InferenceService
from .metrics import Metrics
from .repository import DEFAULT_MAX_BATCH_SIZE, ModelRepository
from .rest import RestApp

__all__ = ["DEFAULT_MAX_REQUEST_BYTES", "INLINE_BELOW", "InferenceServer", "Ports"]

log = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
# session.run runs on the loop when it averages less than this; measured on the tiny test
# models, a thread hop costs ~60 µs while their run takes ~10 µs (see the report).
INLINE_BELOW = 0.0002


class Ports(NamedTuple):
    """The bound ports (None: that listener is off)."""

    http: int | None
    grpc: int | None
    metrics: int | None


class _Uvicorn(uvicorn.Server):
    """uvicorn serving given sockets in the running loop, leaving signals alone."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.up = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.up.set()


class _Listener:
    """One uvicorn server on one socket we bound."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        self._sock = _bind(host, port)
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            loop="none",
            http="httptools",
            ws="none",
            lifespan="off",
            interface="asgi3",
            proxy_headers=False,  # no X-Forwarded-* rewriting: one middleware less per request
            access_log=False,
            log_level="warning",
            log_config=None,  # leave the embedding program's logging configuration alone
            server_header=False,
            timeout_graceful_shutdown=5,
        )
        self._server = _Uvicorn(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))
        up = asyncio.create_task(self._server.up.wait())
        await asyncio.wait({self._task, up}, return_when=asyncio.FIRST_COMPLETED)
        if not up.done():
            up.cancel()
            await self.stop()
            raise OSError(f"HTTP listener on port {self.port} did not start")

    async def stop(self) -> None:
        self._server.should_exit = True
        task, self._task = self._task, None
        if task is not None:
            await task
        self._sock.close()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only when their proto
    # says TCP, and without it Nagle's algorithm costs each response ~40 ms.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class InferenceServer:
    """Serves the ONNX models under ``repository_dir`` (None: only those added with
    ``server.repository.add_version``) over the Open Inference Protocol.

    A port of 0 binds a free port, None turns that listener off. ``poll_interval`` seconds:
    reload what changed in the repository that often (None: only through the load API).
    ``intra_op_threads``: onnxruntime threads per session (None: the number of cores).
    ``inline_below``: run ``session.run`` on the loop when it averages less than this many
    seconds (0: always in a thread). ``batch_history``: batches kept per model for
    inspection (:meth:`InferenceService.batches`)."""

    def __init__(
        self,
        repository_dir: str | os.PathLike[str] | None,
        *,
        http_port: int | None = 8000,
        grpc_port: int | None = 8001,
        metrics_port: int | None = 8002,
        host: str = "127.0.0.1",
        poll_interval: float | None = None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        intra_op_threads: int | None = None,
        default_max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        inline_below: float = INLINE_BELOW,
        batch_history: int = 0,
        worker_threads: int | None = None,
    ) -> None:
        self.host = host
        self.poll_interval = poll_interval
        self.max_request_bytes = max_request_bytes
        self._requested = Ports(http_port, grpc_port, metrics_port)
        self._executor = ThreadPoolExecutor(
            max_workers=worker_threads or max(2, os.cpu_count() or 1),
            thread_name_prefix="orbiter-inference",
        )
        self.repository = ModelRepository(
            Path(repository_dir) if repository_dir is not None else None,
            intra_op_threads=intra_op_threads,
            default_max_batch_size=default_max_batch_size,
            executor=self._executor,
        )
        self.metrics = Metrics()
        self.service = InferenceService(
            self.repository,
            metrics=self.metrics,
            executor=self._executor,
            inline_below=inline_below,
            batch_history=batch_history,
        )
        self.http_port: int | None = None
        self.grpc_port: int | None = None
        self.metrics_port: int | None = None
        self._http: _Listener | None = None
        self._metrics_listener: _Listener | None = None
        self._grpc: GrpcServer | None = None
        self._poller: asyncio.Task[None] | None = None
        self._stopped: asyncio.Event | None = None
        self._started = False

    async def start(self) -> Ports:
        """Loads the repository, then listens; returns the bound ports."""
        if self._started:
            raise RuntimeError("the server is already started")
        self._started = True
        self._stopped = asyncio.Event()
        try:
            await self.repository.load_all()
            http, grpc_port, metrics = self._requested
            if http is not None:
                self._http = _Listener(
                    RestApp(self.service, max_request_bytes=self.max_request_bytes), self.host, http
                )
                await self._http.start()
                self.http_port = self._http.port
            if grpc_port is not None:
                self._grpc = GrpcServer(
                    self.service, self.host, grpc_port, max_message_bytes=self.max_request_bytes
                )
                self.grpc_port = await self._grpc.start()
            if metrics is not None:
                self._metrics_listener = _Listener(self.metrics.app, self.host, metrics)
                await self._metrics_listener.start()
                self.metrics_port = self._metrics_listener.port
        except BaseException:
            await self.stop()
            raise
        if self.poll_interval is not None:
            self._poller = asyncio.create_task(
                self._poll(self.poll_interval), name="repository-poll"
            )
        self.service.ready = True
        return self.ports

    @property
    def ports(self) -> Ports:
        return Ports(self.http_port, self.grpc_port, self.metrics_port)

    async def _poll(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)  # the poll period itself, not a synchronisation
            try:
                await self.repository.poll()
            except Exception:
                log.exception("repository poll failed")

    async def stop(self, grace: float = 5.0) -> None:
        """Stops polling and listening (in-flight requests get ``grace`` seconds), lets the
        batchers finish, then joins the worker threads. Safe to call twice."""
        self.service.ready = False
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        http, self._http = self._http, None
        grpc_server, self._grpc = self._grpc, None
        stops = [s.stop() for s in (http,) if s is not None]
        if grpc_server is not None:
            stops.append(grpc_server.stop(grace))
        await asyncio.gather(*stops)
        await self.service.close()
        listener, self._metrics_listener = self._metrics_listener, None
        if listener is not None:
            await listener.stop()
        # Nothing runs in the pool any more; a load the poller had started has been awaited.
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)
        if self._stopped is not None:
            self._stopped.set()

    async def serve_forever(self) -> None:
        """Starts if needed, serves until :meth:`stop` is called or this task is cancelled,
        and stops cleanly either way."""
        if not self._started:
            await self.start()
        assert self._stopped is not None
        try:
            await self._stopped.wait()
        finally:
            await self.stop()

    async def __aenter__(self) -> InferenceServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()
