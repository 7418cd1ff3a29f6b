"""A fleet of 1,000 devices over 10 nodes keeps every Device's status current.

A real cluster (a cloud and 10 EdgeCores in this process); one DeviceModel and 100 Devices per
node, created through the API; on each node an in-process mapper (the SDK's ``Mapper``)
registered over the node's DMI socket, with a simulated driver whose values the test sets.
Every value goes the whole way: driver read → mapper report (DMI) → DeviceTwin → outbox →
CloudHub → DeviceReports → Device status, watched through the API.

Each phase's duration is printed (``pytest -s``): how long the fleet takes to converge.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from orbiter.orchestration.apis import DEVICES as DEVICE_CRDS
from orbiter.orchestration.apis import load_crds
from orbiter.orchestration.apiserver import APIServer
from orbiter.orchestration.client import DEVICEMODELS, DEVICES, LocalClient, Resource
from orbiter.orchestration.cloud.devicestatus import DeviceReports
from orbiter.orchestration.cloud.installing import install_crds
from orbiter.orchestration.mappers import (
    OFFLINE,
    ONLINE,
    Driver,
    DriverError,
    Mapper,
    MapperConfig,
    value_text,
)
from orbiter.orchestration.protocol import Message

from orbiter.testing import Cluster

from .mappers import short_dir

NODES = 10
PER_NODE = 100
NS = "default"
PROTOCOL = "simulated"
MODEL = "sim-model"
CYCLE = 1000  # ms, collectCycle and reportCycle: 2,000 property reads and 1,000 reports a second
PROPERTIES = {"temperature": "FLOAT", "humidity": "INT"}  # of each device, and their types
WAIT = 40.0  # seconds any convergence may take at most on a loaded 2-core machine


def device_name(node: int, i: int) -> str:
    return f"sim-{node}-{i:02d}"


@dataclass
class Simulation:
    """What every simulated device reads, as the test sets it: a generation of values, and
    the devices that do not answer."""

    generation: int = 1
    offline: set[str] = field(default_factory=set)

    @staticmethod
    def value(generation: int, index: int, prop: str) -> float | int:
        """What device ``index`` reads; the humidity is unique to the device."""
        return 20.5 + generation if prop == "temperature" else generation * 1000 + index

    @staticmethod
    def values(generation: int, index: int) -> dict[str, str]:
        """What the Device's status must show, as twin text."""
        return {p: value_text(Simulation.value(generation, index, p)) for p in PROPERTIES}

    def read(self, name: str, index: int, prop: str) -> float | int:
        if name in self.offline:
            raise DriverError("no answer")
        return self.value(self.generation, index, prop)


class SimulatedDriver(Driver):
    def __init__(self, device: Mapping[str, Any], sim: Simulation) -> None:
        super().__init__(device)
        self.sim = sim
        self.name = str(device["metadata"]["name"])
        self.index = int(self.config["index"])

    async def connect(self) -> None:
        pass

    async def read(self, visitor: dict[str, Any]) -> Any:
        return self.sim.read(self.name, self.index, visitor["propertyName"])

    async def write(self, visitor: dict[str, Any], value: Any) -> None:
        raise DriverError("every simulated property is read-only")

    async def state(self) -> str:
        return OFFLINE if self.name in self.sim.offline else ONLINE

    async def close(self) -> None:
        pass


def model() -> dict[str, Any]:
    return {
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "DeviceModel",
        "metadata": {"name": MODEL, "namespace": NS},
        "spec": {
            "protocol": PROTOCOL,
            "properties": [
                {"name": name, "type": kind, "accessMode": "ReadOnly"}
                for name, kind in PROPERTIES.items()
            ],
        },
    }


def device(node: int, i: int) -> dict[str, Any]:
    def prop(name: str) -> dict[str, Any]:
        return {
            "name": name,
            "visitors": {"protocolName": PROTOCOL, "configData": {"register": name}},
            "collectCycle": CYCLE,
            "reportCycle": CYCLE,
            "reportToCloud": True,
        }

    return {
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "Device",
        "metadata": {"name": device_name(node, i), "namespace": NS},
        "spec": {
            "deviceModelRef": {"name": MODEL},
            "nodeName": f"edge-{node}",
            "protocol": {"protocolName": PROTOCOL, "configData": {"index": node * 100 + i}},
            "properties": [prop(name) for name in PROPERTIES],
        },
    }


class Statuses:
    """Every Device's status as the API shows it, kept current by a list and a watch. ``wait``
    re-checks only the Device each event changed: 1,000 of them change many times a second."""

    def __init__(self, client: LocalClient) -> None:
        self.client = client
        self.status: dict[str, dict[str, Any]] = {}
        self._want: Callable[[str], bool] | None = None
        self._behind: set[str] = set()
        self._caught_up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Statuses:
        listed = await self.client.list(DEVICES, NS)
        for obj in listed["items"]:
            self._saw(obj)
        rv = listed["metadata"]["resourceVersion"]
        self._task = asyncio.create_task(self._watch(rv), name="device statuses")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self, rv: str) -> None:
        async for event in self.client.watch(DEVICES, NS, resource_version=rv):
            if event["type"] in ("ADDED", "MODIFIED"):
                self._saw(event["object"])

    def _saw(self, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        self.status[name] = obj.get("status") or {}
        if self._want is None:
            return
        if self._want(name):
            self._behind.discard(name)
            if not self._behind:
                self._caught_up.set()
        else:
            self._behind.add(name)

    def reported(self, name: str) -> dict[str, str]:
        twins = self.status.get(name, {}).get("twins") or []
        return {t["propertyName"]: (t.get("reported") or {}).get("value", "") for t in twins}

    def state(self, name: str) -> str | None:
        return self.status.get(name, {}).get("state")

    async def wait(self, want: Callable[[str], bool], names: Iterable[str], what: str) -> float:
        """Until ``want(name)`` holds for every one of ``names``; the seconds it took."""
        started = time.monotonic()
        self._want = want
        self._behind = {n for n in names if not want(n)}
        self._caught_up.clear()
        if not self._behind:
            self._caught_up.set()
        try:
            async with asyncio.timeout(WAIT):
                await self._caught_up.wait()
        except TimeoutError:
            behind = sorted(self._behind)
            examples = {n: (self.reported(n), self.state(n)) for n in behind[:3]}
            pytest.fail(f"{len(behind)} devices not {what} after {WAIT}s, e.g. {examples}")
        finally:
            self._want = None
        took = time.monotonic() - started
        print(f"{what}: {took:.2f}s")
        return took


@pytest.fixture(autouse=True)
def _grpc_released(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """grpc.aio keeps a poller thread while any channel or server object lives. A mapper's
    failed call (a deadline, under load) is logged with its error, whose traceback holds the
    channel: the captured records keep their text, not their arguments, then collect."""
    yield
    for when in ("setup", "call"):
        for record in caplog.get_records(when):
            record.msg, record.args, record.exc_info = record.getMessage(), (), None
    gc.collect()


@pytest.fixture
def sockets() -> Iterator[Path]:
    with short_dir() as path:
        yield Path(path)


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    started = time.monotonic()
    # KubeEdge's own periods, not Cluster's short test ones: node status and the sync loop's
    # full walk of every bound object at 0.5 s would be most of the load here.
    async with Cluster(tmp_path / "c", edges=NODES, sync_period=5.0, status_interval=5.0) as c:
        await c.wait_ready()
        print(f"\n{NODES} nodes ready: {time.monotonic() - started:.2f}s")
        yield c


@pytest_asyncio.fixture
async def mappers(
    cluster: Cluster, sockets: Path
) -> AsyncIterator[tuple[Simulation, list[Mapper]]]:
    """A simulated mapper on each node, registered over its DMI socket."""
    sim = Simulation()
    running: list[Mapper] = []
    try:
        for i, edge in enumerate(cluster.edges):
            config = MapperConfig(
                name=f"sim-mapper-{i}",
                protocol=PROTOCOL,
                socket_path=str(sockets / f"sim-{i}.sock"),
                edgecore_sock=edge.devices.dmi.path,
            )
            mapper = Mapper(config, lambda d: SimulatedDriver(d, sim))
            running.append(mapper)
            await mapper.start()
        yield sim, running
    finally:
        await asyncio.gather(*(m.stop() for m in running))


@pytest.mark.slow
async def test_a_fleet_of_1000_devices_keeps_status_current(
    cluster: Cluster, mappers: tuple[Simulation, list[Mapper]]
) -> None:
    sim, running = mappers
    client = cluster.client
    names = {device_name(n, i): n * 100 + i for n in range(NODES) for i in range(PER_NODE)}

    def current(generation: int) -> Callable[[str], bool]:
        def check(name: str) -> bool:
            want = Simulation.values(generation, names[name])
            return statuses.state(name) == ONLINE and statuses.reported(name) == want

        return check

    async with Statuses(client) as statuses:
        started = time.monotonic()
        await client.create(DEVICEMODELS, model(), NS)
        for n in range(NODES):  # a node's worth at a time
            await asyncio.gather(
                *(client.create(DEVICES, device(n, i), NS) for i in range(PER_NODE))
            )
        print(f"1000 Devices created: {time.monotonic() - started:.2f}s")

        # 1. Devices reach their nodes, their mappers run them, the first values come up.
        await statuses.wait(current(1), names, "1000 Devices online with generation 1")
        print(f"create -> every status current: {time.monotonic() - started:.2f}s")
        assert [len(m.devices) for m in running] == [PER_NODE] * NODES
        status = statuses.status[device_name(0, 0)]
        assert status["lastReportTime"] and status["lastOnlineTime"]
        assert all(t["reported"]["metadata"]["timestamp"].isdigit() for t in status["twins"])

        # 2. Every device reads new values: within a collect and a report cycle, plus the way up.
        sim.generation = 2
        await statuses.wait(current(2), names, "1000 Devices showing generation 2")

        # 3. One device stops answering: its Device goes offline, the rest stay current.
        gone = device_name(3, 7)
        sim.offline.add(gone)
        await statuses.wait(lambda n: statuses.state(n) == OFFLINE, [gone], f"{gone} offline")
        assert statuses.reported(gone) == Simulation.values(2, names[gone])  # its last values
        assert all(current(2)(n) for n in names if n != gone)

        # 4. It answers again with new values, as the whole fleet does.
        sim.offline.clear()
        sim.generation = 3
        await statuses.wait(current(3), names, "1000 Devices showing generation 3, all online")


class CountingClient(LocalClient):
    """Counts the Device reads, to show which reports needed one."""

    reads = 0

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        self.reads += 1
        return await super().get(res, name, namespace)


def report(name: str, prop: str, value: str, stamp: int) -> Message:
    actual = {"value": value, "metadata": {"timestamp": stamp}}
    content = {"event_id": "e", "timestamp": stamp, "twin": {prop: {"actual": actual}}}
    return Message("twin", "resource", "update", f"device/{NS}/{name}/twin/edge_updated", content)


async def test_device_reports_read_a_device_only_when_someone_else_wrote_it(
    tmp_path: Path,
) -> None:
    """What keeps a fleet's status writes cheap (DeviceReports writes on top of what it wrote
    last) never hides another writer's change, a rebinding or a deletion."""
    server = APIServer(tmp_path / "api", port=0)
    await server.start()
    client = CountingClient(server.api)
    try:
        await install_crds(client, load_crds(DEVICE_CRDS))
        await client.create(DEVICES, device(0, 0), NS)
        name = device_name(0, 0)
        reports = DeviceReports(client)

        async def send(node: str, prop: str, value: str, stamp: int) -> Message:
            return await reports.handle(node, report(name, prop, value, stamp))

        async def reported() -> dict[str, str]:
            twins = (await client.get(DEVICES, name, NS))["status"]["twins"]
            return {t["propertyName"]: t["reported"]["value"] for t in twins}

        assert (await send("edge-0", "humidity", "1", 10)).content == "OK"
        client.reads = 0
        for i in range(5):  # the Device as last written is all the next report needs
            assert (await send("edge-0", "temperature", f"2{i}", 11 + i)).content == "OK"
        assert client.reads == 0

        # Someone else writes the status: the next report is a conflict, reads, keeps both.
        await client.patch(
            DEVICES, name, {"status": {"state": "unhealthy"}}, NS, subresource="status"
        )
        assert (await send("edge-0", "humidity", "2", 20)).content == "OK"
        status = (await client.get(DEVICES, name, NS))["status"]
        assert status["state"] == "unhealthy"
        assert await reported() == {"humidity": "2", "temperature": "24"}

        # A late report is dropped against the Device as it is, not as last written.
        client.reads = 0
        assert (await send("edge-0", "humidity", "0", 5)).content == "OK"
        assert client.reads == 1 and (await reported())["humidity"] == "2"

        # Rebound to another node: the old node is refused, the new one heard.
        patch = {"spec": {"nodeName": "edge-1"}}
        await client.patch(DEVICES, name, patch, NS)
        refused = await send("edge-0", "humidity", "3", 30)
        assert refused.operation == "error" and "forbidden" in str(refused.content)
        assert (await send("edge-1", "humidity", "4", 31)).content == "OK"

        await client.delete(DEVICES, name, NS)
        gone = await send("edge-1", "humidity", "5", 32)
        assert gone.operation == "error" and str(gone.content).startswith("not found")
    finally:
        await client.close()
        await server.stop()
