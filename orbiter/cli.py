"""The ``orbiter`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
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

    cloud.add_argument(
        "--encryption-key-file",
        metavar="FILE",
        type=Path,
        default=None,
        help="AES key for Secrets at rest (default: DIR/encryption.key, made on first start); "
        "replicas sharing a PostgreSQL store must share one",
    )

    demo = sub.add_parser("demo", help="start a cloud, apply the examples and show them")
    demo.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the demo cloud keeps its state (default: a temporary dir)",
    )
    token = sub.add_parser(
        "token",
        help="manage join tokens for edge nodes",
        description="Manage the tokens edge nodes join the cloud with.",
    )
    token_sub = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    create = token_sub.add_parser(
        "create",
        help="print a new join token",
        description="Print a join token for the cloud whose CA is in DIR: "
        "<SHA-256 of the CA certificate>.<JWT signed with a key derived from the CA key>. "
        "Anyone holding it can join an edge node until it expires; keep it secret.",
    )
    create.add_argument(
        "--data-dir",
        required=True,
        type=Path,
        metavar="DIR",
        help="the cloud's data dir (holding ca.crt and ca.key)",
    )
    create.add_argument(
        "--ttl",
        type=parse_duration,
        default=24 * 3600.0,
        metavar="DURATION",
        help="how long the token is valid: 30m, 24h, 7d, 1h30m ... (default 24h)",
    )
    return p


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[smhd])+")


def parse_duration(text: str) -> float:
    """``30m``, ``24h``, ``7d``, ``1h30m`` → seconds (argparse type)."""
    text = text.strip().lower()
    if not _DURATION.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use a number with a unit s, m, h or d (30m, 24h, 7d)"
        )
    seconds = sum(
        float(n) * _DURATION_UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smhd])", text)
    )
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must be positive")
    return seconds


def _token_create(args: argparse.Namespace) -> int:
    from .orchestration.cloud.joining import create_join_token

    try:
        token = create_join_token(args.data_dir, args.ttl)
    except (OSError, ValueError) as exc:
        print(f"orbiter token create: {exc}", file=sys.stderr)
        return 1
    print(token, flush=True)
    return 0


async def _run_cloud(args: argparse.Namespace) -> int:
    from .orchestration.cloud.running import Cloud

    cloud = Cloud(
        args.data_dir,
        store_url=args.store,
        listen=args.listen,
        port=args.api_port,
        encryption_key_file=args.encryption_key_file,
    )
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
    if args.command == "token":
        return _token_create(args)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(args.data_dir)
    return 2


if __name__ == "__main__":
    sys.exit(main())
