"""`orbiter serve`: the inference server from a shell, on a model repository and/or models the
registry names by alias (``--model NAME@production``), which it follows as the alias moves."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Any

__all__ = ["add_serve_parser", "run_serve"]

log = logging.getLogger(__name__)


def add_serve_parser(sub: Any) -> None:
    from .models_cli import add_registry_options

    serve = sub.add_parser(
        "serve",
        help="serve ONNX models over the Open Inference Protocol (REST and gRPC)",
        description="Serve the models of a Triton-style repository (DIR/<model>/<version>/"
        "model.onnx, optional config.pbtxt) and/or registry models by alias over the Open "
        "Inference Protocol v2: REST on --http-port, gRPC on --grpc-port, Prometheus metrics "
        "on --metrics-port. Port 0 picks a free port; the bound ports are printed.",
    )
    serve.add_argument("--model-repo", type=Path, metavar="DIR", help="model repository")
    serve.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME@ALIAS",
        help="serve the registry's NAME at ALIAS (e.g. digits@production; repeatable); "
        "followed as the alias moves",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--http-port", type=int, default=8000, metavar="PORT")
    serve.add_argument("--grpc-port", type=int, default=8001, metavar="PORT")
    serve.add_argument("--metrics-port", type=int, default=8002, metavar="PORT")
    serve.add_argument(
        "--poll",
        type=float,
        default=None,
        metavar="SECONDS",
        help="look for new versions (repository and aliases) this often (default: only "
        "through the repository API)",
    )
    serve.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="onnxruntime threads per model (default: the number of cores)",
    )
    serve.add_argument(
        "--max-request-mb",
        type=float,
        default=64.0,
        metavar="MB",
        help="refuse larger requests (default 64)",
    )
    add_registry_options(serve)


class _AliasFollower:
    """Keeps the registry's NAME@ALIAS models in the server: fetched (verified) into a cache,
    served as the only version of NAME, replaced when the alias moves."""

    def __init__(self, registry: Any, specs: list[tuple[str, str]], cache: Path) -> None:
        self.registry = registry
        self.specs = specs
        self.cache = cache
        self.serving: dict[str, int] = {}

    def _fetch(self, name: str, alias: str) -> tuple[int, Path]:
        info = self.registry.get(name, alias=alias)
        dest = self.cache / name / str(info.version) / "model.onnx"
        dest.parent.mkdir(parents=True, exist_ok=True)
        return info.version, self.registry.fetch(name, version=info.version, dest=dest)

    async def sync(self, server: Any, *, load: bool) -> None:
        for name, alias in self.specs:
            version, path = await asyncio.to_thread(self._fetch, name, alias)
            if self.serving.get(name) == version:
                continue
            server.repository.set_versions(name, {version: path})
            if load:
                await server.repository.load(name)
            print(f"{name}@{alias}: version {version}", flush=True)
            self.serving[name] = version

    async def follow(self, server: Any, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)  # the poll period, not a synchronisation
            try:
                await self.sync(server, load=True)
            except Exception as e:  # the registry may be briefly unreachable: keep serving
                log.warning("following the registry: %s", e)


def _parse_specs(values: list[str]) -> list[tuple[str, str]]:
    specs = []
    for value in values:
        name, sep, alias = value.partition("@")
        if not sep or not name or not alias:
            raise SystemExit(f"orbiter serve: --model wants NAME@ALIAS, got {value!r}")
        specs.append((name, alias))
    return specs


async def run_serve(args: argparse.Namespace) -> int:
    from orbiter.inference import InferenceServer

    specs = _parse_specs(args.model)
    if args.model_repo is None and not specs:
        raise SystemExit("orbiter serve: give --model-repo DIR and/or --model NAME@ALIAS")
    if args.model_repo is not None and not args.model_repo.is_dir():
        raise SystemExit(f"orbiter serve: {args.model_repo} is not a directory")
    server = InferenceServer(
        args.model_repo,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        host=args.host,
        poll_interval=args.poll,
        intra_op_threads=args.threads,
        max_request_bytes=int(args.max_request_mb * 2**20),
    )
    follower: _AliasFollower | None = None
    if specs:
        from .models_cli import open_registry

        registry = open_registry(args)
        cache_root = args.data_dir or Path(os.environ.get("TMPDIR", "/tmp")) / "orbiter-serve"
        follower = _AliasFollower(registry, specs, Path(cache_root) / "serving")
        await follower.sync(server, load=False)
    ports = await server.start()
    print(
        f"serving: http {args.host}:{ports.http} grpc {args.host}:{ports.grpc} "
        f"metrics {args.host}:{ports.metrics}",
        flush=True,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    follow = (
        asyncio.create_task(follower.follow(server, args.poll))
        if follower is not None and args.poll
        else None
    )
    try:
        await stop.wait()
    finally:
        if follow is not None:
            follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follow
        await server.stop()
    return 0
