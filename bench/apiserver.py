"""API server benchmark on SQLite: creates/s, get/list latency, watch delivery with 100 watchers.

Prints one JSON document. Every figure stands beside a baseline measured in the same run:
raw SQLite inserts/s (kine's table shape, one commit per insert, WAL, synchronous=FULL — the
durability the store gives each acknowledged write). The server runs as its own process
(``orbiter cloud``), the load comes from this one over HTTPS with keep-alive.

    .venv/bin/python bench/apiserver.py [--creates 6000] [--concurrency 64] [--watchers 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

VALUE = "x" * 900  # with metadata, each ConfigMap is about 1 KB


def pct(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    s = sorted(samples)
    return round(s[min(len(s) - 1, int(q * len(s)))] * 1000, 2)  # milliseconds


def raw_sqlite_inserts(path: Path, n: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "CREATE TABLE kine (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, created INT,"
        " deleted INT, create_revision INT, prev_revision INT, lease INT, value BLOB,"
        " old_value BLOB)"
    )
    conn.execute("CREATE UNIQUE INDEX kine_name_prev ON kine (name, prev_revision)")
    value = orjson.dumps({"data": {"v": VALUE}})
    start = time.perf_counter()
    for i in range(n):
        conn.execute("BEGIN")
        conn.execute(
            "INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease,"
            " value, old_value) VALUES (?, 1, 0, 0, 0, 0, ?, NULL)",
            (f"/registry/configmaps/bench/cm-{i}", value),
        )
        conn.execute("COMMIT")
    rate = n / (time.perf_counter() - start)
    conn.close()
    return rate


class Server:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "orbiter.cli",
                "cloud",
                "--data-dir",
                str(self.data_dir),
                "--api-port",
                "0",
                "--hub-port",
                "0",
                "--join-port",
                "0",
                "--router-port",
                "0",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # the CLI prints the kubeconfig path once it serves
            if line.startswith(b"kubeconfig:"):
                break
        else:
            raise SystemExit("orbiter cloud exited before serving")
        config = yaml.safe_load((self.data_dir / "kubeconfig").read_text())
        self.url = config["clusters"][0]["cluster"]["server"]
        self.token = config["users"][0]["user"]["token"]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)


async def bench(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=str(server.data_dir / "ca.crt"))
    headers = {"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"}
    conn = aiohttp.TCPConnector(ssl=ctx, limit=args.concurrency + args.watchers + 8)
    async with aiohttp.ClientSession(server.url, headers=headers, connector=conn) as http:
        ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}}
        async with http.post("/api/v1/namespaces", data=orjson.dumps(ns)) as r:
            assert r.status == 201, await r.text()
        base = "/api/v1/namespaces/bench/configmaps"

        # 1. creates at full speed from `concurrency` clients
        create_lat: list[float] = []
        counter = iter(range(args.creates))

        async def creator() -> None:
            for i in counter:
                body = orjson.dumps({"metadata": {"name": f"cm-{i}"}, "data": {"v": VALUE}})
                t0 = time.perf_counter()
                async with http.post(base, data=body) as r:
                    await r.read()
                    assert r.status == 201, r.status
                create_lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(creator() for _ in range(args.concurrency)))
        creates_per_s = args.creates / (time.perf_counter() - t0)

        # 2. gets and paginated lists (500 items a page), read-only
        get_lat: list[float] = []
        list_lat: list[float] = []
        names = iter(range(args.creates))

        async def getter() -> None:
            for i in names:
                t = time.perf_counter()
                async with http.get(f"{base}/cm-{i % args.creates}") as r:
                    await r.read()
                    assert r.status == 200
                get_lat.append(time.perf_counter() - t)

        async def lister() -> None:
            for _ in range(args.lists):
                t = time.perf_counter()
                async with http.get(base, params={"limit": "500"}) as r:
                    await r.read()
                    assert r.status == 200
                list_lat.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(getter() for _ in range(args.concurrency)), lister())
        gets_per_s = len(get_lat) / (time.perf_counter() - t0)

        # 3. watch delivery: `watchers` streams, one writer updating at a steady rate
        rv_start = ""
        async with http.get(base, params={"limit": "1"}) as r:
            rv_start = (await r.json())["metadata"]["resourceVersion"]
        delivery: list[float] = []
        sent_at: dict[str, float] = {}
        expected = args.updates
        done = [0]
        all_done = asyncio.Event()

        async def watcher() -> None:
            params = {
                "watch": "true",
                "resourceVersion": rv_start,
                "fieldSelector": "metadata.name=cm-0",
                "timeoutSeconds": "600",
            }
            seen = 0
            async with http.get(base, params=params, timeout=aiohttp.ClientTimeout(None)) as r:
                async for line in r.content:
                    ev = orjson.loads(line)
                    sent = sent_at.get(ev["object"].get("data", {}).get("seq", ""))
                    if sent is not None:
                        delivery.append(time.perf_counter() - sent)
                    seen += 1
                    if seen >= expected:
                        break
            done[0] += 1
            if done[0] == args.watchers:
                all_done.set()

        tasks = [asyncio.create_task(watcher()) for _ in range(args.watchers)]
        await asyncio.sleep(1.0)  # let every watch connect before the first update
        interval = 1.0 / args.update_rate
        update_lat: list[float] = []
        for seq in range(expected):
            patch = orjson.dumps({"data": {"seq": str(seq)}})
            sent_at[str(seq)] = time.perf_counter()
            t = time.perf_counter()
            async with http.patch(
                f"{base}/cm-0", data=patch, headers={"Content-Type": "application/merge-patch+json"}
            ) as r:
                await r.read()
                assert r.status == 200
            update_lat.append(time.perf_counter() - t)
            await asyncio.sleep(max(0.0, interval - (time.perf_counter() - t)))
        await asyncio.wait_for(all_done.wait(), 120)
        await asyncio.gather(*tasks)

    return {
        "creates_per_s": round(creates_per_s, 1),
        "create_p50_ms": pct(create_lat, 0.5),
        "create_p99_ms": pct(create_lat, 0.99),
        "gets_per_s": round(gets_per_s, 1),
        "get_p50_ms": pct(get_lat, 0.5),
        "get_p99_ms": pct(get_lat, 0.99),
        "list500_p50_ms": pct(list_lat, 0.5),
        "list500_p99_ms": pct(list_lat, 0.99),
        "watchers": args.watchers,
        "watch_events_delivered": len(delivery),
        "watch_delivery_p50_ms": pct(delivery, 0.5),
        "watch_delivery_p99_ms": pct(delivery, 0.99),
        "update_p99_ms_during_watch": pct(update_lat, 0.99),
        "mean_create_ms": round(statistics.mean(create_lat) * 1000, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--creates", type=int, default=6000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--lists", type=int, default=50)
    p.add_argument("--watchers", type=int, default=100)
    p.add_argument("--updates", type=int, default=200)
    p.add_argument(
        "--update-rate", type=float, default=50.0, help="updates/s during the watch phase"
    )
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="orbiter-bench-") as tmp:
        raw = raw_sqlite_inserts(Path(tmp) / "raw.db", 3000)
        server = Server(Path(tmp) / "cloud")
        server.start()
        try:
            figures = asyncio.run(bench(server, args))
        finally:
            server.stop()
    figures["raw_sqlite_inserts_per_s"] = round(raw, 1)
    figures["creates_vs_raw_sqlite"] = round(figures["creates_per_s"] / raw, 3)
    figures["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
