"""Edge benchmark: pod startup latency, cloud→edge messages/s, EdgeCore resident memory.

Prints one JSON document; each figure stands beside a baseline measured in the same run.
The cloud runs as its own process (``orbiter cloud``), each edge node as its own process
(``orbiter edge join``); the load and the observers are this process, over HTTPS (admin token)
to the API and plain HTTP to a node's MetaServer. Everything on 127.0.0.1.

1. Pod startup: ``--pods`` bare Pods (``image: python``, sleeping) created as fast as
   possible, spread by the scheduler over ``--nodes`` nodes; a watch opened before the first
   create timestamps each pod's first ``status.phase == Running``. Baseline: the same
   command started ``--pods`` times at once with ``asyncio.create_subprocess_exec``, timed to
   its first line on stdout (the interpreter-startup floor, no wrapper, no API).
2. cloud→edge messages/s: one pod on edge-0 mounts ``--configmaps`` ConfigMaps; ``--messages``
   merge patches of them through the API. Observable: MODIFIED events on the node's MetaServer
   watch, i.e. writes MetaManager committed; it ACKs each right after the commit, and the
   cloud keeps up to 64 un-ACKed per node (one per object), so this is the rate of
   acknowledged deliveries, newer versions coalescing older ones still queued. Then a backlog:
   ``--backlog`` ConfigMaps already exist when a pod on edge-0 starts to reference them all,
   so they are queued at once and only the delivery path sets the pace. Baseline: round trips
   of a message of the same size over an mTLS WebSocket (aiohttp, the node's and CloudHub's
   certificates) to an echo server in its own process, one at a time and 64 ahead.
3. Memory: a fresh node (``idle-0``, its own process) with ``--idle-pods`` pods Running and
   idle: VmRSS of the EdgeCore process only (its pods are separate processes, listed apart),
   beside a bare ``python -c "import time; time.sleep(60)"``.

    .venv/bin/python bench/edge.py [--nodes 10] [--pods 100] [--idle-pods 20] [--messages 2000]
        [--backlog 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import aiohttp
import orjson
import yaml
from aiohttp import web

PY = sys.executable
SLEEP = "import time; time.sleep(3600)"
NS = "default"
START_TIMEOUT = 60.0
WINDOW = 64  # NodeQueue's default window of un-ACKed messages
FREE_PORTS = ("--api-port", "0", "--hub-port", "0", "--join-port", "0", "--router-port", "0")


def pct(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    s = sorted(samples)
    return round(s[min(len(s) - 1, int(q * len(s)))] * 1000, 1)  # milliseconds


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": pct(samples, 0.5),
        "p90_ms": pct(samples, 0.9),
        "p99_ms": pct(samples, 0.99),
        "max_ms": round(max(samples) * 1000, 1) if samples else float("nan"),
    }


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry))
    return out


class Procs:
    """Every process this benchmark starts, stopped by PID; pods are found by their marker."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.marker = f"orbiter-bench-edge-{os.getpid()}"
        self.cloud: asyncio.subprocess.Process | None = None
        self.edges: dict[str, asyncio.subprocess.Process] = {}

    async def spawn(self, name: str, argv: list[str]) -> asyncio.subprocess.Process:
        err = _log_file(self.tmp / f"{name}.log")
        try:
            return await asyncio.create_subprocess_exec(
                PY,
                "-m",
                "orbiter.cli",
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                start_new_session=True,  # a terminal's Ctrl-C reaches only us; we stop them
            )
        finally:
            err.close()

    async def read_until(self, proc: asyncio.subprocess.Process, pattern: str) -> re.Match[str]:
        assert proc.stdout is not None
        rx = re.compile(pattern)
        async with asyncio.timeout(START_TIMEOUT):
            while line := await proc.stdout.readline():
                if m := rx.search(line.decode()):
                    return m
        raise RuntimeError(f"pid {proc.pid} exited before printing {pattern!r}")

    async def stop(self) -> None:
        # Nodes first (SIGTERM leaves their pods running), then the pods, then the cloud.
        await asyncio.gather(*(_terminate(p) for p in self.edges.values()))
        self.kill_pods()
        if self.cloud is not None:
            await _terminate(self.cloud)

    def kill_pods(self) -> None:
        """SIGKILL every pod process: containers carry the marker in argv, wrappers our tmp
        dir (their run dir); the nodes and the cloud, whose argv holds it too, are excluded."""
        ours = {os.getpid()} | {p.pid for p in self.edges.values()}
        if self.cloud is not None:
            ours.add(self.cloud.pid)
        keys = (self.marker.encode(), str(self.tmp).encode())
        for _ in range(5):
            found = []
            for entry in os.listdir("/proc"):
                if entry.isdigit() and int(entry) not in ours:
                    with contextlib.suppress(OSError):
                        cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
                        if any(k in cmd for k in keys):
                            found.append(int(entry))
            if not found:
                return
            for pid in found:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)


def _log_file(path: Path) -> IO[bytes]:
    return open(path, "wb")  # the child writes it; we close our copy after the spawn


def _dump_logs(tmp: Path) -> None:
    """What the children said, for a failed run."""
    for log in sorted(tmp.glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-15:]
        print(f"--- {log.name}\n" + "\n".join(tail), file=sys.stderr)


async def _terminate(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


def pod(name: str, marker: str, labels: dict[str, str], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {"name": "main", "image": "python", "command": ["python", "-c", SLEEP, marker]}
            ],
            **spec,
        },
    }


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.procs = Procs(tmp)
        self.cloud_dir = tmp / "cloud"
        self.out: dict[str, Any] = {}

    async def start_cloud(self) -> None:
        self.procs.cloud = await self.procs.spawn(
            "cloud",
            ["cloud", "--data-dir", str(self.cloud_dir), *FREE_PORTS],
        )
        m = await self.procs.read_until(
            self.procs.cloud, r"join at \S+:(\d+)/?, CloudHub on port (\d+)"
        )
        self.join_port, self.hub_port = m.group(1), m.group(2)
        await self.procs.read_until(self.procs.cloud, r"^kubeconfig:")
        config = yaml.safe_load((self.cloud_dir / "kubeconfig").read_text())
        self.url = config["clusters"][0]["cluster"]["server"]
        self.token = config["users"][0]["user"]["token"]
        proc = await asyncio.create_subprocess_exec(
            PY, "-m", "orbiter.cli", "token", "create", "--data-dir", str(self.cloud_dir),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        self.join_token = out.decode().strip()

    async def join(self, name: str) -> str:
        """Start node ``name`` as its own process; its MetaServer URL."""
        proc = await self.procs.spawn(
            name,
            [
                *("edge", "join", "--cloud", f"127.0.0.1:{self.join_port}"),
                *("--token", self.join_token, "--name", name, "--hub-port", self.hub_port),
                *("--data-dir", str(self.tmp / name), "--metaserver-port", "0", "--mqtt-port", "0"),
            ],
        )
        self.procs.edges[name] = proc
        return (await self.procs.read_until(proc, r"MetaServer at (\S+)")).group(1)

    async def wait_ready(self, http: aiohttp.ClientSession, names: set[str]) -> None:
        from orbiter.testing import node_ready

        async with asyncio.timeout(START_TIMEOUT):
            while True:
                async with http.get("/api/v1/nodes") as r:
                    items = (await r.json())["items"]
                if names <= {n["metadata"]["name"] for n in items if node_ready(n)}:
                    return
                await asyncio.sleep(0.2)  # polling a converging system: no event to await

    async def run(self) -> dict[str, Any]:
        args = self.args
        await self.start_cloud()
        ctx = ssl.create_default_context(cafile=str(self.cloud_dir / "ca.crt"))
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        conn = aiohttp.TCPConnector(ssl=ctx, limit=64)
        async with aiohttp.ClientSession(self.url, headers=headers, connector=conn) as http:
            names = [f"edge-{i}" for i in range(args.nodes)]
            t0 = time.perf_counter()
            urls = await asyncio.gather(*(self.join(n) for n in names))
            await self.wait_ready(http, set(names))
            self.out["edge_layout"] = (
                f"{args.nodes} EdgeCore processes (orbiter edge join), one per node, "
                "beside one orbiter cloud process"
            )
            self.out["nodes_join_to_ready_s"] = round(time.perf_counter() - t0, 2)
            await asyncio.sleep(2.0)  # settle after start-up before sampling memory
            idle = [rss_kb(p.pid) for p in self.procs.edges.values()]
            self.out["edgecore_rss_mb_no_pods_mean"] = round(sum(idle) / len(idle) / 1024, 1)
            self.out["startup"] = await self.pod_startup(http)
            self.out["startup_baseline"] = await self.popen_baseline(args.pods)
            self.out["messages"] = await self.messages(http, urls[0])
            self.out["messages_backlog"] = await self.backlog(http, urls[0])
            self.out["messages_baseline"] = await self.echo_baseline()
            self.out["memory"] = await self.memory(http)
        return self.out

    # -- 1. pod startup ------------------------------------------------------------------

    async def pod_startup(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        n = self.args.pods
        base = f"/api/v1/namespaces/{NS}/pods"
        async with http.get(base, params={"limit": "1"}) as r:
            rv = (await r.json())["metadata"]["resourceVersion"]
        created: dict[str, float] = {}
        running: dict[str, float] = {}
        all_running = asyncio.Event()

        async def watch() -> None:
            params = {
                "watch": "true",
                "resourceVersion": rv,
                "labelSelector": "bench=startup",
                "timeoutSeconds": "600",
            }
            async with http.get(base, params=params, timeout=aiohttp.ClientTimeout(None)) as r:
                async for line in r.content:
                    obj = orjson.loads(line)["object"]
                    name = obj["metadata"]["name"]
                    phase = (obj.get("status") or {}).get("phase")
                    if phase == "Running" and name not in running:
                        running[name] = time.perf_counter()
                        if len(running) == n:
                            all_running.set()
                            return

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0.5)  # the watch is registered before the first create
        names = iter(range(n))

        async def creator() -> None:
            for i in names:
                body = orjson.dumps(pod(f"p-{i}", self.procs.marker, {"bench": "startup"}))
                created[f"p-{i}"] = time.perf_counter()
                async with http.post(base, data=body) as r:
                    assert r.status == 201, await r.text()

        t0 = time.perf_counter()
        try:
            await asyncio.gather(*(creator() for _ in range(16)))
            t_created = time.perf_counter()
            await asyncio.wait_for(all_running.wait(), 300)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        wall = time.perf_counter() - t0
        lat = [running[k] - created[k] for k in running]
        async with http.get(base, params={"labelSelector": "bench=startup"}) as r:
            spread: dict[str, int] = {}
            for p in (await r.json())["items"]:
                node = p["spec"].get("nodeName", "")
                spread[node] = spread.get(node, 0) + 1
        return {
            "pods": n,
            "create_concurrency": 16,
            **summary(lat),
            "creates_done_s": round(t_created - t0, 2),
            "all_running_wall_s": round(wall, 2),
            "pods_per_node": sorted(spread.values()),
        }

    async def popen_baseline(self, n: int) -> dict[str, Any]:
        code = "print('up', flush=True); " + SLEEP
        started: list[float] = []
        procs: list[asyncio.subprocess.Process] = []

        async def one() -> float:
            t = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(
                PY, "-c", code, self.procs.marker, stdout=asyncio.subprocess.PIPE
            )
            procs.append(proc)
            assert proc.stdout is not None
            await proc.stdout.readline()
            return time.perf_counter() - t

        t0 = time.perf_counter()
        try:
            started = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), 120)
            wall = time.perf_counter() - t0
        finally:
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        return {
            "what": f"{n} x `python -c <print; sleep>` spawned at once, to first stdout line",
            **summary(started),
            "all_up_wall_s": round(wall, 2),
        }

    # -- 2. cloud -> edge messages -------------------------------------------------------

    async def messages(self, http: aiohttp.ClientSession, metaserver: str) -> dict[str, Any]:
        k, total = self.args.configmaps, self.args.messages
        cms = f"/api/v1/namespaces/{NS}/configmaps"
        for j in range(k):
            body = {"metadata": {"name": f"cm-{j}", "labels": {"bench": "msg"}}, "data": {}}
            async with http.post(cms, data=orjson.dumps(body)) as r:
                assert r.status == 201, await r.text()
        reader = pod(
            "cm-reader",
            self.procs.marker,
            {"bench": "msg"},
            nodeName="edge-0",
            volumes=[{"name": f"cm-{j}", "configMap": {"name": f"cm-{j}"}} for j in range(k)],
        )
        reader["spec"]["containers"][0]["volumeMounts"] = [
            {"name": f"cm-{j}", "mountPath": f"/cfg/{j}"} for j in range(k)
        ]
        async with http.post(f"/api/v1/namespaces/{NS}/pods", data=orjson.dumps(reader)) as r:
            assert r.status == 201, await r.text()

        async with aiohttp.ClientSession(metaserver) as edge:
            local = f"/api/v1/namespaces/{NS}/configmaps"
            async with asyncio.timeout(START_TIMEOUT):  # every ConfigMap is on the node
                while True:
                    async with edge.get(local, params={"labelSelector": "bench=msg"}) as r:
                        listed = await r.json()
                    if len(listed["items"]) == k:
                        break
                    await asyncio.sleep(0.1)  # polling a converging system
            final = {f"cm-{i % k}": str(i) for i in range(total)}  # the last seq of each
            seen: dict[str, str] = {}
            delivered: list[float] = []
            done = asyncio.Event()

            async def watch() -> None:
                params = {
                    "watch": "true",
                    "resourceVersion": listed["metadata"]["resourceVersion"],
                    "labelSelector": "bench=msg",
                }
                timeout = aiohttp.ClientTimeout(None)
                async with edge.get(local, params=params, timeout=timeout) as r:
                    async for line in r.content:
                        ev = orjson.loads(line)
                        if ev["type"] != "MODIFIED":
                            continue
                        delivered.append(time.perf_counter())
                        obj = ev["object"]
                        seen[obj["metadata"]["name"]] = (obj.get("data") or {}).get("seq", "")
                        if seen == final:
                            done.set()
                            return

            watcher = asyncio.create_task(watch())
            await asyncio.sleep(0.5)
            seqs = iter(range(total))
            patch_headers = {"Content-Type": "application/merge-patch+json"}

            async def writer() -> None:
                for i in seqs:
                    body = orjson.dumps({"data": {"seq": str(i), "v": "x" * 200}})
                    async with http.patch(
                        f"{cms}/cm-{i % k}", data=body, headers=patch_headers
                    ) as r:
                        assert r.status == 200, await r.text()

            t0 = time.perf_counter()
            try:
                await asyncio.gather(*(writer() for _ in range(8)))
                t_written = time.perf_counter()
                await asyncio.wait_for(done.wait(), 300)
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
        span = delivered[-1] - t0
        return {
            "what": f"{total} merge patches over {k} ConfigMaps mounted by one pod on edge-0; "
            "counted: MODIFIED events on edge-0's MetaServer watch (MetaManager commits, each "
            "ACKed right after; up to 64 un-ACKed per node, one per object)",
            "updates_sent": total,
            "api_patches_per_s": round(total / (t_written - t0), 1),
            "deliveries": len(delivered),
            "coalesced_away": total - len(delivered),
            "deliveries_per_s": round(len(delivered) / span, 1),
            "last_version_at_edge_after_last_patch_ms": round(
                (delivered[-1] - t_written) * 1000, 1
            ),
        }

    async def backlog(self, http: aiohttp.ClientSession, metaserver: str) -> dict[str, Any]:
        """The delivery path alone, no producer in the way: ``--backlog`` ConfigMaps exist
        first; one pod on edge-0 that references them all puts them on the node's queue at
        once."""
        n = self.args.backlog
        cms = f"/api/v1/namespaces/{NS}/configmaps"

        async def create(names: list[str]) -> None:
            for name in names:
                body = {"metadata": {"name": name, "labels": {"bench": "backlog"}}}
                body["data"] = {"v": "x" * 200}
                async with http.post(cms, data=orjson.dumps(body)) as r:
                    assert r.status == 201, await r.text()

        names = [f"backlog-{j}" for j in range(n)]
        await asyncio.gather(*(create(names[j::8]) for j in range(8)))
        reader = pod("backlog-reader", self.procs.marker, {"bench": "backlog"}, nodeName="edge-0")
        reader["spec"]["containers"][0]["envFrom"] = [
            {"configMapRef": {"name": name}} for name in names
        ]
        async with aiohttp.ClientSession(metaserver) as edge:
            local = f"/api/v1/namespaces/{NS}/configmaps"
            params = {"labelSelector": "bench=backlog"}
            async with edge.get(local, params=params) as r:
                listed = await r.json()
            arrived: list[float] = []
            done = asyncio.Event()

            async def watch() -> None:
                query = {**params, "watch": "true"}
                query["resourceVersion"] = listed["metadata"]["resourceVersion"]
                timeout = aiohttp.ClientTimeout(None)
                async with edge.get(local, params=query, timeout=timeout) as r:
                    async for line in r.content:
                        if orjson.loads(line)["type"] == "ADDED":
                            arrived.append(time.perf_counter())
                            if len(arrived) == n:
                                done.set()
                                return

            watcher = asyncio.create_task(watch())
            await asyncio.sleep(0.5)  # the watch is open (a MetaServer watch sends no bookmark)
            t0 = time.perf_counter()
            try:
                async with http.post(
                    f"/api/v1/namespaces/{NS}/pods", data=orjson.dumps(reader)
                ) as r:
                    assert r.status == 201, await r.text()
                await asyncio.wait_for(done.wait(), 300)
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
        return {
            "what": f"{n} ConfigMaps, created first, reach edge-0 when one pod there starts to "
            "reference them all (envFrom): ADDED events on its MetaServer watch, from the pod's "
            "creation to the last one",
            "configmaps": n,
            "deliveries_per_s": round(n / (arrived[-1] - t0), 1),
            "first_after_ms": round((arrived[0] - t0) * 1000, 1),
        }

    async def echo_baseline(self) -> dict[str, Any]:
        proc = await asyncio.create_subprocess_exec(
            PY, __file__, "--echo-server", str(self.cloud_dir), stdout=asyncio.subprocess.PIPE
        )
        try:
            assert proc.stdout is not None
            port = int((await asyncio.wait_for(proc.stdout.readline(), 30)).decode())
            from orbiter.orchestration.edge.joining import NodeCredentials

            ctx = NodeCredentials.load(self.tmp / "edge-0").ssl_context()
            # about a delivered ConfigMap message's size
            payload = orjson.dumps({"header": {"msg_id": "x" * 36}, "content": "x" * 700})
            n = self.args.messages
            async with (
                aiohttp.ClientSession() as s,
                s.ws_connect(f"wss://127.0.0.1:{port}/echo", ssl=ctx) as ws,
            ):
                for _ in range(50):  # warm-up
                    await ws.send_bytes(payload)
                    await ws.receive()
                t0 = time.perf_counter()
                for _ in range(n):
                    await ws.send_bytes(payload)
                    await ws.receive()
                rate = n / (time.perf_counter() - t0)

                window = asyncio.Semaphore(WINDOW)

                async def receive(count: int) -> None:
                    for _ in range(count):
                        await ws.receive()
                        window.release()

                # Pipelined as NodeQueue sends: up to WINDOW frames out before their echoes.
                t0 = time.perf_counter()
                receiver = asyncio.create_task(receive(n))
                for _ in range(n):
                    await window.acquire()
                    await ws.send_bytes(payload)
                await receiver
                pipelined = n / (time.perf_counter() - t0)
        finally:
            await _terminate(proc)
        return {
            "what": f"{n} round trips of {len(payload)} B over an mTLS WebSocket (aiohttp; "
            "node cert -> CloudHub cert) to an echo server in its own process, one at a time "
            f"and pipelined ({WINDOW} ahead)",
            "round_trips_per_s": round(rate, 1),
            "pipelined_per_s": round(pipelined, 1),
        }

    # -- 3. memory -----------------------------------------------------------------------

    async def memory(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        n = self.args.idle_pods
        await self.join("idle-0")
        await self.wait_ready(http, {"idle-0"})
        edge = self.procs.edges["idle-0"]
        await asyncio.sleep(2.0)
        rss_empty = rss_kb(edge.pid)
        base = f"/api/v1/namespaces/{NS}/pods"
        for i in range(n):
            body = pod(f"idle-{i}", self.procs.marker, {"bench": "idle"}, nodeName="idle-0")
            async with http.post(base, data=orjson.dumps(body)) as r:
                assert r.status == 201, await r.text()
        async with asyncio.timeout(120):
            while True:
                async with http.get(base, params={"labelSelector": "bench=idle"}) as r:
                    items = (await r.json())["items"]
                if sum((p.get("status") or {}).get("phase") == "Running" for p in items) == n:
                    break
                await asyncio.sleep(0.5)  # polling a converging system
        await asyncio.sleep(5.0)  # idle: past the start-up burst
        samples = []
        for _ in range(3):
            samples.append(rss_kb(edge.pid))
            await asyncio.sleep(1.0)
        wrappers = children(edge.pid)
        containers = [c for w in wrappers for c in children(w)]
        bare = await asyncio.create_subprocess_exec(PY, "-c", "import time; time.sleep(60)")
        try:
            await asyncio.sleep(1.0)
            bare_rss = rss_kb(bare.pid)
        finally:
            bare.kill()
            await bare.wait()

        def mean_mb(pids: list[int]) -> float:
            return round(sum(rss_kb(p) for p in pids) / max(1, len(pids)) / 1024, 1)

        return {
            "idle_pods": n,
            "edgecore_rss_mb": round(max(samples) / 1024, 1),
            "edgecore_rss_mb_no_pods": round(rss_empty / 1024, 1),
            "bare_python_sleep_rss_mb": round(bare_rss / 1024, 1),
            "wrapper_processes": len(wrappers),
            "wrapper_rss_mb_mean": mean_mb(wrappers),
            "container_processes": len(containers),
            "container_rss_mb_mean": mean_mb(containers),
            "kubeedge_edgecore_reference_mb": 70,
        }


def echo_server(cloud_dir: Path) -> None:
    from orbiter.orchestration.cloud.hub import mtls_server_context

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_bytes(msg.data)
        return ws

    async def main() -> None:
        ctx = mtls_server_context(
            cloud_dir / "cloudhub.crt", cloud_dir / "cloudhub.key", cloud_dir / "ca.crt"
        )
        app = web.Application()
        app.router.add_get("/echo", echo)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        print(site._server.sockets[0].getsockname()[1], flush=True)  # type: ignore[union-attr]
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())


async def amain(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    bench = Bench(args, tmp)
    try:
        return await bench.run()
    except BaseException:
        _dump_logs(tmp)
        raise
    finally:
        await bench.procs.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", type=int, default=10)
    p.add_argument("--pods", type=int, default=100)
    p.add_argument("--idle-pods", type=int, default=20)
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--configmaps", type=int, default=20, help="ConfigMaps the updates rotate over")
    p.add_argument("--backlog", type=int, default=1000, help="ConfigMaps queued for a node at once")
    p.add_argument("--echo-server", type=Path, help=argparse.SUPPRESS)  # the baseline's peer
    args = p.parse_args()
    if args.echo_server is not None:
        echo_server(args.echo_server)
        return
    with tempfile.TemporaryDirectory(prefix="orbiter-bench-edge-") as tmp:
        figures = asyncio.run(amain(args, Path(tmp)))
    figures["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
