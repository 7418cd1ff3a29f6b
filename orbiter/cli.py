"""The ``orbiter`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from . import __version__


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="orbiter",
        description="Orbiter: a cloud-edge AI platform with a Kubernetes-compatible API.",
    )
    p.add_argument("--version", action="version", version=f"orbiter {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    cloud = sub.add_parser(
        "cloud",
        help="run the API server and the cloud controllers",
        description="Run the Kubernetes-compatible API server and the cloud controllers. "
        "Writes DIR/kubeconfig (admin) holding the address it listens on.",
    )
    cloud.add_argument(
        "--data-dir",
        required=True,
        type=Path,
        metavar="DIR",
        help="state, certificates, keys and the kubeconfig live here",
    )
    cloud.add_argument(
        "--store",
        metavar="URL",
        default=None,
        help="sqlite:///PATH (default: DIR/state.db) or postgresql://USER@HOST/DB "
        "(several cloud replicas may share one PostgreSQL database)",
    )
    cloud.add_argument(
        "--listen",
        metavar="ADDR",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)",
    )
    cloud.add_argument(
        "--api-port",
        metavar="PORT",
        type=int,
        default=6443,
        help="HTTPS port of the API server (default 6443; 0 picks a free one)",
    )

    demo = sub.add_parser("demo", help="start a cloud, apply the examples and show them")
    demo.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the demo cloud keeps its state (default: a temporary dir)",
    )
    return p


async def _run_cloud(args: argparse.Namespace) -> int:
    from .orchestration.cloud.running import Cloud

    cloud = Cloud(args.data_dir, store_url=args.store, listen=args.listen, port=args.api_port)
    await cloud.start()
    print(f"Orbiter API server at {cloud.server.url}", flush=True)
    print(f"kubeconfig: {cloud.server.kubeconfig_path}", flush=True)
    print(f"  export KUBECONFIG={cloud.server.kubeconfig_path}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        print("stopping", flush=True)
        await cloud.stop()
    return 0


def _run(main: Coroutine[Any, Any, int]) -> int:
    # uvloop roughly doubles what one core serves; plain asyncio works the same without it.
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "cloud":
        return _run(_run_cloud(args))
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(args.data_dir)
    return 2


if __name__ == "__main__":
    sys.exit(main())
