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
        "--hub-port",
        metavar="PORT",
        type=int,
        default=10000,
        help="CloudHub WebSocket port edge nodes connect to (default 10000; 0 picks one)",
    )
    cloud.add_argument(
        "--join-port",
        metavar="PORT",
        type=int,
        default=10002,
        help="port of the join endpoint that signs node certificates (default 10002; 0 picks one)",
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
    _edge_parser(sub)
    return p


def _edge_parser(sub: Any) -> None:
    edge = sub.add_parser(
        "edge",
        help="run an edge node",
        description="Join an edge node to the cloud, or run one that has joined. The node "
        "keeps its pods running without the cloud, and across restarts of this command.",
    )
    edge_sub = edge.add_subparsers(dest="edge_command", metavar="ACTION", required=True)
    join = edge_sub.add_parser(
        "join",
        help="join the cloud with a token, then run the node",
        description="Fetch the cloud's CA (checked against the token), get a node certificate "
        "for NODE, store them and the cloud's address in DIR (DIR/edge.json), then run the "
        "node against CloudHub at wss://HOST:HUB_PORT until SIGTERM or Ctrl-C, which stop "
        "it and leave its pods running.",
    )
    join.add_argument(
        "--cloud",
        required=True,
        metavar="HOST[:PORT]",
        help="the cloud's join endpoint (default port 10002)",
    )
    join.add_argument("--token", required=True, help="from `orbiter token create`")
    join.add_argument("--name", required=True, metavar="NODE", help="this node's name")
    join.add_argument("--hub-port", type=int, default=10000, help="CloudHub's port (10000)")
    run = edge_sub.add_parser(
        "run",
        help="run a node that has joined, from its data dir",
        description="Run the node whose credentials and cloud address `orbiter edge join` "
        "stored in DIR; no token needed. Pods left running by a previous run are adopted. "
        "SIGTERM or Ctrl-C stop it and leave its pods running.",
    )
    for action in (join, run):
        action.add_argument(
            "--data-dir",
            required=True,
            type=Path,
            metavar="DIR",
            help="credentials, local state (edge.db) and pods live here",
        )
        action.add_argument(
            "--metaserver-port",
            type=int,
            default=None,
            metavar="PORT",
            help="port of the local read-mostly API on 127.0.0.1 (default 10550, or what "
            "DIR/edge.json says)",
        )


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
        hub_port=args.hub_port,
        join_port=args.join_port,
    )
    await cloud.start()
    assert cloud.hub is not None and cloud.join is not None
    print(f"Orbiter API server at {cloud.server.url}", flush=True)
    print(f"edge nodes: join at {cloud.join.url}, CloudHub on port {cloud.hub.port}", flush=True)
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


EDGE_CONFIG = "edge.json"


async def _run_edge(args: argparse.Namespace) -> int:
    import json

    from .orchestration.edge.core import EdgeCore
    from .orchestration.edge.joining import JoinError, cloud_url, join

    config_path = args.data_dir / EDGE_CONFIG
    if args.edge_command == "join":
        try:
            base = cloud_url(args.cloud)
            await join(args.cloud, args.token, args.name, args.data_dir)
        except (JoinError, ValueError) as exc:
            print(f"orbiter edge join: {exc}", file=sys.stderr)
            return 1
        config = {"host": base.host, "join_port": base.port, "hub_port": args.hub_port}
        if args.metaserver_port is not None:
            config["metaserver_port"] = args.metaserver_port
        config_path.write_text(json.dumps(config, indent=2) + "\n")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        print(
            f"orbiter edge run: cannot read {config_path} ({exc}); join with "
            "`orbiter edge join` first",
            file=sys.stderr,
        )
        return 1
    host = str(config["host"])
    host = f"[{host}]" if ":" in host else host
    core = EdgeCore(
        args.data_dir,
        cloud_url=f"wss://{host}:{config['hub_port']}",
        metaserver_port=args.metaserver_port or int(config.get("metaserver_port", 10550)),
        join_address=f"{host}:{config['join_port']}",
    )
    await core.start()
    print(f"edge node {core.node_name}: cloud {core.cloud_url}", flush=True)
    print(f"MetaServer at {core.metaserver.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        print("stopping (pods keep running)", flush=True)
        await core.stop()
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
    if args.command == "edge":
        return _run(_run_edge(args))
    if args.command == "token":
        return _token_create(args)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(args.data_dir)
    return 2


if __name__ == "__main__":
    sys.exit(main())
