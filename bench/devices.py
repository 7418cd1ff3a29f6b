"""Device twin updates end to end: an MQTT ``twin/update`` on a node's broker → the value in
the Device's status through the API. Beside mosquitto's own publish → receive, same run.

Prints one JSON document. A cloud and one edge node run in this process (``orbiter.testing
.Cluster``, KubeEdge's periods: node status and sync loop every 5 s); ``--devices`` Devices
(one STRING property) are bound to the node. An aiomqtt client publishes KubeEdge's
``$hw/events/device/<ns>/<name>/twin/update`` with a new ``actual`` value to the node's broker;
a watch on devices (``LocalClient``) sees the value in ``status.twins[].reported``. The path:
broker → EventBus → DeviceTwin (store write) → outbox → EdgeHub → CloudHub → DeviceReports
(get + patch of the status) → watch. The node's answer on ``.../twin/update/result`` marks
the end of the edge's part.

1. Burst: ``--updates`` updates spread over the devices (round-robin, each a new value), with
   at most ``WINDOW`` published and not yet answered by the node (the broker drops QoS 1
   messages queued beyond its bound, as mosquitto does). From the first publish until every
   device's last value is in the API: updates/s. The outbox keeps only the latest message
   per property, so fewer status writes than updates may be needed; their count is given.
2. Latency: ``--rounds`` single updates one after another (a different device each time):
   publish → the node's result (edge) and publish → visible in the API watch; p50/p99.
3. Baseline: mosquitto 2.0 (its own process, stopped by PID), the same aiomqtt client, the
   same payload: ``--updates`` QoS 1 messages publish → receive with the same window, and
   ``--rounds`` single round trips.

Also: each DeviceReports.handle (the cloud's get + patch per report) timed, p50/p99.

    .venv/bin/python bench/devices.py [--devices 100] [--updates 2000] [--rounds 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
from orbiter.orchestration.client import DEVICEMODELS, DEVICES, LocalClient
from orbiter.orchestration.cloud.devicestatus import DeviceReports
from orbiter.orchestration.protocol import Message

from orbiter.testing import Cluster

MOSQUITTO = "/usr/sbin/mosquitto"
NS = "default"
PROP = "value"
WINDOW = 100
TIMEOUT = 300.0
START_TIMEOUT = 60.0


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return round(s[min(len(s) - 1, int(q * len(s)))] * 1000, 2) if s else float("nan")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def client(port: int, name: str, host: str = "127.0.0.1") -> aiomqtt.Client:
    c = aiomqtt.Client(host, port, identifier=name, keepalive=60)
    c.pending_calls_threshold = 1 << 30  # thousands of publishes in flight are intended here
    return c


def update_topic(name: str) -> str:
    return f"$hw/events/device/{NS}/{name}/twin/update"


def update_payload(event_id: str, value: str) -> bytes:
    """KubeEdge's twin/update body: a new actual value of one property."""
    twin = {PROP: {"actual": {"value": value}, "metadata": {"type": "Updated"}}}
    return orjson.dumps({"event_id": event_id, "timestamp": 0, "twin": twin})


# -- the cloud's part, timed ----------------------------------------------------------------


class Timed:
    """Wraps DeviceReports.handle (class-wide, before the cloud starts) to time each report."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._original = DeviceReports.handle

    def __enter__(self) -> Timed:
        original, samples = self._original, self.samples

        async def handle(reports: DeviceReports, node: str, message: Message) -> Message:
            started = time.perf_counter()
            try:
                return await original(reports, node, message)
            finally:
                samples.append(time.perf_counter() - started)

        DeviceReports.handle = handle  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        DeviceReports.handle = self._original  # type: ignore[method-assign]


# -- what the API shows -----------------------------------------------------------------------


class Shown:
    """The reported value of each Device as a watch on devices delivers it, with the time each
    (device, value) was first seen; ``writes`` counts the status changes seen."""

    def __init__(self, client: LocalClient) -> None:
        self.client = client
        self.first_seen: dict[tuple[str, str], float] = {}
        self.writes = 0
        self._waiters: dict[tuple[str, str], asyncio.Future[float]] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Shown:
        listed = await self.client.list(DEVICES, NS)
        for obj in listed["items"]:
            self._saw(obj)
        rv = listed["metadata"]["resourceVersion"]
        self._task = asyncio.create_task(self._watch(rv), name="bench device watch")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self, rv: str) -> None:
        async for event in self.client.watch(DEVICES, NS, resource_version=rv):
            if event["type"] == "MODIFIED":
                self.writes += 1
                self._saw(event["object"])

    def _saw(self, obj: dict[str, Any]) -> None:
        now = time.perf_counter()
        name = obj["metadata"]["name"]
        for twin in (obj.get("status") or {}).get("twins") or []:
            if twin.get("propertyName") == PROP:
                key = (name, str((twin.get("reported") or {}).get("value")))
                self.first_seen.setdefault(key, now)
                waiter = self._waiters.pop(key, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(now)

    def when(self, name: str, value: str) -> asyncio.Future[float]:
        """Resolves to the time ``value`` was first seen for ``name``."""
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        seen = self.first_seen.get((name, value))
        if seen is not None:
            fut.set_result(seen)
        else:
            self._waiters[(name, value)] = fut
        return fut


# -- the node's answers ----------------------------------------------------------------------


class Results:
    """The node's ``twin/update/result`` answers, by event_id: when each arrived."""

    def __init__(self, sub: aiomqtt.Client) -> None:
        self.sub = sub
        self.arrived: dict[str, float] = {}
        self.errors: list[bytes] = []
        self._waiters: dict[str, asyncio.Future[float]] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Results:
        await self.sub.subscribe(f"$hw/events/device/{NS}/+/twin/update/result", qos=1)
        self._task = asyncio.create_task(self._run(), name="bench results")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        async for message in self.sub.messages:
            now = time.perf_counter()
            payload = message.payload
            assert isinstance(payload, bytes)
            body = orjson.loads(payload)
            if "code" in body:
                self.errors.append(payload)
            event_id = body.get("event_id", "")
            self.arrived[event_id] = now
            waiter = self._waiters.pop(event_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(now)

    async def wait(self, event_id: str) -> float:
        """When the answer to ``event_id`` arrived (one waiter per event: a hundred of them
        woken at every answer would be this bench's own bottleneck)."""
        if event_id in self.arrived:
            return self.arrived[event_id]
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiters[event_id] = fut
        return await fut


# -- the cluster ----------------------------------------------------------------------------


def model() -> dict[str, Any]:
    return {
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "DeviceModel",
        "metadata": {"name": "bench-model", "namespace": NS},
        "spec": {
            "protocol": "bench",
            "properties": [{"name": PROP, "type": "STRING", "accessMode": "ReadOnly"}],
        },
    }


def device(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "Device",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "deviceModelRef": {"name": "bench-model"},
            "nodeName": "edge-0",
            "protocol": {"protocolName": "bench"},
            "properties": [{"name": PROP, "reportToCloud": True}],
        },
    }


async def until(check: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(START_TIMEOUT):
            while True:
                if check():
                    return
                await asyncio.sleep(0.05)  # polling a converging system: no event to await
    except TimeoutError:
        raise RuntimeError(f"timed out waiting for {what}") from None


async def orbiter_figures(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    names = [f"bench-{i:04d}" for i in range(args.devices)]
    with Timed() as timed:
        async with Cluster(workdir / "cluster", edges=1, sync_period=5.0, status_interval=5.0) as c:
            await c.wait_ready()
            await c.client.create(DEVICEMODELS, model(), NS)
            await asyncio.gather(*(c.client.create(DEVICES, device(n), NS) for n in names))
            twin = c.edges[0].devices.twin
            await until(
                lambda: all(twin.twin_document(NS, n) is not None for n in names),
                "the Devices on the node",
            )
            host, port = c.edges[0].devices.mqtt_address
            async with (
                Shown(c.client) as shown,
                client(port, "bench-pub", host) as pub,
                client(port, "bench-sub", host) as sub,
                Results(sub) as results,
            ):
                # Warm-up: every twin exists and is in the API once.
                await asyncio.gather(
                    *(pub.publish(update_topic(n), update_payload("", "w")) for n in names)
                )
                await asyncio.wait_for(
                    asyncio.gather(*(shown.when(n, "w") for n in names)), TIMEOUT
                )
                timed.samples.clear()
                burst = await orbiter_burst(args, names, pub, shown, results)
                burst["cloud_report_p50_ms"] = pct(timed.samples, 0.5)
                burst["cloud_report_p99_ms"] = pct(timed.samples, 0.99)
                burst["cloud_reports"] = len(timed.samples)
                timed.samples.clear()
                latency = await orbiter_latency(args, names, pub, shown, results)
                latency["cloud_report_p50_ms"] = pct(timed.samples, 0.5)
                latency["cloud_report_p99_ms"] = pct(timed.samples, 0.99)
    return {"burst": burst, "single": latency}


async def orbiter_burst(
    args: argparse.Namespace,
    names: list[str],
    pub: aiomqtt.Client,
    shown: Shown,
    results: Results,
) -> dict[str, Any]:
    window = asyncio.Semaphore(WINDOW)
    rounds = max(1, args.updates // len(names))
    total = rounds * len(names)
    writes = shown.writes
    last = {n: f"b{rounds - 1}" for n in names}
    finals = [shown.when(n, v) for n, v in last.items()]

    async def one(event_id: str, name: str, value: str) -> None:
        await pub.publish(update_topic(name), update_payload(event_id, value), qos=1)
        await results.wait(event_id)
        window.release()

    started = time.perf_counter()
    sent = []
    async with asyncio.timeout(TIMEOUT):
        for r in range(rounds):
            for n in names:
                await window.acquire()
                sent.append(asyncio.create_task(one(f"b{r}-{n}", n, f"b{r}")))
        await asyncio.gather(*sent)
        edge_done = time.perf_counter()
        done = max(await asyncio.gather(*finals))
    return {
        "updates": total,
        "devices": len(names),
        "updates_per_s": round(total / (done - started)),
        "edge_answered_per_s": round(total / (edge_done - started)),
        "seconds": round(done - started, 2),
        "status_writes": shown.writes - writes,
        "edge_errors": len(results.errors),
    }


async def orbiter_latency(
    args: argparse.Namespace,
    names: list[str],
    pub: aiomqtt.Client,
    shown: Shown,
    results: Results,
) -> dict[str, Any]:
    edge: list[float] = []
    api: list[float] = []
    async with asyncio.timeout(TIMEOUT):
        for i in range(args.rounds + 20):  # the first 20 warm up
            name, value, event_id = names[i % len(names)], f"s{i}", f"s{i}"
            visible = shown.when(name, value)
            started = time.perf_counter()
            await pub.publish(update_topic(name), update_payload(event_id, value), qos=1)
            answered = await results.wait(event_id)
            seen = await visible
            if i >= 20:
                edge.append(answered - started)
                api.append(seen - started)
    return {
        "rounds": args.rounds,
        "edge_p50_ms": pct(edge, 0.5),
        "edge_p99_ms": pct(edge, 0.99),
        "api_p50_ms": pct(api, 0.5),
        "api_p99_ms": pct(api, 0.99),
    }


# -- the baseline: mosquitto ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def mosquitto(workdir: Path) -> AsyncIterator[int]:
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n"
    )
    proc = await asyncio.create_subprocess_exec(
        MOSQUITTO, "-c", str(conf),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    drain: asyncio.Task[bytes] | None = None
    try:
        async with asyncio.timeout(START_TIMEOUT):
            while b" running" not in (line := await proc.stderr.readline()):
                if not line:
                    raise RuntimeError("mosquitto exited before it was ready")
        drain = asyncio.create_task(proc.stderr.read())  # a full pipe must never stall it
        yield port
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGTERM)
        await proc.wait()
        if drain is not None:
            await drain


async def mosquitto_figures(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    payload = update_payload("b0-bench-0000", "b0")  # the size of the updates above
    async with (
        mosquitto(workdir) as port,
        client(port, "base-sub") as sub,
        client(port, "base-pub") as pub,
    ):
        await sub.subscribe("bench/#", qos=1)
        messages = sub.messages
        window = asyncio.Semaphore(WINDOW)

        async def consume(n: int) -> float:
            for _ in range(n):
                await anext(messages)
                window.release()
            return time.perf_counter()

        async with asyncio.timeout(TIMEOUT):
            consumer = asyncio.create_task(consume(args.updates))
            started = time.perf_counter()
            sent = []
            for i in range(args.updates):
                await window.acquire()
                sent.append(asyncio.create_task(pub.publish(f"bench/{i % 100}", payload, 1)))
            await asyncio.gather(*sent)
            done = await consumer
            samples = []
            for i in range(args.rounds + 20):
                started_one = time.perf_counter()
                await pub.publish("bench/rtt", payload, qos=1)
                await anext(messages)
                if i >= 20:
                    samples.append(time.perf_counter() - started_one)
    return {
        "messages": args.updates,
        "msgs_per_s": round(args.updates / (done - started)),
        "rtt_p50_ms": pct(samples, 0.5),
        "rtt_p99_ms": pct(samples, 0.99),
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "devices": args.devices,
        "updates": args.updates,
        "rounds": args.rounds,
        "window": WINDOW,
        "clients": f"aiomqtt {aiomqtt.__version__} (paho), MQTT 3.1.1, QoS 1, in this process",
    }
    with tempfile.TemporaryDirectory() as tmp:
        figures["mosquitto"] = await mosquitto_figures(args, Path(tmp))
        figures["orbiter"] = await orbiter_figures(args, Path(tmp))
    ours, base = figures["orbiter"], figures["mosquitto"]
    figures["ratios"] = {
        "burst_vs_mosquitto": round(ours["burst"]["updates_per_s"] / base["msgs_per_s"], 3),
        "api_p50_vs_mosquitto_rtt": round(ours["single"]["api_p50_ms"] / base["rtt_p50_ms"], 1),
        "api_p99_vs_mosquitto_rtt": round(ours["single"]["api_p99_ms"] / base["rtt_p99_ms"], 1),
    }
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--updates", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=200)
    args = p.parse_args()
    print(json.dumps(asyncio.run(bench(args)), indent=2))


if __name__ == "__main__":
    main()
