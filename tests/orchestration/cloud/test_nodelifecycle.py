"""The node lifecycle controller against a real API server: silent nodes go Unknown and are
tainted, their pods stay (edge autonomy) but are marked not Ready, opted-out pods go."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from orbiter.orchestration.client import LEASES, NODES, PODS, Client, LocalClient, NotFoundError
from orbiter.orchestration.cloud import ControllerManager, Informers, NodeLifecycleController
from orbiter.orchestration.cloud.nodelifecycle import EVICT_ANNOTATION, LEASE_NAMESPACE

from .waiting import eventually, patch

NS = "default"
Obj = dict[str, Any]
UNREACHABLE = "node.kubernetes.io/unreachable"
NOT_READY = "node.kubernetes.io/not-ready"


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def add_node(client: Client, name: str, *, ready: bool = True) -> None:
    labels = {"kubernetes.io/hostname": name}
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}
    await client.create(NODES, node)
    resources = {"cpu": "4", "memory": "8Gi", "pods": "110"}
    status: Obj = {"capacity": resources, "allocatable": resources}
    await patch(client, NODES, name, {"status": status}, None, subresource="status")
    if ready:
        await report(client, name)


async def report(client: Client, name: str) -> None:
    """What an edge node sends every status interval: Ready=True, then its Lease."""
    now = _stamp()
    ready = {
        "type": "Ready",
        "status": "True",
        "reason": "EdgeReady",
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    }
    status = {"status": {"conditions": [ready]}}
    await patch(client, NODES, name, status, None, subresource="status")
    await renew(client, name)


async def renew(client: Client, name: str) -> None:
    spec = {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": _stamp()}
    try:
        await patch(client, LEASES, name, {"spec": spec}, LEASE_NAMESPACE)
    except NotFoundError:
        lease = {"metadata": {"name": name, "namespace": LEASE_NAMESPACE}, "spec": spec}
        await client.create(LEASES, {"apiVersion": "coordination.k8s.io/v1", **lease})


def pod_object(name: str, node: str | None = None, evict: bool = False, **spec: Any) -> Obj:
    metadata: Obj = {"name": name, "namespace": NS}
    if evict:
        metadata["annotations"] = {EVICT_ANNOTATION: "true"}
    if node:
        spec["nodeName"] = node
    container = {"name": "main", "image": "python"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"containers": [container], **spec},
    }


async def running(client: Client, name: str) -> None:
    """Mark a pod Running and Ready, as its node would."""
    ready = {"type": "Ready", "status": "True", "lastTransitionTime": _stamp()}
    body = {"status": {"phase": "Running", "conditions": [ready]}}
    await patch(client, PODS, name, body, NS, subresource="status")


def condition(obj: Obj, kind: str) -> Obj:
    return next((c for c in obj.get("status", {}).get("conditions") or [] if c["type"] == kind), {})


def our_taints(node: Obj) -> list[tuple[str, str]]:
    taints = node.get("spec", {}).get("taints") or []
    return sorted((t["key"], t["effect"]) for t in taints if t["key"] in (UNREACHABLE, NOT_READY))


class Heartbeat:
    """A node that keeps reporting every ``period`` seconds until stopped."""

    def __init__(self, client: Client, name: str, period: float) -> None:
        self.client, self.name, self.period = client, name, period
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Heartbeat:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await report(self.client, self.name)
            await asyncio.sleep(self.period)  # the node's own pace, not a synchronisation


# --- end to end, on the real clock ------------------------------------------------------------


@pytest.fixture
async def manager(client: LocalClient) -> AsyncIterator[ControllerManager]:
    async with ControllerManager(
        client, resync=None, node_grace_period=1.0, pod_eviction_timeout=0.5
    ) as manager:
        yield manager


async def test_silent_node_goes_unknown_keeps_its_pods_and_comes_back(
    client: Client, manager: ControllerManager
) -> None:
    await add_node(client, "alive")
    await add_node(client, "gone")
    for pod in (pod_object("stays", "gone"), pod_object("leaves", "gone", evict=True)):
        await client.create(PODS, pod)
    await client.create(PODS, pod_object("elsewhere", "alive"))
    for name in ("stays", "leaves", "elsewhere"):
        await running(client, name)

    async with Heartbeat(client, "alive", 0.1):

        async def gone_unknown() -> Obj:
            node = await client.get(NODES, "gone")
            ready = condition(node, "Ready")
            assert (ready.get("status"), ready.get("reason")) == ("Unknown", "NodeStatusUnknown")
            assert ready["message"] == "Kubelet stopped posting node status."
            for kind in ("MemoryPressure", "DiskPressure", "PIDPressure"):
                assert condition(node, kind)["status"] == "Unknown"
            assert our_taints(node) == [(UNREACHABLE, "NoExecute"), (UNREACHABLE, "NoSchedule")]
            return node

        gone = await eventually(gone_unknown, within=10)
        assert condition(gone, "Ready")["lastHeartbeatTime"]  # kept: when it last spoke

        # Edge autonomy: the pod stays, only marked not Ready; the opted-out one is deleted.
        async def pods_handled() -> None:
            stays = await client.get(PODS, "stays", NS)
            ready = condition(stays, "Ready")
            assert (ready.get("status"), ready.get("reason")) == ("False", "NodeNotReady")
            names = {p["metadata"]["name"] for p in (await client.list(PODS, NS))["items"]}
            assert "leaves" not in names and "stays" in names

        await eventually(pods_handled, within=10)

        # The reporting node stayed Ready all along, its pod untouched.
        alive = await client.get(NODES, "alive")
        assert condition(alive, "Ready")["status"] == "True" and not our_taints(alive)
        elsewhere = await client.get(PODS, "elsewhere", NS)
        assert condition(elsewhere, "Ready")["status"] == "True"

        # The scheduler keeps new pods off the unreachable node (NoSchedule) ...
        await client.create(PODS, pod_object("new"))
        await client.create(
            PODS, pod_object("pinned", nodeSelector={"kubernetes.io/hostname": "gone"})
        )

        async def new_on_alive() -> None:
            assert (await client.get(PODS, "new", NS))["spec"].get("nodeName") == "alive"
            pinned = await client.get(PODS, "pinned", NS)
            assert condition(pinned, "PodScheduled").get("reason") == "Unschedulable"
            assert UNREACHABLE in condition(pinned, "PodScheduled")["message"]

        await eventually(new_on_alive, within=10)
        assert not (await client.get(PODS, "pinned", NS))["spec"].get("nodeName")

        # ... until it reports again: the taints go and the waiting pod lands there.
        async with Heartbeat(client, "gone", 0.1):

            async def back() -> None:
                node = await client.get(NODES, "gone")
                assert condition(node, "Ready")["status"] == "True"
                assert not our_taints(node)
                assert (await client.get(PODS, "pinned", NS))["spec"].get("nodeName") == "gone"

            await eventually(back, within=10)


async def test_node_that_never_reported_is_not_ready(
    client: Client, manager: ControllerManager
) -> None:
    await add_node(client, "mute", ready=False)

    async def not_ready() -> None:
        node = await client.get(NODES, "mute")
        ready = condition(node, "Ready")
        assert (ready.get("status"), ready.get("reason")) == ("Unknown", "NodeStatusNeverUpdated")
        assert our_taints(node) == [(NOT_READY, "NoExecute"), (NOT_READY, "NoSchedule")]

    await eventually(not_ready, within=10)
    async with Heartbeat(client, "mute", 0.1):

        async def ready() -> None:
            node = await client.get(NODES, "mute")
            assert condition(node, "Ready")["status"] == "True" and not our_taints(node)

        await eventually(ready, within=10)


# --- deadlines, on a virtual clock -------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Virtual:
    """A controller on a virtual clock whose workers never run: tests call ``reconcile``."""

    def __init__(self, client: Client) -> None:
        self.clock = Clock()
        self.informers = Informers(client)
        self.controller = NodeLifecycleController(
            client,
            self.informers,
            resync=None,
            grace_period=40,
            eviction_timeout=300,
            clock=self.clock,
        )

    async def __aenter__(self) -> tuple[NodeLifecycleController, Clock]:
        await self.informers.start()
        return self.controller, self.clock

    async def __aexit__(self, *exc: object) -> None:
        await self.informers.stop()


@pytest.fixture
async def virtual(client: LocalClient) -> AsyncIterator[tuple[NodeLifecycleController, Clock]]:
    async with Virtual(client) as started:
        yield started


async def test_deadlines_follow_the_virtual_clock(
    client: Client, virtual: tuple[NodeLifecycleController, Clock]
) -> None:
    controller, clock = virtual
    await add_node(client, "n")
    await client.create(PODS, pod_object("stays", "n"))
    await client.create(PODS, pod_object("leaves", "n", evict=True))

    await eventually(
        _truthy(lambda: controller.leases.get("n", LEASE_NAMESPACE) and len(controller.pods) == 2)
    )
    assert await controller.reconcile("n") == 40.0  # a full grace period from first sight
    clock.now += 30
    assert await controller.reconcile("n") == 10.0

    await renew(client, "n")  # a report resets the deadline, timed by our clock
    await eventually(
        _truthy(lambda: controller.nodes.get("n") and controller._probes["n"].at == clock.now)
    )
    assert await controller.reconcile("n") == 40.0

    clock.now += 41  # silent: Unknown and tainted; the opted-out pod has 299 s left
    assert await controller.reconcile("n") == pytest.approx(299.0)
    await eventually(
        _truthy(lambda: condition(controller.nodes.get("n") or {}, "Ready")["status"] == "Unknown")
    )
    await eventually(_truthy(lambda: our_taints(controller.nodes.get("n") or {})))

    def pods_not_ready() -> bool:
        pods = [controller.pods.get(name, NS) or {} for name in ("stays", "leaves")]
        return all(condition(p, "Ready").get("status") == "False" for p in pods)

    await eventually(_truthy(pods_not_ready))  # both marked, the opted-out one not yet gone
    assert await controller.reconcile("n") == pytest.approx(299.0)  # idempotent
    assert condition(await client.get(PODS, "stays", NS), "Ready")["status"] == "False"

    clock.now += 299
    assert await controller.reconcile("n") is None
    await eventually(_truthy(lambda: controller.pods.get("leaves", NS) is None))
    assert controller.pods.get("stays", NS) is not None


async def test_a_restarted_controller_keeps_an_unknown_node_tainted(client: Client) -> None:
    # Marked Unknown and tainted by an earlier controller, before this one starts.
    await add_node(client, "n", ready=False)
    unknown = {"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown"}
    unknown["lastHeartbeatTime"] = _stamp()
    body = {"status": {"conditions": [unknown]}}
    await patch(client, NODES, "n", body, None, subresource="status")
    taint = {"key": UNREACHABLE, "effect": "NoSchedule"}
    await patch(client, NODES, "n", {"spec": {"taints": [taint]}}, None)

    async with Virtual(client) as (controller, clock):
        # Within the grace period after start the taint stays (and gains its NoExecute twin).
        assert await controller.reconcile("n") == 40.0

        def taints() -> list[tuple[str, str]]:
            return our_taints(controller.nodes.get("n") or {})

        await eventually(_truthy(lambda: len(taints()) == 2))
        # A fresh Lease means the node is back: the taints go before its status says so.
        clock.now += 5
        await renew(client, "n")
        await eventually(_truthy(lambda: controller._probes["n"].reported))
        assert await controller.reconcile("n") == 40.0
        await eventually(_truthy(lambda: not taints()))


def _truthy(check: Callable[[], object]) -> Callable[[], Awaitable[None]]:
    """For ``eventually``: ``check`` (on the informers' caches) holds."""

    async def run() -> None:
        assert check()

    return run
