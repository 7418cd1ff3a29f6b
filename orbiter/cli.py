"""The ``orbiter`` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from . import __version__
from .models_cli import add_models_parser, run_models
from .satellite.cli import add_satellite_parser, run_satellite
from .serve_cli import add_serve_parser, run_serve

T = TypeVar("T")


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
        description="Run the Kubernetes-compatible API server and the cloud controllers "
        "(the AI global manager's included). "
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
        "--router-port",
        metavar="PORT",
        type=int,
        default=9443,
        help="HTTP port of the router, where KubeEdge Rules take REST requests for edge "
        "nodes' MQTT topics: POST /NODE/NAMESPACE/PATH (default 9443; 0 picks one)",
    )
    cloud.add_argument(
        "--node-cert-days",
        metavar="DAYS",
        type=float,
        default=365.0,
        help="lifetime of the node certificates the join endpoint signs (default 365); "
        "nodes renew theirs at 70-90%% of it",
    )
    cloud.add_argument(
        "--sync-period",
        metavar="SECONDS",
        type=float,
        default=5.0,
        help="how often each node's acknowledged objects are checked against the API "
        "and what is missing or stale is resent (default 5)",
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
    _up_parser(sub)
    add_models_parser(sub)
    add_satellite_parser(sub)
    add_serve_parser(sub)
    return p


def _up_parser(sub: Any) -> None:
    up = sub.add_parser(
        "up",
        help="run a cloud and N edge nodes on this machine",
        description="Start `orbiter cloud` (data in DIR/cloud) and N edge nodes edge-0 ... "
        "(data in DIR/edge-<i>), each a separate process, and wait until every node is Ready. "
        "New nodes join with a fresh token; nodes whose dir exists run again from it (their "
        "pods are adopted). SIGTERM or Ctrl-C stop the nodes (their pods keep running), then "
        "the cloud. If one process dies, the others are stopped and the exit code is 1.",
    )
    up.add_argument(
        "--edges", type=int, default=1, metavar="N", help="how many edge nodes (default 1)"
    )
    up.add_argument(
        "--data-dir",
        required=True,
        type=Path,
        metavar="DIR",
        help="the cloud's and the nodes' state live under here",
    )
    for name, what in (
        ("api", "the API server"),
        ("hub", "CloudHub"),
        ("join", "the join endpoint"),
    ):
        up.add_argument(
            f"--{name}-port",
            type=int,
            default=0,
            metavar="PORT",
            help=f"port of {what} (default 0: a free one, printed)",
        )
    up.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="how long to wait for the cloud to start and the nodes to be Ready (default 120)",
    )


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
        action.add_argument(
            "--mqtt-port",
            type=int,
            default=None,
            metavar="PORT",
            help="port of the node's embedded MQTT broker on 127.0.0.1, where apps and mappers "
            "publish to $hw/events/... (default 1883, or what DIR/edge.json says; 0 picks "
            "a free one)",
        )
        action.add_argument(
            "--mqtt-broker",
            default=None,
            metavar="HOST:PORT",
            help="use this MQTT broker (e.g. mosquitto) instead of the embedded one",
        )
        action.add_argument(
            "--lc-port",
            type=int,
            default=None,
            metavar="PORT",
            help="port of the local controller on 127.0.0.1, where AI workers report (default "
            "9100, Sedna's, the global manager's LC_SERVER; or what DIR/edge.json says; 0 "
            "picks a free one)",
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
    from .collab import globalmanager
    from .collab.apis import load_sedna_crds
    from .orchestration.cloud.running import Cloud
    from .satellite import controllers as satellite_controllers
    from .satellite.advising import satellite_advisor
    from .satellite.apis import load_satellite_crds

    cloud = Cloud(
        args.data_dir,
        store_url=args.store,
        listen=args.listen,
        port=args.api_port,
        encryption_key_file=args.encryption_key_file,
        hub_port=args.hub_port,
        join_port=args.join_port,
        node_cert_days=args.node_cert_days,
        sync_period=args.sync_period,
        router_port=args.router_port,
        # The layers above orchestration bring their own kinds and controllers.
        crds=[*load_sedna_crds(), *load_satellite_crds()],
        controllers=[
            *globalmanager.controllers(advisor=satellite_advisor),
            *satellite_controllers.controllers(),
        ],
        upstream=globalmanager.upstream_handlers(),
    )
    await cloud.start()
    assert cloud.hub is not None and cloud.join is not None
    print(f"Orbiter API server at {cloud.server.url}", flush=True)
    print(f"edge nodes: join at {cloud.join.url}, CloudHub on port {cloud.hub.port}", flush=True)
    if cloud.router is not None:
        print(f"router (KubeEdge Rules) at {cloud.router.url}", flush=True)
    print(f"kubeconfig: {cloud.server.kubeconfig_path}", flush=True)
    print(f"  export KUBECONFIG={cloud.server.kubeconfig_path}", flush=True)
    try:
        await _until_signalled()
    finally:
        print("stopping", flush=True)
        await cloud.stop()
    return 0


async def _until_signalled() -> None:
    """Return on SIGINT or SIGTERM (Ctrl-C, or a service manager stopping us)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


EDGE_CONFIG = "edge.json"


async def _run_edge(args: argparse.Namespace) -> int:
    import json

    from .collab.localcontroller import DEFAULT_PORT as LC_PORT
    from .collab.localcontroller import LocalController, local_controller
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
        for option in ("metaserver_port", "mqtt_port", "mqtt_broker", "lc_port"):
            if getattr(args, option) is not None:
                config[option] = getattr(args, option)
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
        metaserver_port=(
            args.metaserver_port
            if args.metaserver_port is not None
            else int(config.get("metaserver_port", 10550))
        ),
        join_address=f"{host}:{config['join_port']}",
        mqtt_port=(
            args.mqtt_port if args.mqtt_port is not None else int(config.get("mqtt_port", 1883))
        ),
        mqtt_broker=args.mqtt_broker or config.get("mqtt_broker"),
        # The AI layer's local controller, run inside the node (orchestration never knows it).
        extensions=[
            local_controller(
                port=args.lc_port
                if args.lc_port is not None
                else int(config.get("lc_port", LC_PORT))
            )
        ],
    )
    await core.start()
    print(f"edge node {core.node_name}: cloud {core.cloud_url}", flush=True)
    print(f"MetaServer at {core.metaserver.url}", flush=True)
    mqtt_host, mqtt_port = core.devices.mqtt_address
    print(f"MQTT broker at {mqtt_host}:{mqtt_port}", flush=True)
    for extension in core.extensions:
        if isinstance(extension, LocalController):
            print(f"local controller at {extension.url}", flush=True)
    try:
        await _until_signalled()
    finally:
        print("stopping (pods keep running)", flush=True)
        await core.stop()
    return 0


_CLOUD_LINES = {
    "api": re.compile(r"Orbiter API server at (\S+)"),
    "join": re.compile(r"edge nodes: join at (\S+), CloudHub on port (\d+)"),
    "kubeconfig": re.compile(r"kubeconfig: (.+)"),
}
_STOP_TIMEOUT = 30.0  # per child, after SIGTERM, before SIGKILL


class _Up:
    """``orbiter up``: the cloud and N edge nodes as child processes, stopped by PID."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.data = Path(args.data_dir).absolute()
        self.children: list[tuple[str, asyncio.subprocess.Process]] = []
        self.stop = asyncio.Event()
        self.stopping = False
        self.died: str | None = None
        self.cloud_info: dict[str, str] = {}
        self.cloud_started = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def spawn(self, name: str, argv: list[str]) -> None:
        verbose = ["-v"] if self.args.verbose else []
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "orbiter.cli",
            *verbose,
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            # Its own session: a terminal's Ctrl-C reaches only us, and we stop the children
            # in order (edges, then the cloud).
            start_new_session=True,
        )
        self.children.append((name, proc))
        self._tasks.append(asyncio.create_task(self._forward(name, proc)))
        self._tasks.append(asyncio.create_task(self._watch(name, proc)))

    async def _forward(self, name: str, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            text = line.decode(errors="replace").rstrip()
            print(f"[{name}] {text}", flush=True)
            if name == "cloud":
                for key, pattern in _CLOUD_LINES.items():
                    if m := pattern.match(text):
                        self.cloud_info[key] = m.group(1)
                        if key == "join":
                            self.cloud_info["hub_port"] = m.group(2)
                if "kubeconfig" in self.cloud_info:
                    self.cloud_started.set()

    async def _watch(self, name: str, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if not self.stopping:
            self.died = self.died or f"{name} (pid {proc.pid}) exited with code {code}"
            self.stop.set()

    async def until_stopped(self, aw: Coroutine[Any, Any, T]) -> T | None:
        """``aw``'s result, or None once a signal or a dead child asks us to stop."""
        task = asyncio.ensure_future(aw)
        stopper = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            task.cancel()
            await asyncio.gather(task, stopper, return_exceptions=True)
        return None if task.cancelled() else task.result()

    async def shutdown(self) -> None:
        self.stopping = True
        edges = [c for c in self.children if c[0] != "cloud"]
        cloud = [c for c in self.children if c[0] == "cloud"]
        await asyncio.gather(*(self._terminate(n, p) for n, p in edges))
        await asyncio.gather(*(self._terminate(n, p) for n, p in cloud))
        # Output ends at EOF, unless something the child started still holds the pipe.
        _, pending = await asyncio.wait(self._tasks, timeout=5.0) if self._tasks else ((), ())
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _terminate(self, name: str, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), _STOP_TIMEOUT)
            except TimeoutError:
                print(f"orbiter up: {name} did not stop; killing it", file=sys.stderr, flush=True)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    async def run(self) -> int:
        from .orchestration.cloud.joining import create_join_token

        args = self.args
        cloud_dir = self.data / "cloud"
        await self.spawn(
            "cloud",
            [
                "cloud",
                "--data-dir",
                str(cloud_dir),
                "--api-port",
                str(args.api_port),
                "--hub-port",
                str(args.hub_port),
                "--join-port",
                str(args.join_port),
                "--router-port",
                "0",
            ],
        )
        started = await self.until_stopped(
            asyncio.wait_for(self.cloud_started.wait(), args.timeout)
        )
        if started is None:
            return 0  # a signal, or a dead child (reported by the caller)
        info = self.cloud_info
        join_port = URL_PORT.search(info["join"])
        assert join_port is not None
        hub_port = info["hub_port"]
        print(
            f"orbiter up: API server {info['api']}, CloudHub port {hub_port}, join port "
            f"{join_port.group(1)}",
            flush=True,
        )
        token = create_join_token(cloud_dir, 3600.0)
        names = [f"edge-{i}" for i in range(args.edges)]
        for name in names:
            edge_dir = self.data / name
            config_path = edge_dir / EDGE_CONFIG
            if config_path.exists():
                # The cloud's ports may differ from the last run (0 picks free ones).
                config = json.loads(config_path.read_text())
                config.update(host="127.0.0.1", join_port=int(join_port.group(1)))
                config["hub_port"] = int(hub_port)
                config_path.write_text(json.dumps(config, indent=2) + "\n")
                argv = ["edge", "run"]
            else:
                argv = ["edge", "join", "--cloud", f"127.0.0.1:{join_port.group(1)}"]
                argv += ["--token", token, "--name", name, "--hub-port", hub_port]
            argv += ["--data-dir", str(edge_dir), "--metaserver-port", "0", "--mqtt-port", "0"]
            # Free ports: several nodes share this host; each LC announces its URL, which the
            # global manager gives the workers pinned (nodeName) to that node as LC_SERVER.
            argv += ["--lc-port", "0"]
            await self.spawn(name, argv)
        ready = await self.until_stopped(
            asyncio.wait_for(_nodes_ready(Path(info["kubeconfig"]), names), args.timeout)
        )
        if ready is None:
            return 0
        print(f"orbiter up: {len(names)} edge node(s) Ready: {', '.join(names)}", flush=True)
        print(f"kubeconfig: {info['kubeconfig']}", flush=True)
        print(f"  export KUBECONFIG={info['kubeconfig']}", flush=True)
        await self.stop.wait()
        return 0


URL_PORT = re.compile(r":(\d+)/?$")


async def _nodes_ready(kubeconfig: Path, names: list[str]) -> bool:
    """Poll the API until every named node is Ready with a heartbeat from this run."""
    from datetime import UTC, datetime, timedelta

    from .orchestration.client import NODES, KubeClient

    # A node from an earlier run still reads Ready in the API: only a fresh heartbeat counts.
    since = (datetime.now(UTC) - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    client = KubeClient.from_kubeconfig(kubeconfig)
    try:
        while True:
            with contextlib.suppress(Exception):  # not serving yet: try again
                ready = set()
                for node in (await client.list(NODES))["items"]:
                    for c in (node.get("status") or {}).get("conditions") or []:
                        if (
                            c.get("type") == "Ready"
                            and c.get("status") == "True"
                            and str(c.get("lastHeartbeatTime", "")) >= since
                        ):
                            ready.add(node["metadata"]["name"])
                if set(names) <= ready:
                    return True
            await asyncio.sleep(0.5)  # polling a converging system: no event to await
    finally:
        await client.close()


async def _run_up(args: argparse.Namespace) -> int:
    if args.edges < 0:
        print("orbiter up: --edges must be 0 or more", file=sys.stderr)
        return 2
    up = _Up(args)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, up.stop.set)
    code = 1
    try:
        code = await up.run()
    except TimeoutError:
        print(f"orbiter up: not ready after {args.timeout:g} s", file=sys.stderr, flush=True)
        code = 1
    finally:
        print("orbiter up: stopping the edge nodes, then the cloud", flush=True)
        await up.shutdown()
    if up.died is not None:
        print(f"orbiter up: {up.died}; stopped the rest", file=sys.stderr, flush=True)
        return 1
    return code


def _run(main: Coroutine[Any, Any, int], *, fast_loop: bool = True) -> int:
    # uvloop serves about 1.3x the requests per core here; plain asyncio works the same, and
    # an edge node, which serves few requests, keeps the 2 MB uvloop costs (bench/edge.py).
    if not fast_loop:
        return asyncio.run(main)
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
        return _run(_run_edge(args), fast_loop=False)
    if args.command == "up":
        return _run(_run_up(args))
    if args.command == "token":
        return _token_create(args)
    if args.command == "models":
        return run_models(args)
    if args.command == "satellite":
        return run_satellite(args)
    if args.command == "serve":
        return _run(run_serve(args))
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(args.data_dir)
    return 2


if __name__ == "__main__":
    sys.exit(main())
