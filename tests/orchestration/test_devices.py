"""Device fleets end to end (kubeedge.md §5): kubectl applies the example thermostat's
DeviceModel and Device, the cloud sends them to the edge node, the real Modbus mapper program
registers over the node's DMI socket and drives a real pymodbus TCP server as the device.

Reported register values reach ``status.twins``, a patched desired value reaches the device's
registers, and the device's state follows the server going away and coming back. Each step's
duration is printed (``pytest -s``). The mapper runs as a program of its own, and as a pod on
its node."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from orbiter.orchestration.client import CONFIGMAPS, DEVICEMODELS, DEVICES, PODS
from orbiter.orchestration.edge.dmi import MapperCallError
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from orbiter.testing import Cluster

from ..converging import until as eventually
from .mappers import _grpc_released, short_dir  # noqa: F401

pytestmark = [pytest.mark.kubectl, pytest.mark.slow]


EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "devices"
KUBECTL = "/usr/bin/kubectl"
NODE = "edge-0"
DEVICE = "thermostat"
CYCLE = 200  # ms, collectCycle and reportCycle of every property
WAIT = 30.0  # seconds any step may take at most on a loaded machine
CO, HR, IR = 1, 3, 4  # Modbus function codes reading coils, holding and input registers


class Thermostat:
    """The device: a pymodbus TCP server (slave 1). Holding 0 is the temperature in tenths,
    holding 1 the setpoint, input 0 the humidity, coil 0 the heating relay. Stopped and started
    again on the same port it keeps its registers, as a power-cycled device does.
    ``written`` is set on each write the mapper makes."""

    def __init__(self) -> None:
        self.coils = [True] + [False] * 7  # heating on: the Device's desired "false" must land
        self.holding = [215, 0, 0, 0]  # 21.5 degrees; setpoint 0
        self.inputs = [40, 0, 0, 0]  # 40 %
        self.port = 0
        self.server: Any = None  # a ModbusTcpServer: its transport and shutdown are untyped
        self.written = asyncio.Event()

    async def _action(
        self, function: int, start: int, address: int, count: int, regs: Any, values: Any
    ) -> None:
        if values is not None:
            self.written.set()

    async def start(self) -> None:
        blocks = (
            [SimData(0, values=list(self.coils), datatype=DataType.BITS)],
            [SimData(0, values=[False] * 8, datatype=DataType.BITS)],
            [SimData(0, values=list(self.holding), datatype=DataType.REGISTERS)],
            [SimData(0, values=list(self.inputs), datatype=DataType.REGISTERS)],
        )
        device = SimDevice(1, simdata=blocks, action=self._action)
        self.server = ModbusTcpServer(device, address=("127.0.0.1", self.port))
        await self.server.serve_forever(background=True)
        self.port = self.server.transport.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self.server = self.server, None
        if server is None:
            return
        self.coils = [bool(b) for b in await server.async_getValues(1, CO, 0, len(self.coils))]
        self.holding = list(await server.async_getValues(1, HR, 0, len(self.holding)))
        await server.shutdown()

    async def get(self, function: int, address: int) -> Any:
        assert self.server is not None
        return (await self.server.async_getValues(1, function, address, 1))[0]

    async def set(self, function: int, address: int, value: int) -> None:
        assert self.server is not None
        await self.server.async_setValues(1, function, address, [value])

    async def wait_until(self, function: int, address: int, expected: Any) -> None:
        """Until the device holds ``expected`` there, write after write (WAIT at most)."""
        async with asyncio.timeout(WAIT):
            while True:
                self.written.clear()
                if await self.get(function, address) == expected:
                    return
                await self.written.wait()


class Kubectl:
    """The real kubectl (the dispatcher picks the client) with a fresh discovery cache."""

    def __init__(self, kubeconfig: Path, cache: Path) -> None:
        self.config = ["--kubeconfig", str(kubeconfig), "--cache-dir", str(cache)]

    async def __call__(self, *args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            KUBECTL,
            *self.config,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(WAIT):
                out, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if proc.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)} exited {proc.returncode}: {err.decode()}")
        return out.decode()

    async def device(self) -> dict[str, Any]:
        doc: dict[str, Any] = yaml.safe_load(await self("get", "device", DEVICE, "-o", "yaml"))
        return doc


def twin_values(device: dict[str, Any], side: str) -> dict[str, str]:
    """Each property's ``reported`` or ``observedDesired`` value in the Device's status."""
    twins = (device.get("status") or {}).get("twins") or []
    return {t["propertyName"]: str((t.get(side) or {}).get("value") or "") for t in twins}


def reported(device: dict[str, Any]) -> dict[str, str]:
    return twin_values(device, "reported")


def observed(device: dict[str, Any]) -> dict[str, str]:
    return twin_values(device, "observedDesired")


def manifests(directory: Path, port: int) -> tuple[Path, Path, dict[str, int]]:
    """The example DeviceModel and Device (the device at ``port``, on this node, with short
    cycles) and the index of each property in the Device's spec, for JSON patches."""
    model = EXAMPLES / "thermostat-model.yaml"
    device = yaml.safe_load((EXAMPLES / "thermostat.yaml").read_text())
    spec = device["spec"]
    spec["nodeName"] = NODE
    spec["protocol"]["configData"].update(ip="127.0.0.1", port=port)
    for prop in spec["properties"]:
        prop["collectCycle"] = prop["reportCycle"] = CYCLE
    path = directory / "thermostat.yaml"
    path.write_text(yaml.safe_dump(device))
    return model, path, {p["name"]: i for i, p in enumerate(spec["properties"])}


class Timings:
    """Each step's duration, printed as it is taken (``pytest -s`` shows them)."""

    def record(self, step: str, since: float) -> float:
        took = time.monotonic() - since
        print(f"{step}: {took:.2f}s")
        return took


@pytest.fixture
def sockets() -> Iterator[Path]:
    with short_dir() as path:
        yield Path(path)


@pytest_asyncio.fixture
async def thermostat() -> AsyncIterator[Thermostat]:
    device = Thermostat()
    await device.start()
    try:
        yield device
    finally:
        await device.stop()


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with Cluster(tmp_path / "c", edges=1) as c:
        await c.wait_ready()
        yield c


@pytest_asyncio.fixture
async def mapper(cluster: Cluster, sockets: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """The Modbus mapper program with the example config, registered with the node."""
    config = yaml.safe_load((EXAMPLES / "modbus-mapper.yaml").read_text())
    config["grpc_server"]["socket_path"] = str(sockets / "modbus.sock")
    devices = cluster.edges[0].devices
    config["common"]["edgecore_sock"] = str(devices.dmi.path)
    (sockets / "config.yaml").write_text(yaml.safe_dump(config))
    with (sockets / "mapper.log").open("w+b") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "orbiter.orchestration.mappers.modbus",
            "--config",
            str(sockets / "config.yaml"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        try:

            async def registered() -> bool:
                if proc.returncode is not None:
                    log.seek(0)
                    pytest.fail(f"the mapper exited: {log.read().decode(errors='replace')}")
                return "modbus" in devices.mappers.mappers

            await eventually(registered, "the mapper to register over DMI")
            yield proc
            os.kill(proc.pid, signal.SIGTERM)
            async with asyncio.timeout(WAIT):
                await proc.wait()
            log.seek(0)
            assert proc.returncode == 0, log.read().decode(errors="replace")[-3000:]
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_thermostat_fleet_with_kubectl(
    cluster: Cluster,
    thermostat: Thermostat,
    mapper: asyncio.subprocess.Process,
    tmp_path: Path,
) -> None:
    kubectl = Kubectl(cluster.kubeconfig, tmp_path / "kube-cache")
    timings = Timings()
    model, device, index = manifests(tmp_path, thermostat.port)
    started = time.monotonic()
    out = await kubectl("apply", "-f", str(model), "-f", str(device))
    assert "devicemodel.devices.kubeedge.io/thermostat-model created" in out
    assert "device.devices.kubeedge.io/thermostat created" in out

    # 1. The registers' values reach status.twins[].reported; the heating coil was on, and the
    # Device's desired "false" is written at start.
    want = {"temperature": "21.5", "humidity": "40", "setpoint": "21", "heating": "false"}

    async def showing(values: dict[str, str]) -> dict[str, Any] | None:
        shown = await kubectl.device()
        got = reported(shown)
        return shown if all(got.get(k) == v for k, v in values.items()) else None

    shown = await eventually(lambda: showing(want), f"kubectl to show {want}")
    timings.record("apply -> register values in kubectl get -o yaml", started)
    status = shown["status"]
    assert status["state"] == "online" and status["lastReportTime"] and status["lastOnlineTime"]
    assert all(t["reported"]["metadata"]["timestamp"].isdigit() for t in status["twins"])
    # Read-only properties have no desired value to observe.
    assert {k: v for k, v in observed(shown).items() if v} == {"setpoint": "21", "heating": "false"}

    # A register the device changes shows within two report cycles, plus the way up (DMI,
    # DeviceTwin, CloudHub, the API) and a kubectl call, on a loaded machine.
    changed = time.monotonic()
    await thermostat.set(HR, 0, 230)
    await eventually(lambda: showing({"temperature": "23"}), "the new temperature")
    took = timings.record("register changed -> kubectl get -o yaml", changed)
    assert took < 2 * CYCLE / 1000 + 1.0

    table = (await kubectl("get", "devices")).splitlines()
    assert table[0].split() == ["NAME", "NODE", "MODEL", "STATE", "LAST-REPORT", "AGE"], table
    assert table[1].split()[:4] == [DEVICE, NODE, "thermostat-model", "online"], table
    assert table[1].split()[4].endswith("s"), table  # last report seconds ago
    table = (await kubectl("get", "devicemodels")).splitlines()
    assert [line.split()[:2] for line in table[:2]] == [
        ["NAME", "PROTOCOL"],
        ["thermostat-model", "modbus"],
    ], table

    # 2. Patched desired values are written to the holding register and the coil.
    patch = [
        {"op": "replace", "path": f"/spec/properties/{index[k]}/desired/value", "value": v}
        for k, v in [("setpoint", "25"), ("heating", "true")]
    ]
    patched = time.monotonic()
    await kubectl("patch", "device", DEVICE, "--type", "json", "-p", json.dumps(patch))
    await thermostat.wait_until(HR, 1, 25)
    await thermostat.wait_until(CO, 0, True)
    took = timings.record("kubectl patch -> holding register and coil written", patched)
    assert took < 2.0

    async def applied() -> bool:
        written = {"setpoint": "25", "heating": "true"}
        shown = await showing(written)
        return shown is not None and all(observed(shown)[k] == v for k, v in written.items())

    await eventually(applied, "the written values reported and observed")
    timings.record("kubectl patch -> reported and observedDesired in kubectl", patched)

    # 3. The device goes away: offline; back on the same port: online, reporting again.
    def state_is(wanted: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            out = await kubectl("get", "device", DEVICE, "-o", "jsonpath={.status.state}")
            return out == wanted

        return check

    stopped = time.monotonic()
    await thermostat.stop()
    await eventually(state_is("offline"), "the device to be offline")
    timings.record("device stopped -> offline in kubectl", stopped)
    restarted = time.monotonic()
    await thermostat.start()
    await eventually(state_is("online"), "the device to be online again")
    timings.record("device restarted -> online in kubectl", restarted)

    # Reading again: a new value shows (unchanged ones are not sent up again, as in KubeEdge).
    await thermostat.set(IR, 0, 55)
    await eventually(lambda: showing({"humidity": "55"}), "a new value after the restart")
    assert reported(await kubectl.device()) == {
        "temperature": "23",
        "humidity": "55",
        "setpoint": "25",
        "heating": "true",
    }

    # 4. The Device deleted: the mapper stops serving it.
    await kubectl("delete", "device", DEVICE)
    mappers = cluster.edges[0].devices.mappers

    async def removed() -> bool:
        try:
            await mappers.get_device("default", DEVICE, protocol="modbus")
        except MapperCallError as exc:
            return exc.code == "NOT_FOUND"
        return False

    await eventually(removed, "the mapper to drop the device")


async def test_the_mapper_runs_as_a_pod_on_its_node(
    cluster: Cluster, thermostat: Thermostat, sockets: Path, tmp_path: Path
) -> None:
    """The mapper as users deploy it: a pod bound to the node, its config from a ConfigMap,
    run by the node's process runtime (``image: python`` is the node's interpreter)."""
    client = cluster.client
    devices = cluster.edges[0].devices
    config = yaml.safe_load((EXAMPLES / "modbus-mapper.yaml").read_text())
    config["grpc_server"]["socket_path"] = str(sockets / "modbus.sock")
    config["common"]["edgecore_sock"] = str(devices.dmi.path)
    await client.create(
        CONFIGMAPS,
        {"metadata": {"name": "modbus-mapper"}, "data": {"config.yaml": yaml.safe_dump(config)}},
        "default",
    )
    pod = {
        "metadata": {"name": "modbus-mapper"},
        "spec": {
            "nodeName": NODE,
            "terminationGracePeriodSeconds": 5,
            "containers": [
                {
                    "name": "mapper",
                    "image": "python",
                    "command": ["python", "-m", "orbiter.orchestration.mappers.modbus"],
                    # No mount namespace in the process runtime: a mountPath is a path
                    # inside the container's root, its working directory.
                    "args": ["--config", "etc/mapper/config.yaml"],
                    "volumeMounts": [{"name": "config", "mountPath": "/etc/mapper"}],
                }
            ],
            "volumes": [{"name": "config", "configMap": {"name": "modbus-mapper"}}],
        },
    }
    await client.create(PODS, pod, "default")

    async def registered() -> bool:
        return "modbus" in devices.mappers.mappers

    await eventually(registered, "the mapper pod to register over DMI")
    model_path, device_path, _ = manifests(tmp_path, thermostat.port)
    await client.create(DEVICEMODELS, yaml.safe_load(model_path.read_text()), "default")
    await client.create(DEVICES, yaml.safe_load(device_path.read_text()), "default")

    async def values() -> dict[str, str] | None:
        found = reported(await client.get(DEVICES, DEVICE, "default"))
        return found if found.get("temperature") == "21.5" else None

    shown = await eventually(values, "the register values in the Device's status")
    assert shown["humidity"] == "40"
    await thermostat.wait_until(CO, 0, False)  # the desired "false" reached the coil

    await client.delete(PODS, "modbus-mapper", "default")

    async def gone() -> bool:
        return not cluster.edges[0].runtime.running_pods()

    await eventually(gone, "the mapper pod to stop")
