"""Planned offline: a node annotated with contact windows is expected to be silent between
them (ExpectedOffline, no taints, no eviction) and goes Unknown only when a window passes
without a report. The node lifecycle controller against a real API server, on a fake clock
that serves as both its monotonic and its wall clock."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest
from orbiter.orchestration.client import NODES, PODS, Client, LocalClient
from orbiter.orchestration.cloud import Informers, NodeLifecycleController
from orbiter.orchestration.cloud.nodelifecycle import (
    ACQUISITION_ANNOTATION,
    LEASE_NAMESPACE,
    WINDOWS_ANNOTATION,
)

from .test_nodelifecycle import (
    NS,
    UNREACHABLE,
    Obj,
    add_node,
    condition,
    our_taints,
    pod_object,
    renew,
    running,
)
from .waiting import eventually, patch

T0 = 1_790_000_000.0  # 2026-09-21T14:13:20Z
W1 = (T0 + 600, T0 + 1200)
W2 = (T0 + 6000, T0 + 6600)
ACQUISITION, GRACE, EVICTION = 60.0, 40.0, 300.0
DEADLINE = W1[0] + ACQUISITION + GRACE  # the node must have reported by then in W1


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Planned:
    """The controller on a fake clock, workers not running: tests call ``reconcile``."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.clock = Clock()
        self.informers = Informers(client)
        self.controller = NodeLifecycleController(
            client,
            self.informers,
            resync=None,
            grace_period=GRACE,
            eviction_timeout=EVICTION,
            clock=self.clock,
            wallclock=self.clock,
        )

    def node(self) -> Obj:
        return self.controller.nodes.get("sat") or {}

    async def until(self, check: Callable[[], object]) -> None:
        """Until the informers' caches satisfy ``check`` (our writes came back)."""

        async def run() -> None:
            assert check()

        await eventually(run, within=10)

    async def reconcile_at(self, t: float) -> float | None:
        self.clock.now = t
        return await self.controller.reconcile("sat")

    def expected_offline(self) -> Obj:
        return condition(self.node(), "ExpectedOffline")


@pytest.fixture
async def planned(client: LocalClient) -> AsyncIterator[Planned]:
    p = Planned(client)
    await p.informers.start()
    try:
        await add_node(client, "sat")
        windows = json.dumps([list(W1), list(W2)])
        annotations = {WINDOWS_ANNOTATION: windows, ACQUISITION_ANNOTATION: str(ACQUISITION)}
        await patch(client, NODES, "sat", {"metadata": {"annotations": annotations}}, None)
        await p.until(
            lambda: (
                WINDOWS_ANNOTATION in (p.node().get("metadata", {}).get("annotations") or {})
                and p.controller.leases.get("sat", LEASE_NAMESPACE)
            )
        )
        assert await p.reconcile_at(T0) == GRACE  # reporting: the usual grace period
        yield p
    finally:
        await p.informers.stop()


def _wait(x: float | None) -> float:
    assert x is not None
    return x


async def test_between_windows_expected_offline_then_a_missed_window_is_unknown(
    planned: Planned,
) -> None:
    p = planned
    # Silent past the grace period, before W1: expected, not Unknown.
    assert await p.reconcile_at(T0 + 100) == pytest.approx(W1[0] - (T0 + 100))
    await p.until(lambda: p.expected_offline().get("status") == "True")
    cond = p.expected_offline()
    assert cond["reason"] == "BetweenContacts"
    assert cond["message"] == f"next contact window {rfc3339(W1[0])} (in 8 min)"
    ready = condition(p.node(), "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "EdgeReady")  # untouched
    assert our_taints(p.node()) == []

    # Later between the same windows: nothing is rewritten ("in N min" is not a change).
    rv = p.node()["metadata"]["resourceVersion"]
    assert await p.reconcile_at(T0 + 400) == pytest.approx(200.0)
    assert (await p.client.get(NODES, "sat"))["metadata"]["resourceVersion"] == rv

    # W1 has started: acquisition + grace to report.
    assert await p.reconcile_at(W1[0] + 10) == pytest.approx(DEADLINE - (W1[0] + 10))
    await p.until(lambda: p.expected_offline().get("reason") == "AwaitingContact")
    assert f"report due by {rfc3339(DEADLINE)}" in p.expected_offline()["message"]
    assert condition(p.node(), "Ready")["status"] == "True" and not our_taints(p.node())

    # The pass brought no contact: Unknown and tainted, the message names the window.
    await p.reconcile_at(DEADLINE + 1)
    await p.until(lambda: condition(p.node(), "Ready").get("status") == "Unknown")
    await p.until(lambda: our_taints(p.node()))
    missed = f"no contact in planned window {rfc3339(W1[0])} to {rfc3339(W1[1])}"
    ready = condition(p.node(), "Ready")
    assert ready["reason"] == "NodeStatusUnknown" and missed in ready["message"]
    assert our_taints(p.node()) == [(UNREACHABLE, "NoExecute"), (UNREACHABLE, "NoSchedule")]
    cond = p.expected_offline()
    assert (cond["status"], cond["reason"], cond["message"]) == ("False", "ContactMissed", missed)

    # Still missed while waiting for W2: a later window does not excuse the missed one.
    await p.reconcile_at(W2[0] - 60)
    assert condition(p.node(), "Ready")["status"] == "Unknown" and our_taints(p.node())

    # The plan's writer drops ended windows from the annotation: the miss is not forgotten.
    only_w2 = {WINDOWS_ANNOTATION: json.dumps([list(W2)])}
    await patch(p.client, NODES, "sat", {"metadata": {"annotations": only_w2}}, None)
    await p.until(
        lambda: (
            (p.node()["metadata"].get("annotations") or {}).get(WINDOWS_ANNOTATION)
            == only_w2[WINDOWS_ANNOTATION]
        )
    )
    await p.reconcile_at(W2[0] - 30)
    assert condition(p.node(), "Ready")["status"] == "Unknown" and our_taints(p.node())
    assert p.expected_offline()["reason"] == "ContactMissed"


@pytest.mark.parametrize("raw", ["[[1e300, 1e301]]", "[[-5, 10]]", "[[1, 2], [3]]"])
async def test_an_out_of_range_annotation_leaves_the_usual_rules(
    planned: Planned, raw: str
) -> None:
    p = planned
    bad = {"metadata": {"annotations": {WINDOWS_ANNOTATION: raw}}}
    await patch(p.client, NODES, "sat", bad, None)
    await p.until(
        lambda: (p.node()["metadata"].get("annotations") or {}).get(WINDOWS_ANNOTATION) == raw
    )
    # Silent past the grace period: Unknown as any node, no error on the way.
    await p.reconcile_at(T0 + GRACE + 1)
    await p.until(lambda: condition(p.node(), "Ready").get("status") == "Unknown")


async def test_a_node_that_reports_in_its_window_is_fine(planned: Planned) -> None:
    p = planned
    await p.reconcile_at(T0 + 100)
    await p.until(lambda: p.expected_offline().get("status") == "True")

    p.clock.now = W1[0] + 30  # in contact: the node renews its lease
    await renew(p.client, "sat")
    await p.until(lambda: p.controller._probes["sat"].at == W1[0] + 30)
    assert await p.reconcile_at(W1[0] + 30) == GRACE
    await p.until(lambda: p.expected_offline().get("status") == "False")
    assert p.expected_offline()["reason"] == "Reporting"
    assert condition(p.node(), "Ready")["status"] == "True" and not our_taints(p.node())

    # The pass ends and the node falls silent: expected again, waiting for W2.
    assert await p.reconcile_at(W1[1] + 5) == pytest.approx(W2[0] - (W1[1] + 5))
    await p.until(lambda: p.expected_offline().get("status") == "True")
    assert p.expected_offline()["message"].startswith(f"next contact window {rfc3339(W2[0])}")
    assert condition(p.node(), "Ready")["status"] == "True" and not our_taints(p.node())


async def test_opted_out_pods_stay_between_windows_and_go_after_a_missed_one(
    client: Client, planned: Planned
) -> None:
    p = planned
    await client.create(PODS, pod_object("stays", "sat"))
    await client.create(PODS, pod_object("leaves", "sat", evict=True))
    for name in ("stays", "leaves"):
        await running(client, name)
    await p.until(lambda: len(p.controller._pods.get("sat", ())) == 2)

    # Between windows for longer than the eviction timeout: nothing happens to the pods.
    await p.reconcile_at(T0 + 100)
    await p.until(lambda: p.expected_offline().get("status") == "True")
    await p.reconcile_at(W1[0] - 1)  # 499 s silent, > grace + eviction timeout
    for name in ("stays", "leaves"):
        pod = await client.get(PODS, name, NS)
        assert condition(pod, "Ready")["status"] == "True"

    # W1 missed: both marked not Ready; the opted-out one goes EVICTION s after the deadline.
    wait = _wait(await p.reconcile_at(DEADLINE + 1))
    assert wait == pytest.approx(EVICTION - 1)
    await p.until(lambda: our_taints(p.node()))

    async def marked() -> None:
        for name in ("stays", "leaves"):
            pod = await client.get(PODS, name, NS)
            assert condition(pod, "Ready")["status"] == "False"

    await eventually(marked, within=10)
    assert await p.reconcile_at(DEADLINE + EVICTION + 1) is None
    await p.until(lambda: p.controller.pods.get("leaves", NS) is None)
    assert p.controller.pods.get("stays", NS) is not None


async def test_unreadable_or_spent_windows_leave_the_usual_rules(planned: Planned) -> None:
    p = planned
    await p.reconcile_at(T0 + 100)
    await p.until(lambda: p.expected_offline().get("status") == "True")

    # Reported in the last window, then every window is over (the plan ran out): the
    # silence is not excused any more.
    p.clock.now = W2[0] + 30
    await renew(p.client, "sat")
    await p.until(lambda: p.controller._probes["sat"].at == W2[0] + 30)
    assert await p.reconcile_at(W2[0] + 30) == GRACE
    await p.until(lambda: p.expected_offline().get("status") == "False")
    await p.reconcile_at(W2[1] + 200)
    await p.until(lambda: condition(p.node(), "Ready").get("status") == "Unknown")
    cond = p.expected_offline()
    assert (cond["status"], cond["reason"]) == ("False", "NoContactPlanned")
    ready = condition(p.node(), "Ready")
    assert ready["message"] == "Kubelet stopped posting node status."

    # A garbled annotation is no plan: a report clears the taints as for any node.
    garbled = {"metadata": {"annotations": {WINDOWS_ANNOTATION: "[[1, 2"}}}
    await patch(p.client, NODES, "sat", garbled, None)
    await p.until(
        lambda: (p.node()["metadata"].get("annotations") or {}).get(WINDOWS_ANNOTATION) == "[[1, 2"
    )
    p.clock.now = W2[1] + 300
    await renew(p.client, "sat")
    await p.until(lambda: p.controller._probes["sat"].at == W2[1] + 300)
    assert await p.reconcile_at(W2[1] + 300) == GRACE
    await p.until(lambda: not our_taints(p.node()))
