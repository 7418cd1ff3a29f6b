"""The global manager's JointInferenceService controller, in a real cloud with real edge nodes:
workers made, placed, configured and kept; status; bad specs and unplaceable workers refused
with a condition that says why; Sedna's example applied by kubectl."""

from __future__ import annotations

import asyncio
import copy
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from orbiter.collab.apis import JOINT_INFERENCE_SERVICES, MODELS
from orbiter.collab.globalmanager import controllers
from orbiter.orchestration.client import (
    DEPLOYMENTS,
    NODES,
    PODS,
    Client,
    ConflictError,
    KubeClient,
    LocalClient,
    NotFoundError,
    Resource,
)
from orbiter.orchestration.cloud import SERVICES, ControllerManager

from orbiter.testing import Cloud, Cluster

from ..converging import until

NS = "default"
JI = "demo"
WAIT = 60.0
SLEEP = ["python", "-c", "import time; time.sleep(3600)"]
PREFIX = "jointinferenceservice.sedna.io"
EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "sedna"
KUBECTL = "/usr/bin/kubectl"
LC_ANNOTATION = "sedna.io/lc-server"  # where a node's local controller listens
HAVE_KUBECTL = Path(KUBECTL).exists()


def model(name: str, **annotations: str) -> dict[str, Any]:
    return {
        "apiVersion": "sedna.io/v1alpha1",
        "kind": "Model",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"url": f"/models/{name}.onnx", "format": "onnx"},
    }


def template(node: str, **container: Any) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": "demo"}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "worker", "image": "python", "command": SLEEP, **container}],
        },
    }


def service(
    edge: dict[str, Any] | None = None,
    cloud: dict[str, Any] | None = None,
    hem: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "sedna.io/v1alpha1",
        "kind": "JointInferenceService",
        "metadata": {"name": JI},
        "spec": {
            "edgeWorker": {
                "model": {"name": "little"},
                "hardExampleMining": hem
                or {"name": "IBT", "parameters": [{"key": "threshold_img", "value": "0.9"}]},
                "template": edge or template("edge-0"),
            },
            "cloudWorker": {"model": {"name": "big"}, "template": cloud or template("edge-0")},
        },
    }


async def patch(client: Client, res: Resource, name: str, body: Any, **kw: Any) -> dict[str, Any]:
    """A merge patch, retried on 409 (the controller writes the same object)."""
    for _ in range(50):
        try:
            return await client.patch(res, name, body, NS, **kw)
        except ConflictError:
            await asyncio.sleep(0.02)  # lost a race with the controller: read again
    raise AssertionError(f"patching {res.plural}/{name} kept conflicting")


async def get(client: Client, res: Resource, name: str) -> dict[str, Any] | None:
    try:
        return await client.get(res, name, NS)
    except NotFoundError:
        return None


def current(ji: dict[str, Any] | None) -> dict[str, Any]:
    """The service's current condition (the last of its history)."""
    conditions = ((ji or {}).get("status") or {}).get("conditions") or [{}]
    return dict(conditions[-1])


def condition(
    client: Client, kind: str, reason: str = ""
) -> Callable[[], Awaitable[dict[str, Any] | None]]:
    async def check() -> dict[str, Any] | None:
        now = current(await get(client, JOINT_INFERENCE_SERVICES, JI))
        ok = now.get("type") == kind and (not reason or now.get("reason") == reason)
        return now if ok else None

    return check


async def names(client: Client, res: Resource) -> list[str]:
    return sorted(o["metadata"]["name"] for o in (await client.list(res, NS))["items"])


def env_of(obj: dict[str, Any]) -> dict[str, Any]:
    """The first container's env of a Deployment or a Pod: name -> value (or valueFrom)."""
    spec = obj["spec"]["template"]["spec"] if obj["kind"] == "Deployment" else obj["spec"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in spec["containers"][0]["env"]}


def process_env(pod: dict[str, Any]) -> dict[str, str]:
    """The environment the node started the container's process with."""
    pid = int(pod["status"]["containerStatuses"][0]["containerID"].removeprefix("process://"))
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def running_pod(client: Client, kind: str) -> Callable[[], Awaitable[dict[str, Any] | None]]:
    """The one live pod of a worker, once Running with its final env (the edge worker's
    BIG_MODEL_IP is the cloud pod's IP once that is known)."""

    async def check() -> dict[str, Any] | None:
        selector = f"{PREFIX}/name={JI},{PREFIX}/worker-type={kind}"
        pods = (await client.list(PODS, NS, label_selector=selector))["items"]
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        if len(live) != 1 or (live[0].get("status") or {}).get("phase") != "Running":
            return None
        if kind == "edge" and env_of(live[0]).get("BIG_MODEL_IP") != "127.0.0.1":
            return None
        return live[0]

    return check


async def lc_announced(cluster: Cluster, node: str) -> str:
    """The node's LC URL once the GM recorded it on the Node (what its workers are given)."""
    url = f"http://127.0.0.1:{cluster.lc_port(node)}"

    async def check() -> bool:
        found = await cluster.client.get(NODES, node)
        return (found["metadata"].get("annotations") or {}).get(LC_ANNOTATION) == url

    await until(check, f"{node}'s local controller URL on its Node", WAIT)
    return url


async def start_models(client: Client) -> None:
    await client.create(MODELS, model("little"), NS)
    await client.create(MODELS, model("big"), NS)


@pytest.mark.slow
async def test_a_service_runs_its_workers_keeps_them_and_takes_them_away(tmp_path: Path) -> None:
    async with Cluster(tmp_path, edges=2) as cluster:
        await cluster.wait_ready(WAIT)
        client = cluster.client
        # Each node's LC is on a free port: its workers are given that one (nodeName).
        lc_edge_1 = await lc_announced(cluster, "edge-1")
        await start_models(client)
        user_env = [
            {"name": "input_shape", "value": "416,736"},
            {"name": "LC_SERVER", "value": "x"},
        ]
        ji = await client.create(
            JOINT_INFERENCE_SERVICES,
            service(edge=template("edge-0", env=user_env), cloud=template("edge-1")),
            NS,
        )
        uid = ji["metadata"]["uid"]
        running = await until(condition(client, "Running"), "the service Running", WAIT)
        assert running["reason"] == "WorkersAvailable"
        assert running["lastTransitionTime"] and running["lastHeartbeatTime"]

        # The objects Sedna's GM makes, labelled and owned by the service.
        assert await names(client, DEPLOYMENTS) == [
            f"{JI}-deployment-cloud",
            f"{JI}-deployment-edge",
        ]
        cloud = await client.get(DEPLOYMENTS, f"{JI}-deployment-cloud", NS)
        edge = await client.get(DEPLOYMENTS, f"{JI}-deployment-edge", NS)
        for kind, d in (("cloud", cloud), ("edge", edge)):
            labels = {f"{PREFIX}/name": JI, f"{PREFIX}/uid": uid, f"{PREFIX}/worker-type": kind}
            assert d["spec"]["replicas"] == 1
            assert d["metadata"]["labels"] == labels
            assert d["spec"]["template"]["metadata"]["labels"] == {"app": "demo", **labels}
            [ref] = d["metadata"]["ownerReferences"]
            assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
                "JointInferenceService",
                JI,
                uid,
                True,
            )
        svc = await client.get(SERVICES, f"{JI}-cloud", NS)
        assert svc["spec"]["ports"] == [
            {"name": "tcp-0", "protocol": "TCP", "port": 5000, "targetPort": 5000}
        ]
        assert svc["spec"]["selector"] == cloud["spec"]["selector"]["matchLabels"]
        assert svc["metadata"]["ownerReferences"][0]["uid"] == uid

        # Sedna's env, the user's kept (LC_SERVER too: the user's value wins).
        common = {"NAMESPACE": NS, "SERVICE_NAME": JI, "LC_SERVER": lc_edge_1}
        worker_name = {"fieldRef": {"fieldPath": "metadata.name"}}
        assert env_of(cloud) == {
            **common,
            "WORKER_NAME": worker_name,
            "MODEL_URL": "/models/big.onnx",
            "BIG_MODEL_BIND_PORT": "5000",
            "BIG_MODEL_NAME": "big",  # served under the name the edge asks for
        }
        edge_env = {
            "input_shape": "416,736",
            **common,
            "LC_SERVER": "x",
            "WORKER_NAME": worker_name,
            "MODEL_URL": "/models/little.onnx",
            "BIG_MODEL_IP": "127.0.0.1",
            "BIG_MODEL_PORT": "5000",
            "BIG_MODEL_NAME": "big",
            "HEM_NAME": "IBT",
            "HEM_PARAMETERS": '[{"key":"threshold_img","value":"0.9"}]',
        }
        assert env_of(edge) == edge_env
        assert list(env_of(edge))[:2] == ["input_shape", "LC_SERVER"], "the user's come first"

        # The pods run where the templates say, with that env in their processes.
        cloud_pod = await until(running_pod(client, "cloud"), "the cloud worker Running", WAIT)
        edge_pod = await until(running_pod(client, "edge"), "the edge worker Running", WAIT)
        assert (cloud_pod["spec"]["nodeName"], edge_pod["spec"]["nodeName"]) == ("edge-1", "edge-0")
        assert env_of(edge_pod) == edge_env
        seen = process_env(edge_pod)
        assert seen["WORKER_NAME"] == edge_pod["metadata"]["name"]
        literal = {k: v for k, v in edge_env.items() if k != "WORKER_NAME"}
        assert {k: seen.get(k) for k in literal} == literal
        assert process_env(cloud_pod)["WORKER_NAME"] == cloud_pod["metadata"]["name"]

        ji = await client.get(JOINT_INFERENCE_SERVICES, JI, NS)
        assert [c["type"] for c in ji["status"]["conditions"]] == ["Pending", "Running"]
        assert ji["status"]["startTime"] and ji["status"]["failed"] == 0
        await until(
            lambda: _status_is(client, active=2), "two active workers (the edge one rolled)", WAIT
        )

        # Metrics written by someone else survive the controller's own status writes.
        metrics = [
            {"key": "inferenceNumber", "value": "120"},
            {"key": "hardExampleNumber", "value": "9"},
        ]
        await patch(
            client,
            JOINT_INFERENCE_SERVICES,
            JI,
            {"status": {"metrics": metrics}},
            subresource="status",
        )
        # A deleted Deployment comes back (and the status goes Pending and Running again).
        await client.delete(DEPLOYMENTS, f"{JI}-deployment-edge", NS)

        async def edge_back() -> bool:
            again = await get(client, DEPLOYMENTS, f"{JI}-deployment-edge")
            return again is not None and again["metadata"]["uid"] != edge["metadata"]["uid"]

        await until(edge_back, "the edge Deployment made again", WAIT)
        await until(condition(client, "Running"), "the service Running again", WAIT)
        ji = await client.get(JOINT_INFERENCE_SERVICES, JI, NS)
        assert len(ji["status"]["conditions"]) >= 3, "the Pending in between is in the history"
        assert ji["status"]["metrics"] == metrics

        # A deleted Service comes back too.
        await client.delete(SERVICES, f"{JI}-cloud", NS)

        async def service_back() -> bool:
            again = await get(client, SERVICES, f"{JI}-cloud")
            return again is not None and again["metadata"]["uid"] != svc["metadata"]["uid"]

        await until(service_back, "the Service made again", WAIT)

        # A spec change reaches the Deployment.
        hem = {
            "name": "CrossEntropy",
            "parameters": [{"key": "threshold_cross_entropy", "value": "0.7"}],
        }
        await patch(
            client,
            JOINT_INFERENCE_SERVICES,
            JI,
            {"spec": {"edgeWorker": {"hardExampleMining": hem}}},
        )

        async def hem_updated() -> bool:
            env = env_of(await client.get(DEPLOYMENTS, f"{JI}-deployment-edge", NS))
            return env["HEM_NAME"] == "CrossEntropy" and env["HEM_PARAMETERS"] == (
                '[{"key":"threshold_cross_entropy","value":"0.7"}]'
            )

        await until(hem_updated, "the edge Deployment given the new HEM", WAIT)
        assert (await client.get(JOINT_INFERENCE_SERVICES, JI, NS))["status"]["metrics"] == metrics

        # A node's LC announcing a new URL reaches the workers pinned there (edge-1: cloud).
        moved = "http://127.0.0.1:1"
        await client.patch(NODES, "edge-1", {"metadata": {"annotations": {LC_ANNOTATION: moved}}})

        async def lc_moved() -> bool:
            env = env_of(await client.get(DEPLOYMENTS, f"{JI}-deployment-cloud", NS))
            return bool(env["LC_SERVER"] == moved)

        await until(lc_moved, "the cloud Deployment given the node's new LC_SERVER", WAIT)

        # Deleting the service takes its workers with it, processes included.
        await client.delete(JOINT_INFERENCE_SERVICES, JI, NS)

        async def all_gone() -> bool:
            left = [await names(client, r) for r in (DEPLOYMENTS, SERVICES, PODS)]
            running = [e.runtime.running_pods() for e in cluster.edges]
            return left == [[], [], []] and not any(running)

        await until(all_gone, "Deployments, Service, pods and processes gone", WAIT)


async def _status_is(client: Client, **fields: Any) -> bool:
    status = (await client.get(JOINT_INFERENCE_SERVICES, JI, NS)).get("status") or {}
    return all(status.get(k) == v for k, v in fields.items())


BAD_SPECS = {
    "missing model": (
        {"edge": template("edge-0")},
        "ModelNotFound",
        'model "little" (the edge worker\'s) not found in namespace default',
    ),
    "unknown HEM": (
        {"hem": {"name": "Smart"}},
        "InvalidHardExampleMining",
        "edgeWorker.hardExampleMining: unknown hard_example_mining 'Smart'; known: CloudOnly",
    ),
    "non-numeric HEM parameter": (
        {"hem": {"name": "IBT", "parameters": [{"key": "threshold_img", "value": "high"}]}},
        "InvalidHardExampleMining",
        "edgeWorker.hardExampleMining: IBT: parameter threshold_img='high' is not a number",
    ),
}


@pytest.mark.parametrize("case", BAD_SPECS)
async def test_a_bad_spec_is_a_condition_naming_it_until_fixed(tmp_path: Path, case: str) -> None:
    spec, reason, message = BAD_SPECS[case]
    async with Cluster(tmp_path, edges=1) as cluster:
        await cluster.wait_ready(WAIT)
        client = cluster.client
        await client.create(MODELS, model("big"), NS)
        if case != "missing model":
            await client.create(MODELS, model("little"), NS)
        await client.create(JOINT_INFERENCE_SERVICES, service(**spec), NS)

        failed = await until(condition(client, "Failed", reason), f"a {reason} condition", WAIT)
        assert failed["status"] == "True"
        assert failed["message"].startswith(message), failed["message"]
        assert await names(client, DEPLOYMENTS) == [] and await names(client, SERVICES) == []

        if case == "missing model":
            await client.create(MODELS, model("little"), NS)
        else:
            fixed = {"name": "Threshold", "parameters": [{"key": "threshold", "value": "0.4"}]}
            body = {"spec": {"edgeWorker": {"hardExampleMining": fixed}}}
            await patch(client, JOINT_INFERENCE_SERVICES, JI, body)

        async def workers() -> bool:
            return (
                len(await names(client, DEPLOYMENTS)) == 2
                and len(await names(client, SERVICES)) == 1
            )

        await until(workers, "the workers made once the spec is fixed", WAIT)
        await until(condition(client, "Running"), "the service Running", WAIT)


async def test_workers_the_node_cannot_hold_are_refused_with_the_reason(tmp_path: Path) -> None:
    async with Cluster(tmp_path, edges=1) as cluster:
        await cluster.wait_ready(WAIT)
        client = cluster.client
        await start_models(client)
        node = await client.get(NODES, "edge-0")
        memory = node["status"]["allocatable"]["memory"]
        arch = node["metadata"]["labels"]["kubernetes.io/arch"]

        async def refused(edge: dict[str, Any], kind: str, reason: str, message: str) -> None:
            await client.create(JOINT_INFERENCE_SERVICES, service(edge=edge), NS)
            got = await until(condition(client, kind, reason), f"{reason}: {message}", WAIT)
            assert got["message"] == message
            assert await names(client, DEPLOYMENTS) == []
            await client.delete(JOINT_INFERENCE_SERVICES, JI, NS)
            await until(lambda: _absent(client), "the refused service deleted", WAIT)

        big = {"requests": {"memory": "64Ti"}}
        shown = _gibibytes(memory)
        await refused(
            template("edge-0", resources=big),
            "Failed",
            "Unschedulable",
            f"node edge-0 has {shown} allocatable memory, the edge worker requests 64Ti",
        )
        gpu = {"limits": {"nvidia.com/gpu": 1}}
        await refused(
            template("edge-0", resources=gpu),
            "Failed",
            "Unschedulable",
            "node edge-0 has no nvidia.com/gpu, the edge worker requests 1",
        )
        other = "riscv64" if arch != "riscv64" else "s390x"
        on_arch = template("edge-0")
        on_arch["spec"]["nodeSelector"] = {"kubernetes.io/arch": other}
        await refused(
            on_arch,
            "Failed",
            "Unschedulable",
            f"node edge-0 does not match the edge worker's nodeSelector kubernetes.io/arch={other} "
            f"(it has kubernetes.io/arch={arch})",
        )
        await refused(
            template("edge-7"),
            "Pending",
            "NodeNotFound",
            "node edge-7 (the edge worker's nodeName) not found",
        )
        # A model built for another architecture (annotation sedna.io/arch).
        await client.delete(MODELS, "little", NS)
        await client.create(MODELS, model("little", **{"sedna.io/arch": other}), NS)
        await refused(
            template("edge-0"),
            "Failed",
            "Unschedulable",
            f"node edge-0 is {arch}, the edge worker's model runs on {other} (sedna.io/arch)",
        )
        await client.delete(MODELS, "little", NS)
        await client.create(MODELS, model("little", **{"sedna.io/arch": f"{other},{arch}"}), NS)

        # Made to fit, the worker is made.
        await client.create(
            JOINT_INFERENCE_SERVICES, service(edge=template("edge-0", resources=big)), NS
        )
        await until(condition(client, "Failed", "Unschedulable"), "refused for memory", WAIT)
        fits = template("edge-0", resources={"requests": {"memory": "64Mi"}})
        await patch(
            client, JOINT_INFERENCE_SERVICES, JI, {"spec": {"edgeWorker": {"template": fits}}}
        )
        await until(condition(client, "Running"), "the service Running once it fits", WAIT)


async def _absent(client: Client) -> bool:
    gone = await get(client, JOINT_INFERENCE_SERVICES, JI) is None
    return gone and await names(client, DEPLOYMENTS) == []


def _gibibytes(quantity: str) -> str:
    """A node's allocatable memory (``NNNKi``) as the controller shows it."""
    kib = int(quantity.removesuffix("Ki"))
    whole, rest = divmod(kib, 2**20)
    return f"{whole}Gi" if rest == 0 else f"{kib / 2**20:.1f}Gi"


async def kubectl(cluster: Cluster, tmp_path: Path, *args: str, stdin: str | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        KUBECTL,
        "--kubeconfig",
        str(cluster.kubeconfig),
        "--cache-dir",
        str(tmp_path / "kube-cache"),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
    )
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    assert proc.returncode == 0, f"kubectl {' '.join(args)}: {err.decode()}"
    return out.decode()


@pytest.mark.slow
@pytest.mark.kubectl
async def test_sedna_helmet_example_applied_by_kubectl_runs(tmp_path: Path) -> None:
    if not HAVE_KUBECTL:
        pytest.fail(f"{KUBECTL} is not installed", pytrace=False)
    example = EXAMPLES / "joint-inference.yaml"
    name = yaml.safe_load(example.read_text())["metadata"]["name"]
    async with Cluster(tmp_path, edges=2) as cluster:
        await cluster.wait_ready(WAIT)
        client = cluster.client
        await kubectl(cluster, tmp_path, "apply", "-f", str(EXAMPLES / "models.yaml"))
        out = await kubectl(cluster, tmp_path, "apply", "-f", str(example))
        assert out.strip() == f"jointinferenceservice.sedna.io/{name} created"

        # Applied unchanged: its nodes (cloud0, edge0) are not in this cluster.
        async def waiting() -> dict[str, Any] | None:
            now = current(await get(client, JOINT_INFERENCE_SERVICES, name))
            return now if now.get("reason") == "NodeNotFound" else None

        pending = await until(waiting, "the example Pending for its nodes", WAIT)
        assert pending["type"] == "Pending"
        assert pending["message"] == "node cloud0 (the cloud worker's nodeName) not found"
        assert await names(client, DEPLOYMENTS) == []

        # The same manifest with this cluster's node names (what `sed s/edge0/edge-0/` gives).
        text = example.read_text().replace("nodeName: edge0", "nodeName: edge-0")
        text = text.replace("nodeName: cloud0", "nodeName: edge-1")
        assert text != example.read_text()
        await kubectl(cluster, tmp_path, "apply", "-f", "-", stdin=text)

        async def made() -> bool:
            return await names(client, DEPLOYMENTS) == [
                f"{name}-deployment-cloud",
                f"{name}-deployment-edge",
            ] and await names(client, SERVICES) == [f"{name}-cloud"]

        await until(made, "the example's Deployments and Service", WAIT)
        edge = await client.get(DEPLOYMENTS, f"{name}-deployment-edge", NS)
        env = env_of(edge)
        assert env["input_shape"] == "416,736" and env["HEM_NAME"] == "IBT"
        assert json.loads(env["HEM_PARAMETERS"]) == [
            {"key": "threshold_img", "value": "0.9"},
            {"key": "threshold_box", "value": "0.5"},
        ]
        assert env["BIG_MODEL_NAME"] == "helmet-detection-inference-big-model"
        assert env["MODEL_URL"] == "/data/little-model/yolov3_resnet18.pb"

        async def placed() -> bool:
            pods = (await client.list(PODS, NS))["items"]
            where = {
                p["metadata"]["labels"][f"{PREFIX}/worker-type"]: p["spec"].get("nodeName")
                for p in pods
            }
            return where == {"cloud": "edge-1", "edge": "edge-0"}

        await until(placed, "the example's pods on their nodes", WAIT)
        # The user's volumes and resources are kept as written.
        spec = edge["spec"]["template"]["spec"]
        source = yaml.safe_load(text)["spec"]["edgeWorker"]["template"]["spec"]
        assert spec["volumes"] == source["volumes"]
        assert spec["containers"][0]["resources"] == copy.deepcopy(
            source["containers"][0]["resources"]
        )
        await kubectl(cluster, tmp_path, "delete", "-f", "-", stdin=text)
        await until(lambda: _nothing_left(client), "the example's workers gone", WAIT)


async def _nothing_left(client: Client) -> bool:
    return [await names(client, r) for r in (DEPLOYMENTS, SERVICES, PODS)] == [[], [], []]


async def test_the_global_manager_alone_over_https_as_against_a_real_cluster(
    tmp_path: Path,
) -> None:
    """Only the ``Client`` API: the controllers run over the official client, next to a
    cluster whose own controllers (here the cloud's built-in ones) do the rest."""
    ports = {"port": 0, "hub_port": 0, "join_port": 0, "router_port": 0}
    async with (
        Cloud(tmp_path, controllers=(), **ports) as cloud,
        LocalClient(cloud.server.api) as client,
        KubeClient.from_kubeconfig(cloud.server.kubeconfig_path) as remote,
        ControllerManager(remote, resync=None, builtin=False, extra=controllers()) as manager,
    ):
        assert [type(c).__name__ for c in manager.controllers] == ["JointInferenceController"]
        node = {
            "metadata": {"name": "k8s-node", "labels": {"kubernetes.io/arch": "amd64"}},
            "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}},
        }
        await client.create(NODES, node)
        await client.create(MODELS, model("big"), NS)
        await client.create(
            JOINT_INFERENCE_SERVICES,
            service(edge=template("k8s-node"), cloud=template("k8s-node")),
            NS,
        )
        missing = await until(condition(client, "Failed", "ModelNotFound"), "ModelNotFound", WAIT)
        assert missing["message"].startswith('model "little"')
        await client.create(MODELS, model("little"), NS)

        async def made() -> bool:
            return (
                len(await names(client, DEPLOYMENTS)) == 2
                and len(await names(client, SERVICES)) == 1
            )

        await until(made, "the workers made over HTTPS", WAIT)
        # No node agent runs there: the workers stay unavailable, and the status says so.
        pending = await until(condition(client, "Pending", "WorkersNotReady"), "Pending", WAIT)
        assert pending["message"] == "waiting for available workers: cloud 0/1, edge 0/1"
        await client.delete(JOINT_INFERENCE_SERVICES, JI, NS)
        await until(lambda: _absent(client), "the workers gone with the service", WAIT)
