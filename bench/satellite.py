"""Satellite benchmark: how fast the constellation simulator runs, and how much of a pass's
link rate the real hubs turn into goodput through the real-socket contact proxy.

Prints one JSON document with two parts.

``simulation``: the baseline scenario (satellite.md §5.2, with a 1 GB bulk backlog so every
pass is saturated) for one satellite over ``--days`` and for a constellation of
``--satellites`` over ``--constellation-days``, timed around ``Simulation.run`` (the checks of
``metrics.measure`` are timed apart). Per run: wall seconds, simulated days per wall second
and satellite-days per wall second (the scenario's days, as ``orbiter satellite simulate``
counts them), data envelopes the receiving hubs applied per wall second, and ``vs_realtime``
(virtual seconds run, the drain to the end of the next pass included, per wall second).
``scaling`` is the constellation's satellite-days/s over the single satellite's: 1.0 would
mean satellites cost nothing extra together (the ratio is the meaningful baseline; the raw
cost of the engine's SQLite commits alone is not).

``goodput``: one ``ContactProxy`` window of ``--goodput-seconds`` (acquisition 0.5 s, FER 1 %
in Gilbert-Elliott bursts, no aborts), the satellite dialling the ground through it:

- ``raw_tcp``: the baseline, a plain TCP sender through a proxy of the same configuration (a
  window of its own) into a counting sink;
- ``hub``: a real cloud (``orbiter.testing.Cloud``) and one joined ``EdgeCore`` dialling
  CloudHub through the proxy, TLS and WebSocket included. An edge extension keeps a backlog of
  ``--backlog-mb`` of bulk reports (``--report-kib`` of base64 text each) ahead of the link;
  the cloud's upstream handler counts what it applies.

Fractions are bytes/s over the window's open time divided by the configured rate
(``ideal_fraction`` is what frame loss leaves of it): ``link`` counts the TCP bytes the proxy
delivered, ``goodput`` the envelopes the cloud applied (charged as the sync engine charges
them), ``payload`` the reports' text. ``hub_vs_raw_tcp`` is the envelope bytes/s over the raw
sender's bytes/s (``hub_link_vs_raw_tcp``, ``payload_vs_raw_tcp`` likewise). The cloud and
the edge share this process's event loop (one core).

    .venv/bin/python bench/satellite.py [--days 7] [--satellites 50] [--constellation-days 1]
        [--goodput-seconds 10] [--rate-down 20e6] [--rate-up 2e6] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orbiter.orchestration.client import Client
from orbiter.orchestration.cloud.joining import create_join_token
from orbiter.orchestration.cloud.running import UpstreamFactory, UpstreamHandler
from orbiter.orchestration.edge.core import EdgeCore
from orbiter.orchestration.edge.extensions import EdgeContext
from orbiter.orchestration.edge.joining import join
from orbiter.orchestration.protocol import Message
from orbiter.orchestration.protocol.envelopes import Envelope, Priority
from orbiter.orchestration.protocol.syncing import MESSAGE_TOPIC
from orbiter.satellite.contacts import Contact, ContactPlan
from orbiter.satellite.link import GilbertElliott, LinkConfig, LinkModel
from orbiter.satellite.metrics import measure, summary
from orbiter.satellite.proxy import ContactProxy
from orbiter.satellite.scenario import Scenario, Workload
from orbiter.satellite.simulation import Simulation

from orbiter.testing import Cloud

__all__ = ["GoodputConfig", "main", "measure_goodput", "measure_simulation"]

DAY = 86_400.0
ACQUISITION_S = 0.5
FER = 0.01
SOURCE = "benchbulk"  # the upstream source of the extension's reports


# ------------------------------------------------------------------------- simulation speed


def _simulate(satellites: int, days: float) -> dict[str, Any]:

    scenario = Scenario(
        days=days,
        satellites=tuple(f"sat-{i}" for i in range(satellites)),
        workload=Workload(backlog_bytes=10**9),
    )
    with Simulation(scenario) as sim:
        started = time.perf_counter()
        runs = sim.run()
        wall = time.perf_counter() - started
        checked = time.perf_counter()
        total = summary([measure(run) for run in runs])
        measure_s = time.perf_counter() - checked
        # Data envelopes both receiving hubs applied or recognised (ACKs are not counted).
        envelopes = sum(
            sum(hub.endpoint.receipts.counters.values())
            for run in runs
            for hub in (run.space, run.ground)
        )
        simulated = sim.loop.now  # the run drains past ``days`` to the end of the next pass
    return {
        "satellites": satellites,
        "days": days,
        "simulated_s": round(simulated, 1),
        "wall_s": round(wall, 3),
        "measure_s": round(measure_s, 3),
        "sim_days_per_s": round(days / wall, 4),
        "satellite_days_per_s": round(satellites * days / wall, 4),
        "envelopes": envelopes,
        "envelopes_per_s": round(envelopes / wall, 1),
        "bytes_down": sum(total["bytesDown"].values()),
        "vs_realtime": round(simulated / wall, 1),
        "ok": total["ok"],
    }


def measure_simulation(days: float, satellites: int, constellation_days: float) -> dict[str, Any]:
    """One satellite over ``days`` and ``satellites`` over ``constellation_days``."""
    single = _simulate(1, days)
    print(json.dumps({"single": single}), file=sys.stderr, flush=True)
    constellation = _simulate(satellites, constellation_days)
    print(json.dumps({"constellation": constellation}), file=sys.stderr, flush=True)
    scaling = constellation["satellite_days_per_s"] / single["satellite_days_per_s"]
    return {"single": single, "constellation": constellation, "scaling": round(scaling, 3)}


# ---------------------------------------------------------------------------- link goodput


@dataclass(frozen=True)
class GoodputConfig:
    seconds: float
    rate_down: float  # bits/s, satellite to ground (the proxy's client-to-server direction)
    rate_up: float
    backlog_bytes: int
    report_bytes: int
    lead: float  # seconds from building the plan to the window's start


def _window(satellite: str, cfg: GoodputConfig) -> tuple[ContactPlan, LinkModel]:
    """A plan with one window starting ``lead`` s from now on ``time.monotonic``, and the
    link model every proxy here uses."""
    start = time.monotonic() + cfg.lead
    contact = Contact(
        start, start + cfg.seconds, satellite, "ground", cfg.rate_down, cfg.rate_up, 90.0
    )
    config = LinkConfig(
        acquisition_s=ACQUISITION_S, loss=GilbertElliott.from_mean(FER), abort_probability=0
    )
    return ContactPlan([contact]), LinkModel(config, seed=0)


def _open_seconds(proxy: ContactProxy) -> float:
    """Seconds the proxy's one window was open (after acquisition)."""
    [contact] = proxy.plan.contacts
    link = proxy.link(contact)
    return float(link.open_time(link.ends_at))


def _rate(name: str, delivered: int, open_s: float, cfg: GoodputConfig) -> dict[str, Any]:
    """``delivered`` bytes as bytes/s over the open window and as a fraction of the rate."""
    per_s = delivered / open_s
    fraction = "goodput" if name == "envelope" else name
    return {
        f"{name}_bytes": delivered,
        f"{name}_bytes_per_s": round(per_s),
        f"{fraction}_fraction": round(per_s / (cfg.rate_down / 8), 4),
    }


async def _raw_tcp(cfg: GoodputConfig) -> dict[str, Any]:
    """A plain TCP sender through the proxy into a sink: what the link gives any sender."""
    received = 0
    sinks: set[asyncio.Task[Any]] = set()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        task = asyncio.current_task()
        assert task is not None
        sinks.add(task)
        try:
            while data := await reader.read(1 << 16):
                received += len(data)
        except (ConnectionError, OSError):
            pass  # the proxy cut the pass with a reset
        finally:
            writer.transport.abort()
            sinks.discard(task)

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    plan, model = _window("raw", cfg)
    proxy = ContactProxy(
        ("127.0.0.1", server.sockets[0].getsockname()[1]),
        plan,
        "raw",
        model,
        clock=time.monotonic,
    )
    block = random.Random(0).randbytes(1 << 16)
    try:
        await proxy.start()
        [contact] = plan.contacts
        deadline = contact.end + 1.0
        # Dial like a hub does (retry every 50 ms) until the proxy keeps the connection open.
        while time.monotonic() < contact.end:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            try:
                try:
                    async with asyncio.timeout(0.05):
                        closed = await reader.read(1) == b""
                except TimeoutError:
                    closed = False
                if closed:
                    continue
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    while True:
                        writer.write(block)
                        await writer.drain()
            except (ConnectionError, OSError, TimeoutError):
                pass  # cut at the window's end (or refused before it)
            finally:
                writer.transport.abort()
        stats = proxy.stats.get(contact.start)
        open_s = _open_seconds(proxy)
        return {
            "open_s": round(open_s, 3),
            "bytes": received,
            "bytes_per_s": round(received / open_s),
            "goodput_fraction": round(received / open_s / (cfg.rate_down / 8), 4),
            "proxy_bytes": 0 if stats is None else stats.down,
        }
    finally:
        await proxy.close()
        server.close()
        await server.wait_closed()
        if sinks:
            await asyncio.wait(sinks, timeout=5.0)


@dataclass
class _Tally:
    """What the cloud applied, and the extension's backlog kept against it."""

    reported: int = 0
    payload: int = 0
    envelope: int = 0
    reports: int = 0
    first: float | None = None  # time.monotonic() of the first application
    drained: asyncio.Event = field(default_factory=asyncio.Event)


class _BulkReporter:
    """The edge extension: reports bulk payloads as fast as the spool takes them, keeping
    ``backlog_bytes`` not yet applied by the cloud ahead of the link."""

    def __init__(self, context: EdgeContext, tally: _Tally, cfg: GoodputConfig) -> None:
        self.context = context
        self.tally = tally
        self.cfg = cfg
        self.text = _report_text(cfg)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self._fill(), name="bench-bulk")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def _fill(self) -> None:
        tally, n = self.tally, 0
        while True:
            while tally.reported - tally.payload >= self.cfg.backlog_bytes:
                tally.drained.clear()
                await tally.drained.wait()
            content = {"n": n, "data": self.text}
            self.context.report(
                f"bench/{n}", SOURCE, content, priority=Priority.BULK, coalesce=False
            )
            tally.reported += len(self.text)
            n += 1
            await asyncio.sleep(0)  # each report commits to SQLite: let the hub run between


def _handlers(tally: _Tally) -> dict[str, UpstreamFactory]:
    def factory(client: Client) -> UpstreamHandler:
        async def handle(node: str, message: Message) -> Message | None:
            if tally.first is None:
                tally.first = time.monotonic()
            tally.reports += 1
            tally.payload += len(message.content["data"])
            # Charged as the sync engine charges an envelope on the link.
            size = len(message.encode())
            tally.envelope += Envelope(
                node, 0, Priority.BULK, topic=MESSAGE_TOPIC, size=size
            ).wire_size
            tally.drained.set()
            return message.response("OK", source=SOURCE)

        return handle

    return {SOURCE: factory}


async def _hub(cfg: GoodputConfig, root: Path) -> dict[str, Any]:
    """A cloud and one edge node dialling CloudHub through the proxy."""
    tally = _Tally()
    cloud = Cloud(
        root / "cloud",
        port=0,
        hub_port=0,
        join_port=0,
        router_port=0,
        controllers=(),
        upstream=_handlers(tally),
    )
    edge: EdgeCore | None = None
    proxy: ContactProxy | None = None
    try:
        await cloud.start()
        assert cloud.hub is not None and cloud.join is not None
        token = create_join_token(cloud.server.data_dir, 3600)
        await join(f"127.0.0.1:{cloud.join.port}", token, "edge-0", root / "edge-0")
        plan, model = _window("edge-0", cfg)
        proxy = ContactProxy(
            ("127.0.0.1", cloud.hub.port), plan, "edge-0", model, clock=time.monotonic
        )
        await proxy.start()
        edge = EdgeCore(
            root / "edge-0",
            cloud_url=f"wss://127.0.0.1:{proxy.port}",
            node_name="edge-0",
            metaserver_port=0,
            mqtt_port=0,
            heartbeat=1.0,
            status_interval=1.0,
            reconnect_backoff=(0.05, 0.2),
            extensions=[lambda context: _BulkReporter(context, tally, cfg)],
        )
        await edge.start()
        [contact] = plan.contacts
        await asyncio.sleep(max(0.0, contact.end + 0.5 - time.monotonic()))  # the window
        link = proxy.link(contact)
        stats = proxy.stats.get(contact.start)
        open_s = _open_seconds(proxy)
        return {
            "open_s": round(open_s, 3),
            # TCP bytes the proxy delivered: envelopes plus WebSocket, TLS and status traffic.
            **_rate("link", 0 if stats is None else stats.down, open_s, cfg),
            **_rate("envelope", tally.envelope, open_s, cfg),
            **_rate("payload", tally.payload, open_s, cfg),
            "reports_applied": tally.reports,
            "reports_spooled": tally.reported // len(_report_text(cfg)),
            "first_apply_after_open_s": (
                None if tally.first is None else round(tally.first - link.usable_from, 3)
            ),
            "connections": 0 if stats is None else stats.accepted,
        }
    finally:
        if edge is not None:
            await edge.shutdown(0)
        if proxy is not None:
            await proxy.close()
        await cloud.stop()


def _report_text(cfg: GoodputConfig) -> str:
    """One report's payload: base64 of seeded random bytes, incompressible as an image."""
    return base64.b64encode(random.Random(1).randbytes(cfg.report_bytes * 3 // 4)).decode()


async def measure_goodput(cfg: GoodputConfig) -> dict[str, Any]:
    """The raw-TCP baseline, then the hubs, each through its own window."""
    raw = await _raw_tcp(cfg)
    print(json.dumps({"raw_tcp": raw}), file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-satellite-") as tmp:
        hub = await _hub(cfg, Path(tmp))
    print(json.dumps({"hub": hub}), file=sys.stderr, flush=True)

    return {
        "config": {
            "window_s": cfg.seconds,
            "acquisition_s": ACQUISITION_S,
            "rate_down_bps": cfg.rate_down,
            "rate_up_bps": cfg.rate_up,
            "fer": FER,
            "ideal_fraction": round(1 - GilbertElliott.from_mean(FER).mean_loss, 4),
            "backlog_bytes": cfg.backlog_bytes,
            "report_bytes": len(_report_text(cfg)),
        },
        "raw_tcp": raw,
        "hub": hub,
        # The hubs' envelope goodput over what a plain TCP sender gets through the same link.
        "hub_vs_raw_tcp": round(hub["envelope_bytes_per_s"] / max(raw["bytes_per_s"], 1), 4),
        "hub_link_vs_raw_tcp": round(hub["link_bytes_per_s"] / max(raw["bytes_per_s"], 1), 4),
        "payload_vs_raw_tcp": round(hub["payload_bytes_per_s"] / max(raw["bytes_per_s"], 1), 4),
    }


# ------------------------------------------------------------------------------------ main

QUICK = {
    "days": 0.2,
    "satellites": 2,
    "constellation_days": 0.1,
    "goodput_seconds": 2.0,
    "backlog_mb": 8.0,
    "lead": 1.0,
}
DEFAULTS = {
    "days": 7.0,
    "satellites": 50,
    "constellation_days": 1.0,
    "goodput_seconds": 10.0,
    "backlog_mb": 64.0,
    "lead": 1.0,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--days", type=float, help="simulated days of the single satellite (7)")
    p.add_argument("--satellites", type=int, help="satellites in the constellation (50)")
    p.add_argument("--constellation-days", type=float, help="simulated days of it (1)")
    p.add_argument("--goodput-seconds", type=float, help="length of each proxy window (10)")
    p.add_argument("--rate-down", type=float, default=20e6, help="bits/s, edge to cloud")
    p.add_argument("--rate-up", type=float, default=2e6, help="bits/s, cloud to edge")
    p.add_argument("--backlog-mb", type=float, help="bulk kept ahead of the link (64)")
    p.add_argument("--report-kib", type=int, default=64, help="base64 text per bulk report")
    p.add_argument("--lead", type=float, help="seconds from setup to the window (1)")
    p.add_argument("--quick", action="store_true", help="tiny runs, for a smoke test")
    args = p.parse_args()
    base = QUICK if args.quick else DEFAULTS
    for name, value in base.items():
        if getattr(args, name) is None:
            setattr(args, name, value)

    result: dict[str, Any] = {
        "simulation": measure_simulation(args.days, args.satellites, args.constellation_days)
    }
    cfg = GoodputConfig(
        seconds=args.goodput_seconds,
        rate_down=args.rate_down,
        rate_up=args.rate_up,
        backlog_bytes=int(args.backlog_mb * 1e6),
        report_bytes=args.report_kib * 1024,
        lead=args.lead,
    )
    # The edge warns at each refused dial outside the window: expected here, not news.
    logging.getLogger("orbiter").setLevel(logging.ERROR)
    result["goodput"] = asyncio.run(measure_goodput(cfg))
    result["machine"] = {"cpus": os.cpu_count()}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
