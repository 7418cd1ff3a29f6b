"""MQTT broker benchmark: our embedded Broker beside mosquitto 2.0.11, measured in the same run.

Prints one JSON document. Each broker runs as its own process on 127.0.0.1: mosquitto with
the reference config (anonymous, no persistence), ours under the stdlib asyncio loop and under
uvloop (what the ``orbiter`` CLI runs EdgeCore on). The clients are aiomqtt 2.5.1 (on paho) in
this process, MQTT 3.1.1, for every broker alike; mosquitto is the baseline and every figure of
ours comes with its ratio to mosquitto's.

1. Throughput: one subscriber (QoS 1), one publisher sending ``--messages`` QoS 1 messages of
   ``--size`` bytes with at most 100 sent and not yet received; from the first publish to the
   last message received. Median of ``--runs`` runs.
2. Round trip: ``--rounds`` single QoS 1 messages one after another, from publish() to the
   subscriber receiving it; p50 and p99.
3. The broker process's CPU time per message during the throughput runs (utime + stime from
   /proc): the clients, all Python in one process, set the pace of 1. for every broker, so
   this is where the brokers' own cost shows. And its resident memory (VmRSS) after the runs.

    .venv/bin/python bench/mqtt.py [--messages 5000] [--size 64] [--rounds 1000] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt

MOSQUITTO = "/usr/sbin/mosquitto"
START_TIMEOUT = 10.0
RUN_TIMEOUT = 120.0
WINDOW = 100

# Our broker as its own process: prints its port, stops on SIGTERM.
BROKER = """
import asyncio, signal, sys
from orbiter.orchestration.edge.eventbus import Broker

async def main():
    async with Broker(port=0) as broker:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print("port", broker.port, flush=True)
        await stop.wait()

if sys.argv[1] == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return round(s[min(len(s) - 1, int(q * len(s)))] * 1000, 3)  # milliseconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


@contextlib.asynccontextmanager
async def broker_process(kind: str, workdir: Path) -> AsyncIterator[tuple[int, int]]:
    """(port, pid) of a running broker; stopped by its PID on exit."""
    if kind == "mosquitto":
        port = free_port()
        conf = workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n"
        )
        proc = await asyncio.create_subprocess_exec(
            MOSQUITTO, "-c", str(conf),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        ready, stream = b" running", proc.stderr
    else:
        loop = kind.removeprefix("orbiter-")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", BROKER, loop, stdout=asyncio.subprocess.PIPE
        )
        ready, stream = b"port ", proc.stdout
    assert stream is not None
    drain: asyncio.Task[bytes] | None = None
    try:
        async with asyncio.timeout(START_TIMEOUT):
            while ready not in (line := await stream.readline()):
                if not line:
                    raise RuntimeError(f"{kind} exited before it was ready")
        if kind != "mosquitto":
            port = int(line.split()[1])
        drain = asyncio.create_task(stream.read())  # a full pipe must never stall the broker
        yield port, proc.pid
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await proc.wait()
        if drain is not None:
            await drain


def client(port: int, name: str) -> aiomqtt.Client:
    c = aiomqtt.Client("127.0.0.1", port, identifier=name, keepalive=60)
    c.pending_calls_threshold = 1 << 30  # thousands of publishes in flight are intended here
    return c


async def throughput(port: int, n: int, size: int, run: int) -> float:
    topic, payload = f"bench/tp/{run}", bytes(size)
    # At most WINDOW messages published and not yet received: both brokers drop QoS 1 messages
    # queued beyond a bound (ours 20 in flight + 100 queued, mosquitto 20 + 1000), and the
    # subscriber, in this process, is slower than the publisher.
    window = asyncio.Semaphore(WINDOW)
    async with client(port, f"tp-sub-{run}") as sub, client(port, f"tp-pub-{run}") as pub:
        await sub.subscribe(topic, qos=1)

        async def consume() -> None:
            received = 0
            async for _ in sub.messages:
                window.release()
                received += 1
                if received == n:
                    return

        consumer = asyncio.create_task(consume())
        started = time.perf_counter()
        async with asyncio.timeout(RUN_TIMEOUT):
            sent = []
            for _ in range(n):
                await window.acquire()
                sent.append(asyncio.create_task(pub.publish(topic, payload, qos=1)))
            await asyncio.gather(*sent)
            await consumer
        return n / (time.perf_counter() - started)


async def round_trips(port: int, rounds: int, size: int) -> list[float]:
    topic, payload = "bench/rtt", bytes(size)
    samples: list[float] = []
    async with client(port, "rtt-sub") as sub, client(port, "rtt-pub") as pub:
        await sub.subscribe(topic, qos=1)
        messages = sub.messages
        async with asyncio.timeout(RUN_TIMEOUT):
            for i in range(rounds + 50):  # the first 50 warm up
                started = time.perf_counter()
                sent = asyncio.create_task(pub.publish(topic, payload, qos=1))
                await anext(messages)
                elapsed = time.perf_counter() - started
                await sent
                if i >= 50:
                    samples.append(elapsed)
    return samples


async def measure(kind: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    async with broker_process(kind, workdir) as (port, pid):
        cpu = cpu_seconds(pid)
        rates = [await throughput(port, args.messages, args.size, r) for r in range(args.runs)]
        cpu = cpu_seconds(pid) - cpu
        samples = await round_trips(port, args.rounds, args.size)
        rss = rss_kib(pid)
    return {
        "throughput_msgs_per_s": round(statistics.median(rates)),
        "throughput_runs": [round(r) for r in rates],
        # What the clients' pace hides: the broker's own CPU for each message it passed on.
        "broker_cpu_us_per_msg": round(cpu / (args.messages * args.runs) * 1e6, 1),
        "rtt_p50_ms": pct(samples, 0.50),
        "rtt_p99_ms": pct(samples, 0.99),
        "broker_rss_mib": round(rss / 1024, 1),
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    kinds = ["mosquitto", "orbiter-asyncio"]
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: F401

        kinds.append("orbiter-uvloop")
    figures: dict[str, Any] = {
        "messages": args.messages,
        "payload_bytes": args.size,
        "qos": 1,
        "rounds": args.rounds,
        "runs": args.runs,
        "clients": f"aiomqtt {aiomqtt.__version__} (paho), MQTT 3.1.1, in the bench process",
    }
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            figures[kind] = await measure(kind, args, Path(tmp))
    base = figures["mosquitto"]
    for kind in kinds[1:]:
        ours = figures[kind]
        ours["throughput_vs_mosquitto"] = round(
            ours["throughput_msgs_per_s"] / base["throughput_msgs_per_s"], 2
        )
        ours["cpu_per_msg_vs_mosquitto"] = round(
            ours["broker_cpu_us_per_msg"] / base["broker_cpu_us_per_msg"], 2
        )
        ours["rtt_p50_vs_mosquitto"] = round(ours["rtt_p50_ms"] / base["rtt_p50_ms"], 2)
        ours["rtt_p99_vs_mosquitto"] = round(ours["rtt_p99_ms"] / base["rtt_p99_ms"], 2)
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=1000)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    print(json.dumps(asyncio.run(bench(args)), indent=2))


if __name__ == "__main__":
    main()
