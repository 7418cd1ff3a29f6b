"""The status path end to end with the real workers: a Cluster whose node runs its local
controller on a free port, which it announces; the global manager gives the workers pinned to
that node that URL as ``LC_SERVER``; digits streamed through the edge worker become the
service's ``status.metrics`` (reference ``sedna.md`` §1.2, §1.6, §8.4 S1)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from orbiter.collab.apis import JOINT_INFERENCE_SERVICES, MODELS
from orbiter.orchestration.client import PODS, Client

from orbiter.testing import Cluster

from ..converging import until
from .digits import DigitsModels, train_and_export
from .test_globalmanager import JI, NS, PREFIX, WAIT, env_of, lc_announced, running_pod

pytestmark = pytest.mark.slow

SAMPLES = 60
WORKER = ["python", "-m", "orbiter.collab.workers"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DigitsModels:
    return train_and_export(tmp_path_factory.mktemp("digits"))


def free_port() -> int:
    # Bound and released: another process could take it meanwhile, which a test can afford.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def model(name: str, path: Path) -> dict[str, Any]:
    return {
        "apiVersion": "sedna.io/v1alpha1",
        "kind": "Model",
        "metadata": {"name": name},
        "spec": {"url": str(path), "format": "onnx"},
    }


def worker(kind: str, env: dict[str, str]) -> dict[str, Any]:
    return {
        "spec": {
            "nodeName": "edge-0",
            "terminationGracePeriodSeconds": 5,
            "containers": [
                {
                    "name": kind,
                    "image": "python",
                    "command": [*WORKER, f"joint-{kind}"],
                    "env": [{"name": k, "value": v} for k, v in env.items()],
                }
            ],
        }
    }


def digits_service(edge_port: int, cloud_port: int) -> dict[str, Any]:
    """deploy/examples/collab/joint-inference-digits.yaml with free ports and fast reports."""
    return {
        "apiVersion": "sedna.io/v1alpha1",
        "kind": "JointInferenceService",
        "metadata": {"name": JI},
        "spec": {
            "edgeWorker": {
                "model": {"name": "digits-edge"},
                "hardExampleMining": {
                    "name": "CrossEntropy",
                    "parameters": [{"key": "threshold_cross_entropy", "value": "0.9"}],
                },
                "template": worker("edge", {"EDGE_BIND_PORT": str(edge_port), "LC_PERIOD": "0.2"}),
            },
            "cloudWorker": {
                "model": {"name": "digits-cloud"},
                "template": worker("cloud", {"BIG_MODEL_BIND_PORT": str(cloud_port)}),
            },
        },
    }


async def metrics(client: Client) -> dict[str, str]:
    ji = await client.get(JOINT_INFERENCE_SERVICES, JI, NS)
    return {m["key"]: m["value"] for m in (ji.get("status") or {}).get("metrics") or []}


async def worker_pods(client: Client) -> list[dict[str, Any]]:
    found = await client.list(PODS, NS, label_selector=f"{PREFIX}/name={JI}")
    return list(found["items"])


async def test_digits_through_the_edge_worker_become_the_service_metrics(
    tmp_path: Path, digits: DigitsModels
) -> None:
    async with Cluster(tmp_path, edges=1) as cluster:
        await cluster.wait_ready(WAIT)
        client = cluster.client
        # The LC listens on a free port: the workers can only reach it through its announcement.
        lc_url = await lc_announced(cluster, "edge-0")
        await client.create(MODELS, model("digits-edge", digits.edge_onnx), NS)
        await client.create(MODELS, model("digits-cloud", digits.cloud_onnx), NS)
        edge_port, cloud_port = free_port(), free_port()
        await client.create(JOINT_INFERENCE_SERVICES, digits_service(edge_port, cloud_port), NS)
        try:
            await until(running_pod(client, "cloud"), "the cloud worker Running", WAIT)
            edge_pod = await until(running_pod(client, "edge"), "the edge worker Running", WAIT)
            assert env_of(edge_pod)["LC_SERVER"] == lc_url

            base = f"http://127.0.0.1:{edge_port}"
            async with aiohttp.ClientSession() as session:

                async def ready() -> bool:
                    try:
                        async with session.get(f"{base}/v2/health/ready") as response:
                            return response.status == 200
                    except aiohttp.ClientError:
                        return False

                await until(ready, "the edge worker's endpoint ready", WAIT, interval=0.1)
                by_cloud = 0
                for i in range(SAMPLES):
                    x = digits.split.x_test[i : i + 1]
                    tensor = {"name": "input", "datatype": "FP32", "shape": list(x.shape)}
                    body = {"inputs": [{**tensor, "data": x.ravel()}]}
                    async with session.post(
                        f"{base}/v2/models/{JI}/infer",
                        data=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
                        headers={"Content-Type": "application/json"},
                    ) as response:
                        answer = await response.json()
                        assert response.status == 200, answer
                    by_cloud += answer["parameters"]["answered_by"] == "cloud"
            assert 0 < by_cloud < SAMPLES, "the threshold sends some digits, not all, to the cloud"

            async def reported() -> dict[str, str] | None:
                found = await metrics(client)
                if found.get("inferenceNumber") != str(SAMPLES):
                    return None
                if abs(float(found["uploadCloudRatio"]) - by_cloud / SAMPLES) > 1e-9:
                    return None
                return found

            await until(reported, "the digits counted in status.metrics", WAIT)
            status = (await client.get(JOINT_INFERENCE_SERVICES, JI, NS))["status"]
            # The GM's own fields are still there next to the metrics.
            assert status["conditions"][-1]["type"] == "Running"
            assert status["startTime"] and "active" in status
        finally:
            # Pods are processes that outlive their node: delete them through the API first.
            await client.delete(JOINT_INFERENCE_SERVICES, JI, NS)

            async def gone() -> bool:
                return not await worker_pods(client)

            await until(gone, "the worker pods to go", WAIT)
