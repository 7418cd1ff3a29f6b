"""The scheduler against a real API server, and its placement rules as plain functions."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from orbiter.orchestration.client import EVENTS, NODES, PODS, Client, LocalClient
from orbiter.orchestration.cloud import ControllerManager, Informers, Scheduler
from orbiter.orchestration.cloud.placement import (
    Usage,
    amount,
    failure_message,
    misfits,
    node_affinity_matches,
    parse_quantity,
    pod_usage,
    preferred_affinity,
    rank,
    requirement_matches,
    term_matches,
    tolerates,
    untolerated,
)

from .waiting import eventually, patch

NS = "default"
Obj = dict[str, Any]


# --- builders --------------------------------------------------------------------------------


def node_object(
    name: str,
    *,
    cpu: str = "4",
    memory: str = "8Gi",
    pods: int = 110,
    labels: dict[str, str] | None = None,
    taints: list[Obj] | None = None,
    unschedulable: bool = False,
    ready: str | None = "True",
) -> tuple[Obj, Obj]:
    """A Node and, separately, the status its kubelet would report (``ready=None``: no
    Ready condition)."""
    spec: Obj = {}
    if taints:
        spec["taints"] = taints
    if unschedulable:
        spec["unschedulable"] = True
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": spec}
    node["metadata"]["labels"] = {"kubernetes.io/hostname": name, **(labels or {})}
    resources = {"cpu": cpu, "memory": memory, "pods": str(pods)}
    status: Obj = {"capacity": resources, "allocatable": resources}
    if ready is not None:
        status["conditions"] = [{"type": "Ready", "status": ready, "reason": "KubeletReady"}]
    return node, status


async def add_node(client: Client, name: str, **kw: Any) -> None:
    node, status = node_object(name, **kw)
    await client.create(NODES, node)
    await client.patch(NODES, name, {"status": status}, subresource="status")


def pod_object(name: str, cpu: str | None = None, memory: str | None = None, **spec: Any) -> Obj:
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    container: Obj = {"name": "main", "image": "nginx:1.25"}
    if requests:
        container["resources"] = {"requests": requests}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"containers": [container], **spec},
    }


async def node_of(client: Client, name: str) -> str:
    async def bound() -> str:
        pod = await client.get(PODS, name, NS)
        assert pod["spec"].get("nodeName"), pod.get("status")
        return str(pod["spec"]["nodeName"])

    return await eventually(bound, within=10)


async def events_of(client: Client, pod: str, reason: str) -> list[Obj]:
    items = (await client.list(EVENTS, NS))["items"]
    return [e for e in items if e["involvedObject"]["name"] == pod and e["reason"] == reason]


async def unschedulable(client: Client, name: str, message: str) -> Obj:
    """The pod's FailedScheduling event, once the pod shows ``message`` as unschedulable."""

    async def check() -> Obj:
        pod = await client.get(PODS, name, NS)
        assert not pod["spec"].get("nodeName")
        assert pod["status"].get("phase", "Pending") == "Pending"
        conds = [c for c in pod["status"].get("conditions") or [] if c["type"] == "PodScheduled"]
        assert [(c["status"], c["reason"], c["message"]) for c in conds] == [
            ("False", "Unschedulable", message)
        ]
        events = await events_of(client, name, "FailedScheduling")
        assert [e["message"] for e in events] == [message]
        return events[0]

    return await eventually(check, within=10)


@pytest.fixture
async def scheduler(client: LocalClient) -> AsyncIterator[Scheduler]:
    async with Running(client) as sched:
        yield sched


@pytest.fixture
async def patient(client: LocalClient) -> AsyncIterator[Scheduler]:
    """A scheduler whose back-off outlasts any test: only events can make it retry."""
    async with Running(client, backoff=(600.0, 600.0)) as sched:
        yield sched


class Running:
    """A Scheduler on its own informers, started and stopped."""

    def __init__(self, client: Client, **kw: Any) -> None:
        self.informers = Informers(client)
        kw.setdefault("backoff", (0.05, 0.2))
        self.scheduler = Scheduler(client, self.informers, resync=None, **kw)

    async def __aenter__(self) -> Scheduler:
        await self.informers.start()
        await self.scheduler.start()
        return self.scheduler

    async def __aexit__(self, *exc: object) -> None:
        await self.scheduler.stop()
        await self.informers.stop()


# --- filters, each passing and failing -------------------------------------------------------


async def test_cordoned_node_is_skipped(client: Client, scheduler: Scheduler) -> None:
    await add_node(client, "a", unschedulable=True)
    await add_node(client, "b")
    await client.create(PODS, pod_object("p"))
    assert await node_of(client, "p") == "b"

    await client.create(PODS, pod_object("q", nodeSelector={"kubernetes.io/hostname": "a"}))
    message = (
        "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, "
        "1 node(s) were unschedulable."
    )
    await unschedulable(client, "q", message)
    # Tolerating the cordon's taint (as DaemonSet pods do) lets a pod in anyway.
    tolerant = pod_object("r", nodeSelector={"kubernetes.io/hostname": "a"})
    tolerant["spec"]["tolerations"] = [{"key": "node.kubernetes.io/unschedulable"}]
    tolerant["spec"]["tolerations"][0]["operator"] = "Exists"
    await client.create(PODS, tolerant)
    assert await node_of(client, "r") == "a"


async def test_node_selector(client: Client, scheduler: Scheduler) -> None:
    await add_node(client, "a", labels={"zone": "x"})
    await add_node(client, "b", labels={"zone": "y"})
    await client.create(PODS, pod_object("p", nodeSelector={"zone": "y"}))
    assert await node_of(client, "p") == "b"
    await client.create(PODS, pod_object("q", nodeSelector={"zone": "z"}))
    message = "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector."
    await unschedulable(client, "q", message)


async def test_required_node_affinity(client: Client, scheduler: Scheduler) -> None:
    await add_node(client, "a", labels={"gpus": "2", "node-role.kubernetes.io/edge": ""})
    await add_node(client, "b", labels={"gpus": "8"})

    def affinity(*terms: Obj) -> Obj:
        required = {"nodeSelectorTerms": list(terms)}
        return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}

    edge = {"key": "node-role.kubernetes.io/edge", "operator": "Exists"}
    many = {"key": "gpus", "operator": "Gt", "values": ["4"]}
    by_name = {"key": "metadata.name", "operator": "In", "values": ["b"]}
    # Expressions ANDed (edge and >4 gpus: none); terms ORed (the name term picks b).
    pods = {
        "edge": affinity({"matchExpressions": [edge]}),
        "named": affinity({"matchExpressions": [edge, many]}, {"matchFields": [by_name]}),
        "none": affinity({"matchExpressions": [edge, many]}),
    }
    for name, spec in pods.items():
        await client.create(PODS, pod_object(name, affinity=spec))
    assert await node_of(client, "edge") == "a"
    assert await node_of(client, "named") == "b"
    message = "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector."
    await unschedulable(client, "none", message)


async def test_taints_and_tolerations(client: Client, scheduler: Scheduler) -> None:
    gpu = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
    await add_node(client, "a", taints=[gpu])
    await add_node(client, "b", taints=[{"key": "spot", "effect": "PreferNoSchedule"}])
    await add_node(client, "c", taints=[{"key": "draining", "effect": "NoExecute"}])
    # PreferNoSchedule only steers: an intolerant pod still lands on b.
    await client.create(PODS, pod_object("plain"))
    assert await node_of(client, "plain") == "b"
    # A tolerated taint no longer filters, and a is then preferred over the spot node.
    tolerant = pod_object("tolerant", tolerations=[{**gpu, "operator": "Equal"}])
    await client.create(PODS, tolerant)
    assert await node_of(client, "tolerant") == "a"
    # The wrong value or effect does not tolerate.
    wrong = [{"key": "dedicated", "value": "cpu"}, {"key": "draining", "effect": "NoSchedule"}]
    await client.create(PODS, pod_object("wrong", tolerations=wrong, nodeSelector={"x": "y"}))
    message = (
        "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, "
        "1 node(s) had untolerated taint {dedicated: gpu}, "
        "1 node(s) had untolerated taint {draining: }."
    )
    await unschedulable(client, "wrong", message)
    # An empty key with Exists tolerates everything.
    anything = pod_object("anything", tolerations=[{"operator": "Exists"}])
    anything["spec"]["nodeSelector"] = {"kubernetes.io/hostname": "c"}
    await client.create(PODS, anything)
    assert await node_of(client, "anything") == "c"


async def test_nodes_not_ready_are_skipped(client: Client, scheduler: Scheduler) -> None:
    await add_node(client, "a", ready="False")
    await add_node(client, "b", ready=None)  # no Ready condition at all
    await add_node(client, "c", ready="Unknown")
    await add_node(client, "d")
    await client.create(PODS, pod_object("p"))
    assert await node_of(client, "p") == "d"

    await client.create(PODS, pod_object("q", nodeSelector={"kubernetes.io/hostname": "a"}))
    message = (
        "0/4 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, "
        "1 node(s) had untolerated taint {node.kubernetes.io/unreachable: }, "
        "2 node(s) had untolerated taint {node.kubernetes.io/not-ready: }."
    )
    await unschedulable(client, "q", message)
    tolerant = pod_object("r", nodeSelector={"kubernetes.io/hostname": "b"})
    tolerant["spec"]["tolerations"] = [{"key": "node.kubernetes.io/not-ready"}]
    tolerant["spec"]["tolerations"][0]["operator"] = "Exists"
    await client.create(PODS, tolerant)
    assert await node_of(client, "r") == "b"


async def test_resource_requests(client: Client, scheduler: Scheduler) -> None:
    await add_node(client, "small", cpu="1", memory="1Gi")
    await add_node(client, "big", cpu="4", memory="8Gi", pods=2)
    await client.create(PODS, pod_object("cpu", cpu="1500m"))
    assert await node_of(client, "cpu") == "big"
    # Init containers count at their largest (900m), not summed (3.2 cpus would not fit).
    init = pod_object("init", cpu="500m", memory="512Mi")
    init["spec"]["nodeSelector"] = {"kubernetes.io/hostname": "small"}
    init["spec"]["initContainers"] = [
        {"name": f"i{n}", "image": "busybox", "resources": {"requests": {"cpu": "0.9"}}}
        for n in range(3)
    ]
    await client.create(PODS, init)
    assert await node_of(client, "init") == "small"
    await client.create(PODS, pod_object("memory", memory="16Gi"))
    await unschedulable(client, "memory", "0/2 nodes are available: 2 Insufficient memory.")
    # big holds 1500m of 4 cpus, small 900m of 1: 3 cpus fit nowhere.
    await client.create(PODS, pod_object("three", cpu="3"))
    await unschedulable(client, "three", "0/2 nodes are available: 2 Insufficient cpu.")
    await client.create(PODS, pod_object("second", cpu="100m"))
    assert await node_of(client, "second") == "big"
    await client.create(PODS, pod_object("third", cpu="200m"))
    message = "0/2 nodes are available: 1 Insufficient cpu, 1 Too many pods."
    await unschedulable(client, "third", message)


# --- spreading and bookkeeping ---------------------------------------------------------------


async def test_pods_spread_evenly_over_equal_nodes(client: Client, scheduler: Scheduler) -> None:
    for name in ("a", "b", "c"):
        await add_node(client, name)

    async def all_nodes_seen() -> None:  # else a loaded machine spreads over the nodes it has
        assert {n["metadata"]["name"] for n in scheduler.nodes.items() if n.get("status")} == {
            "a",
            "b",
            "c",
        }
        assert all(n["status"].get("allocatable") for n in scheduler.nodes.items())

    await eventually(all_nodes_seen)
    names = [f"p{i}" for i in range(6)]
    await asyncio.gather(*(client.create(PODS, pod_object(n, cpu="100m")) for n in names))
    placed = [await node_of(client, n) for n in names]
    assert Counter(placed) == {"a": 2, "b": 2, "c": 2}
    # Each bind is reported once, in kube-scheduler's words.
    events = [e for n in names for e in await events_of(client, n, "Scheduled")]
    assert sorted(e["message"] for e in events) == sorted(
        f"Successfully assigned {NS}/{n} to {node}" for n, node in zip(names, placed, strict=True)
    )
    assert {(e["type"], e["source"]["component"], e["count"]) for e in events} == {
        ("Normal", "default-scheduler", 1)
    }


async def test_assumed_pods_hold_their_room_before_the_cache_sees_them(
    client: LocalClient,
) -> None:
    await add_node(client, "a", cpu="1")
    for name in ("p", "q"):
        await client.create(PODS, pod_object(name, cpu="600m"))
    informers = Informers(client)
    sched = Scheduler(client, informers, resync=None)  # not started: reconciled by hand
    await informers.start()
    try:
        pods = informers(PODS)
        # Freeze the pod cache: it will never see the binding below.
        await pods.stop()
        assert pods.get("q", NS) is not None
        assert await sched.reconcile((NS, "p")) is None
        assert await node_of(client, "p") == "a"
        assert await sched.reconcile((NS, "p")) is None  # assumed: not bound twice
        assert isinstance(await sched.reconcile((NS, "q")), float)  # retried later
        q = await client.get(PODS, "q", NS)
        assert not q["spec"].get("nodeName")
        assert q["status"]["conditions"][-1]["message"] == (
            "0/1 nodes are available: 1 Insufficient cpu."
        )
    finally:
        await sched.stop()
        await informers.stop()


async def test_failed_scheduling_event_counts_retries(client: Client, scheduler: Scheduler) -> None:
    await add_node(client, "a", cpu="1")
    await client.create(PODS, pod_object("big", cpu="2"))
    message = "0/1 nodes are available: 1 Insufficient cpu."
    event = await unschedulable(client, "big", message)
    pod = await client.get(PODS, "big", NS)
    assert event["type"] == "Warning"
    assert event["source"] == {"component": "default-scheduler"}
    involved = event["involvedObject"]
    assert (involved["kind"], involved["namespace"], involved["name"], involved["uid"]) == (
        "Pod",
        NS,
        "big",
        pod["metadata"]["uid"],
    )

    async def counted_again() -> None:
        events = await events_of(client, "big", "FailedScheduling")
        assert len(events) == 1  # the same Event, counted, not one per retry
        assert events[0]["count"] >= 3

    await eventually(counted_again)


async def test_scheduling_resumes_when_a_node_joins_or_changes(
    client: Client, patient: Scheduler
) -> None:
    await client.create(PODS, pod_object("p"))
    await unschedulable(client, "p", "no nodes available to schedule pods")
    await add_node(client, "a")
    assert await node_of(client, "p") == "a"

    await client.create(PODS, pod_object("q", nodeSelector={"role": "edge"}))
    message = "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    await unschedulable(client, "q", message)
    await patch(client, NODES, "a", {"metadata": {"labels": {"role": "edge"}}}, None)
    assert await node_of(client, "q") == "a"


async def test_scheduling_resumes_when_capacity_is_freed(
    client: Client, patient: Scheduler
) -> None:
    await add_node(client, "a", pods=2)
    for name in ("p", "q"):
        await client.create(PODS, pod_object(name))
        assert await node_of(client, name) == "a"
    await client.create(PODS, pod_object("r"))
    await unschedulable(client, "r", "0/1 nodes are available: 1 Too many pods.")
    await client.delete(PODS, "p", NS)
    assert await node_of(client, "r") == "a"

    await client.create(PODS, pod_object("s"))
    await unschedulable(client, "s", "0/1 nodes are available: 1 Too many pods.")
    # A finished pod holds nothing either.
    await patch(client, PODS, "q", {"status": {"phase": "Succeeded"}}, NS, subresource="status")
    assert await node_of(client, "s") == "a"


async def test_pods_bound_or_for_other_schedulers_are_left_alone(client: LocalClient) -> None:
    await add_node(client, "a", pods=2)
    await client.create(PODS, pod_object("pinned", nodeName="a"))
    await client.create(PODS, pod_object("other", schedulerName="my-scheduler"))
    # One worker takes keys in order: once the last pod is bound, any mistake on the first
    # two would already be written.
    async with Running(client, workers=1) as sched:
        await client.create(PODS, pod_object("last"))
        assert await node_of(client, "last") == "a"
        assert not {(NS, "pinned"), (NS, "other")} & set(sched.keys())
        assert await sched.reconcile((NS, "other")) is None
        # The pinned pod fills a's second slot.
        await client.create(PODS, pod_object("more"))
        await unschedulable(client, "more", "0/1 nodes are available: 1 Too many pods.")
    pinned = await client.get(PODS, "pinned", NS)
    other = await client.get(PODS, "other", NS)
    assert other["spec"].get("nodeName") is None
    for pod in (pinned, other):
        assert not [c for c in pod["status"].get("conditions") or [] if c["type"] == "PodScheduled"]
    events = (await client.list(EVENTS, NS))["items"]
    assert {e["involvedObject"]["name"] for e in events} == {"last", "more"}


async def test_the_controller_manager_runs_the_scheduler(
    client: Client, controllers: ControllerManager
) -> None:
    assert any(isinstance(c, Scheduler) for c in controllers.controllers)
    await add_node(client, "a")
    await client.create(PODS, pod_object("p"))
    assert await node_of(client, "p") == "a"
    pod = await client.get(PODS, "p", NS)
    scheduled = [c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled"]
    assert [c["status"] for c in scheduled] == ["True"]


# --- placement rules as plain functions ------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "value", "expected"),
    [
        ("cpu", "500m", 500),
        ("cpu", "1", 1000),
        ("cpu", "0.5", 500),
        ("cpu", 2, 2000),
        ("cpu", 0.25, 250),
        ("cpu", "100u", 1),  # rounded up, as MilliValue
        ("memory", "128974848", 128974848),
        ("memory", "129e6", 129_000_000),
        ("memory", "129E6", 129_000_000),
        ("memory", "123Ki", 123 * 1024),
        ("memory", "129M", 129_000_000),
        ("memory", "1K", 1000),
        ("memory", "1k", 1000),
        ("memory", "1.5Gi", 3 * 2**29),
        ("memory", "2G", 2 * 10**9),
        ("memory", "1Mi", 2**20),
        ("memory", "1E", 10**18),
        ("memory", "0.1", 1),
        ("pods", "110", 110),
    ],
)
def test_amounts(resource: str, value: Any, expected: int) -> None:
    assert amount(resource, value) == expected


@pytest.mark.parametrize("value", ["", "abc", "1Xi", "1 Gi", "-1", "1e", "m", None, True, [1]])
def test_bad_quantities(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_quantity(value)


def test_parse_quantity_is_exact() -> None:
    assert parse_quantity("0.1") == Decimal("0.1")
    assert parse_quantity("1m") * 1000 == 1


def test_pod_usage() -> None:
    pod = pod_object("p", cpu="250m", memory="64Mi")
    pod["spec"]["containers"].append(
        {"name": "side", "image": "x", "resources": {"limits": {"cpu": "1", "example.com/gpu": 1}}}
    )
    pod["spec"]["containers"].append({"name": "bare", "image": "x"})
    pod["spec"]["initContainers"] = [
        {"name": "i", "image": "x", "resources": {"requests": {"cpu": "2", "memory": "1Mi"}}}
    ]
    pod["spec"]["overhead"] = {"cpu": "10m"}
    usage = pod_usage(pod)
    # Limits stand in for missing requests; init containers win when larger; overhead adds.
    assert usage.requests == {"cpu": 2010, "memory": 64 * 2**20, "example.com/gpu": 1}
    assert usage.pods == 1
    # Scoring counts a container asking nothing as 100m and 200Mi.
    assert (usage.nonzero_cpu, usage.nonzero_memory) == (1350, (64 + 400) * 2**20)
    assert pod_usage(pod_object("empty")).requests == {}
    with pytest.raises(ValueError):
        pod_usage(pod_object("bad", cpu="lots"))


def labelled(name: str, **labels: str) -> Obj:
    return {"metadata": {"name": name, "labels": labels}}


@pytest.mark.parametrize(
    ("op", "values", "matches"),
    [
        ("In", ["a", "b"], True),
        ("In", ["c"], False),
        ("NotIn", ["c"], True),
        ("NotIn", ["a"], False),
        ("Exists", [], True),
        ("DoesNotExist", [], False),
        ("Gt", ["-1"], False),  # the label "a" is no integer
        ("Bogus", ["a"], False),
    ],
)
def test_requirement_operators(op: str, values: list[str], matches: bool) -> None:
    req = {"key": "k", "operator": op, "values": values}
    assert requirement_matches(req, {"k": "a"}) is matches


def test_requirement_operators_on_absent_keys_and_numbers() -> None:
    def req(op: str, *values: str) -> Obj:
        return {"key": "n", "operator": op, "values": list(values)}

    assert requirement_matches(req("NotIn", "1"), {})
    assert requirement_matches(req("DoesNotExist"), {})
    assert not requirement_matches(req("In", "1"), {})
    assert not requirement_matches(req("Exists"), {})
    assert requirement_matches(req("Gt", "4"), {"n": "5"})
    assert not requirement_matches(req("Gt", "5"), {"n": "5"})
    assert requirement_matches(req("Lt", "10"), {"n": "5"})
    assert not requirement_matches(req("Lt", "5"), {"n": "5"})
    assert not requirement_matches(req("Gt"), {"n": "5"})  # exactly one value needed
    assert not requirement_matches(req("Gt", "4"), {})


def test_node_selector_terms() -> None:
    node = labelled("n1", zone="x", tier="edge")
    zone = {"key": "zone", "operator": "In", "values": ["x"]}
    other = {"key": "tier", "operator": "In", "values": ["cloud"]}
    named = {"key": "metadata.name", "operator": "In", "values": ["n1"]}
    assert term_matches({"matchExpressions": [zone]}, node)
    assert not term_matches({"matchExpressions": [zone, other]}, node)  # ANDed
    assert term_matches({"matchExpressions": [zone], "matchFields": [named]}, node)
    assert not term_matches({"matchFields": [{**named, "values": ["n2"]}]}, node)
    assert not term_matches({}, node)  # an empty term matches nothing

    def pod(*terms: Obj, **selector: str) -> Obj:
        required = {"nodeSelectorTerms": list(terms)}
        affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}
        return {"spec": {"affinity": affinity, "nodeSelector": selector}}

    assert node_affinity_matches(pod({"matchExpressions": [other]}, {"matchFields": [named]}), node)
    assert not node_affinity_matches(pod({"matchExpressions": [other]}), node)
    assert not node_affinity_matches(pod({"matchFields": [named]}, zone="y"), node)
    assert node_affinity_matches({"spec": {"nodeSelector": {"zone": "x"}}}, node)
    assert node_affinity_matches({"spec": {}}, node)


def test_preferred_affinity_adds_up_matching_weights() -> None:
    zone = {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["x"]}]}
    edge = {"matchExpressions": [{"key": "tier", "operator": "Exists"}]}
    preferred = [{"weight": 5, "preference": zone}, {"weight": 20, "preference": edge}]
    pod = {"spec": {"affinity": {"nodeAffinity": {}}}}
    pod["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"] = (
        preferred
    )
    assert preferred_affinity(pod, labelled("n", zone="x", tier="edge")) == 25
    assert preferred_affinity(pod, labelled("n", zone="x")) == 5
    assert preferred_affinity(pod, labelled("n")) == 0
    # Preference decides between otherwise equal nodes; without it, the name does.
    usage = Usage(nonzero_cpu=100, nonzero_memory=2**20, pods=1)
    nodes = [node_object(n, labels=labels) for n, labels in (("a", {}), ("b", {"zone": "x"}))]
    candidates = [({**n, "status": s}, Usage()) for n, s in nodes]
    assert [name for _, name in rank(pod, usage, candidates)] == ["b", "a"]
    assert [name for _, name in rank({"spec": {}}, usage, candidates)] == ["a", "b"]


def test_prefer_no_schedule_taints_steer() -> None:
    spot, status = node_object("a", taints=[{"key": "spot", "effect": "PreferNoSchedule"}])
    clean, clean_status = node_object("b")
    candidates = [
        ({**spot, "status": status}, Usage()),
        ({**clean, "status": clean_status}, Usage()),
    ]
    usage = Usage(nonzero_cpu=100, nonzero_memory=2**20, pods=1)
    assert [name for _, name in rank({"spec": {}}, usage, candidates)] == ["b", "a"]
    tolerant = {"spec": {"tolerations": [{"key": "spot", "operator": "Exists"}]}}
    assert [name for _, name in rank(tolerant, usage, candidates)] == ["a", "b"]


@pytest.mark.parametrize(
    ("toleration", "taint", "tolerated"),
    [
        ({"key": "k", "value": "v"}, {"key": "k", "value": "v", "effect": "NoSchedule"}, True),
        ({"key": "k", "operator": "Equal", "value": "w"}, {"key": "k", "value": "v"}, False),
        ({"key": "k", "operator": "Exists"}, {"key": "k", "value": "v"}, True),
        ({"key": "j", "operator": "Exists"}, {"key": "k"}, False),
        ({"operator": "Exists"}, {"key": "k", "value": "v", "effect": "NoExecute"}, True),
        ({"key": "k", "operator": "Exists", "effect": "NoExecute"}, {"key": "k"}, False),
        (
            {"key": "k", "operator": "Exists", "effect": "NoSchedule"},
            {"key": "k", "effect": "NoSchedule"},
            True,
        ),
        ({"key": "k", "operator": "Bogus"}, {"key": "k"}, False),
    ],
)
def test_tolerations(toleration: Obj, taint: Obj, tolerated: bool) -> None:
    assert tolerates(toleration, {"effect": "NoSchedule", **taint}) is tolerated


def test_only_hard_taints_filter() -> None:
    taints = [
        {"key": "a", "effect": "NoSchedule"},
        {"key": "b", "effect": "PreferNoSchedule"},
        {"key": "c", "effect": "NoExecute"},
    ]
    assert [t["key"] for t in untolerated([], taints)] == ["a", "c"]
    assert [t["key"] for t in untolerated([{"key": "c", "operator": "Exists"}], taints)] == ["a"]


def test_misfits_and_message() -> None:
    node, status = node_object("n", cpu="1", memory="1Gi", pods=3)
    node["status"] = status
    pod = pod_object("p", cpu="2", memory="2Gi")
    assert misfits(pod, pod_usage(pod), node, Usage()) == [
        "Insufficient cpu",
        "Insufficient memory",
    ]
    small = pod_object("s", cpu="500m")
    full = Usage(requests={"cpu": 600}, pods=3)
    assert misfits(small, pod_usage(small), node, full) == ["Too many pods", "Insufficient cpu"]
    assert misfits(small, pod_usage(small), node, Usage(requests={"cpu": 500}, pods=1)) == []
    reasons = {"Insufficient cpu": 2, "node(s) didn't match Pod's node affinity/selector": 1}
    assert failure_message(3, reasons) == (
        "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, "
        "2 Insufficient cpu."
    )
    assert failure_message(0, {}) == "no nodes available to schedule pods"
