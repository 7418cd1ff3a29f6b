"""The sedna.io/v1alpha1 CRDs, as a cloud serves them from its start: discovery, Sedna's example
manifests applied unchanged by real kubectl, schema validation, the status subresource and
printer columns, and the official Python client."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from orbiter.collab.apis import GROUP, VERSION, load_sedna_crds
from orbiter.orchestration.apiserver.patching import load_yaml
from orbiter.orchestration.client import CRDS, LocalClient

from orbiter.testing import Cloud, CloudThread

pytestmark = [pytest.mark.kubectl, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "sedna"
KUBECTL_DIR = Path("/usr/lib/google-cloud-sdk/bin")
# The dispatcher picks the client matching the server's /version; the others are explicit.
KUBECTLS = {
    "dispatcher": "/usr/bin/kubectl",
    "1.27": str(KUBECTL_DIR / "kubectl.1.27"),
    "1.33": str(KUBECTL_DIR / "kubectl.1.33"),
}
KINDS = {  # plural: (kind, short names)
    "datasets": ("Dataset", []),
    "models": ("Model", []),
    "jointinferenceservices": ("JointInferenceService", ["ji"]),
    "federatedlearningjobs": ("FederatedLearningJob", ["fl"]),
    "incrementallearningjobs": ("IncrementalLearningJob", ["il"]),
    "lifelonglearningjobs": ("LifelongLearningJob", ["ll"]),
}
JI = "helmet-detection-inference-example"
IL = "helmet-detection-demo"
EXAMPLE_NAMES = {
    "dataset.sedna.io/incremental-dataset",
    "dataset.sedna.io/edge1-surface-defect-detection-dataset",
    "dataset.sedna.io/edge2-surface-defect-detection-dataset",
    "dataset.sedna.io/lifelong-dataset",
    "model.sedna.io/helmet-detection-inference-little-model",
    "model.sedna.io/helmet-detection-inference-big-model",
    "model.sedna.io/initial-model",
    "model.sedna.io/deploy-model",
    "model.sedna.io/surface-defect-detection-model",
    f"jointinferenceservice.sedna.io/{JI}",
    f"incrementallearningjob.sedna.io/{IL}",
    "federatedlearningjob.sedna.io/surface-defect-detection",
    "lifelonglearningjob.sedna.io/atcii-classifier-demo",
}


def documents(path: Path) -> list[dict[str, Any]]:
    """A manifest's objects read as Kubernetes reads YAML (``end: 24:00`` stays a string)."""
    parts = re.split(r"^---\s*$", path.read_text(), flags=re.MULTILINE)
    return [doc for part in parts if (doc := load_yaml(part, str(path)))]


def example(name: str) -> dict[str, Any]:
    [doc] = documents(EXAMPLES / name)
    return doc


@dataclass
class Kubectl:
    binary: str
    kubeconfig: Path
    cache_dir: Path

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [self.binary, "--kubeconfig", str(self.kubeconfig), "--cache-dir",
                str(self.cache_dir), *args]  # fmt: skip
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)

    def __call__(self, *args: str, stdin: str | None = None) -> str:
        proc = self.run(*args, stdin=stdin)
        if proc.returncode != 0:
            pytest.fail(
                f"kubectl {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}",
                pytrace=False,
            )
        return proc.stdout

    def refused(self, *args: str, stdin: str | None = None) -> str:
        """kubectl's error output for a command that must fail."""
        proc = self.run(*args, stdin=stdin)
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        return proc.stderr

    def table(self, *args: str) -> list[list[str]]:
        return [line.split() for line in self("get", *args).splitlines()]


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[CloudThread]:
    # Without the global manager: these tests write the services' status themselves.
    with CloudThread(tmp_path / "cloud", controllers=()) as c:
        yield c


def kubectl_for(cloud: CloudThread, tmp_path: Path, which: str = "dispatcher") -> Kubectl:
    binary = KUBECTLS[which]
    if not Path(binary).exists():
        pytest.fail(f"{binary} is not installed", pytrace=False)
    return Kubectl(binary, cloud.kubeconfig, tmp_path / f"kube-cache-{which}")


@pytest.fixture
def kubectl(cloud: CloudThread, tmp_path: Path) -> Kubectl:
    return kubectl_for(cloud, tmp_path)


def test_the_cloud_serves_the_six_kinds_from_its_start(kubectl: Kubectl) -> None:
    listed = json.loads(kubectl("get", "--raw", f"/apis/{GROUP}/{VERSION}"))
    assert listed["groupVersion"] == "sedna.io/v1alpha1"
    resources = {r["name"]: r for r in listed["resources"]}
    assert set(resources) == set(KINDS) | {f"{plural}/status" for plural in KINDS}
    for plural, (kind, short_names) in KINDS.items():
        entry = resources[plural]
        assert (entry["kind"], entry.get("shortNames", []), entry["namespaced"]) == (
            kind, short_names, True,
        )  # fmt: skip
        assert entry["categories"] == ["sedna"]
        assert {"create", "get", "list", "watch", "patch", "delete"} <= set(entry["verbs"])
        assert resources[f"{plural}/status"]["verbs"] == ["get", "patch", "update"]

    crds = set(kubectl("get", "crd", "-o", "name").split())
    assert {f"customresourcedefinition.apiextensions.k8s.io/{p}.sedna.io" for p in KINDS} <= crds
    rows = [line.split() for line in kubectl("api-resources", "--api-group=sedna.io").splitlines()]
    assert rows[0] == ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
    assert sorted(rows[1:]) == sorted(
        [p, *short, "sedna.io/v1alpha1", "true", kind] for p, (kind, short) in KINDS.items()
    )


@pytest.mark.parametrize("which", list(KUBECTLS))
def test_sedna_example_manifests_apply_unchanged(
    which: str, cloud: CloudThread, tmp_path: Path
) -> None:
    kubectl = kubectl_for(cloud, tmp_path, which)
    out = kubectl("apply", "-f", str(EXAMPLES))
    assert {line.removesuffix(" created") for line in out.splitlines()} == EXAMPLE_NAMES

    listed = kubectl("get", "ji,il,fl,ll,datasets,models", "-o", "name").split()
    assert sorted(listed) == sorted(EXAMPLE_NAMES)
    assert sorted(kubectl("get", "sedna", "-o", "name").split()) == sorted(EXAMPLE_NAMES)

    # Stored as written: nothing pruned (pod templates are kept whole), the types Sedna's
    # controllers decode (trainProb and thresholds numbers, timer times strings).
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in documents(path):
            kind, name = doc["kind"].lower(), doc["metadata"]["name"]
            got = json.loads(kubectl("get", f"{kind}.sedna.io", name, "-o", "json"))
            assert got["spec"] == doc["spec"], (path.name, name)
    il = json.loads(kubectl("get", "il", IL, "-o", "json"))["spec"]
    assert il["dataset"] == {"name": "incremental-dataset", "trainProb": 0.8}
    assert il["trainSpec"]["trigger"] == {
        "checkPeriodSeconds": 60,
        "timer": {"start": "02:00", "end": "24:00"},
        "condition": {"operator": ">", "threshold": 500, "metric": "num_of_samples"},
    }
    ji = json.loads(kubectl("get", "ji", JI, "-o", "json"))["spec"]
    assert ji["edgeWorker"]["hardExampleMining"] == {
        "name": "IBT",
        "parameters": [
            {"key": "threshold_img", "value": "0.9"},
            {"key": "threshold_box", "value": "0.5"},
        ],
    }

    # Applied again, nothing changes.
    out = kubectl("apply", "-f", str(EXAMPLES))
    assert {line.removesuffix(" unchanged") for line in out.splitlines()} == EXAMPLE_NAMES


def test_printer_columns_follow_the_status_subresource(kubectl: Kubectl) -> None:
    kubectl("apply", "-f", str(EXAMPLES))
    assert kubectl.table("ji")[0] == ["NAME", "STATE", "ACTIVE", "FAILED", "AGE"]
    status = {
        "active": 2,
        "failed": 0,
        "startTime": "2026-01-01T00:00:00Z",
        "conditions": [
            {"type": "Pending", "status": "True", "lastHeartbeatTime": "2026-01-01T00:00:00Z"},
            {"type": "Running", "status": "True", "lastHeartbeatTime": "2026-01-01T00:00:05Z"},
        ],
        "metrics": [
            {"key": "inferenceNumber", "value": "120"},
            {"key": "hardExampleNumber", "value": "9"},
            {"key": "uploadCloudRatio", "value": "0.075"},
        ],
    }
    patch = json.dumps({"status": status})
    out = kubectl("patch", "ji", JI, "--subresource=status", "--type=merge", "-p", patch)
    assert out.strip() == f"jointinferenceservice.sedna.io/{JI} patched"
    [header, row] = kubectl.table("ji")
    assert row[:4] == [JI, "Running", "2", "0"]
    [header, row] = kubectl.table("ji", "-o", "wide")
    assert header == ["NAME", "STATE", "ACTIVE", "FAILED", "EDGE-MODEL", "CLOUD-MODEL", "AGE"]
    assert row[4:6] == [
        "helmet-detection-inference-little-model",
        "helmet-detection-inference-big-model",
    ]
    got = json.loads(kubectl("get", "ji", JI, "-o", "json"))
    assert got["status"] == status
    assert got["metadata"]["generation"] == 1  # status writes leave the spec's generation

    # The main resource ignores status; the status subresource ignores the spec.
    kubectl("patch", "ji", JI, "--type=merge", "-p", '{"status": {"active": 9}}')
    spec = json.dumps({"spec": {"cloudWorker": {"model": {"name": "other"}}}})
    kubectl("patch", "ji", JI, "--subresource=status", "--type=merge", "-p", spec)
    got = json.loads(kubectl("get", "ji", JI, "-o", "json"))
    assert got["status"]["active"] == 2
    assert got["spec"]["cloudWorker"]["model"]["name"] == "helmet-detection-inference-big-model"
    # Status is validated too: metric values are strings.
    bad = json.dumps({"status": {"metrics": [{"key": "inferenceNumber", "value": 120}]}})
    err = kubectl.refused("patch", "ji", JI, "--subresource=status", "--type=merge", "-p", bad)
    assert "status.metrics[0].value in body must be of type string" in err

    # Incremental learning: the stage and state of the latest condition.
    def conditions(*stages: tuple[str, str]) -> str:
        listed = [{"stage": s, "type": t, "status": "True", "data": "{}"} for s, t in stages]
        return json.dumps({"status": {"conditions": listed}})

    assert kubectl.table("il")[0] == ["NAME", "STAGE", "STATE", "AGE"]
    kubectl("patch", "il", IL, "--subresource=status", "--type=merge",
            "-p", conditions(("Train", "Waiting"), ("Train", "Ready")))  # fmt: skip
    assert kubectl.table("il")[1][:3] == [IL, "Train", "Ready"]
    kubectl("patch", "il", IL, "--subresource=status", "--type=merge",
            "-p", conditions(("Train", "Completed"), ("Eval", "Waiting")))  # fmt: skip
    assert kubectl.table("il")[1][:3] == [IL, "Eval", "Waiting"]
    err = kubectl.refused("patch", "il", IL, "--subresource=status", "--type=merge",
                          "-p", conditions(("Serve", "Waiting")))  # fmt: skip
    assert 'status.conditions[0].stage: Unsupported value: "Serve"' in err

    fl = "surface-defect-detection"
    phase = json.dumps({"status": {"phase": "Running", "active": 3, "succeeded": 0}})
    kubectl("patch", "fl", fl, "--subresource=status", "--type=merge", "-p", phase)
    assert kubectl.table("fl")[1][:3] == [fl, "Running", "3"]
    samples = json.dumps({"status": {"numberOfSamples": 520}})
    kubectl("patch", "dataset", "incremental-dataset", "--subresource=status", "--type=merge",
            "-p", samples)  # fmt: skip
    row = kubectl.table("dataset", "incremental-dataset")[1]
    assert row[:4] == ["incremental-dataset", "edge0", "txt", "520"]


def test_the_schema_refuses_broken_manifests_with_clear_messages(kubectl: Kubectl) -> None:
    ji = example("joint-inference.yaml")
    del ji["spec"]["edgeWorker"]
    err = kubectl.refused("apply", "-f", "-", stdin=json.dumps(ji))
    assert f'The JointInferenceService "{JI}" is invalid: spec.edgeWorker: Required value' in err

    ji = example("joint-inference.yaml")
    ji["spec"]["edgeWorker"]["hardExampleMining"]["parameters"][0]["value"] = 0.9
    err = kubectl.refused("apply", "-f", "-", stdin=json.dumps(ji))
    assert (
        "spec.edgeWorker.hardExampleMining.parameters[0].value in body must be of type string"
        in err
    )

    il = example("incremental-learning.yaml")
    il["spec"]["dataset"]["trainProb"] = "abc"
    err = kubectl.refused("apply", "-f", "-", stdin=json.dumps(il))
    assert (
        f'The IncrementalLearningJob "{IL}" is invalid: spec.dataset.trainProb: Invalid value: '
        '"string": spec.dataset.trainProb in body must be of type number: "string"'
    ) in err
    il["spec"]["dataset"]["trainProb"] = 1.5
    err = kubectl.refused("apply", "-f", "-", stdin=json.dumps(il))
    assert "spec.dataset.trainProb in body should be less than or equal to 1" in err
    il["spec"]["dataset"]["trainProb"] = 0.8
    del il["spec"]["deploySpec"]["trigger"]["condition"]["metric"]
    err = kubectl.refused("apply", "-f", "-", stdin=json.dumps(il))
    assert "spec.deploySpec.trigger.condition.metric: Required value" in err

    assert kubectl("get", "sedna", "-o", "name") == ""


def test_unknown_fields_are_refused_when_strict_and_pruned_otherwise(kubectl: Kubectl) -> None:
    """As for any CRD here (kube-apiserver's behaviour): kubectl's default ``--validate=strict``
    refuses an unknown field; ``--validate=warn`` stores the object without it and says so.
    Pod templates and HPA specs are free-form and keep everything."""
    ji = example("joint-inference.yaml")
    ji["spec"]["edgeWorker"]["nodeName"] = "edge0"  # Sedna v0.1's field, gone since
    ji["spec"]["cloudWorker"]["hpa"] = {
        "maxReplicas": 3,
        "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}},
    }
    ji["spec"]["cloudWorker"]["template"]["spec"]["someFutureField"] = {"kept": True}
    manifest = json.dumps(ji)
    err = kubectl.refused("apply", "-f", "-", stdin=manifest)
    assert 'strict decoding error: unknown field "spec.edgeWorker.nodeName"' in err

    proc = kubectl.run("apply", "--validate=warn", "-f", "-", stdin=manifest)
    assert proc.returncode == 0, proc.stderr
    assert 'Warning: unknown field "spec.edgeWorker.nodeName"' in proc.stderr
    got = json.loads(kubectl("get", "ji", JI, "-o", "json"))["spec"]
    assert "nodeName" not in got["edgeWorker"]
    assert got["cloudWorker"]["hpa"] == ji["spec"]["cloudWorker"]["hpa"]
    assert got["cloudWorker"]["template"]["spec"]["someFutureField"] == {"kept": True}


def test_the_python_client_lists_creates_and_writes_status(cloud: CloudThread) -> None:
    api = config.new_client_from_config(config_file=str(cloud.kubeconfig))
    try:
        objs = client.CustomObjectsApi(api)
        for doc in documents(EXAMPLES / "datasets.yaml"):
            objs.create_namespaced_custom_object(GROUP, VERSION, "default", "datasets", doc)
        listed = objs.list_namespaced_custom_object(GROUP, VERSION, "default", "datasets")
        assert len(listed["items"]) == 4
        everywhere = objs.list_cluster_custom_object(GROUP, VERSION, "datasets")
        assert {d["metadata"]["name"] for d in everywhere["items"]} == {
            d["metadata"]["name"] for d in listed["items"]
        }
        status = {"numberOfSamples": 12, "updateTime": "2026-01-01T00:00:00Z"}
        patched = objs.patch_namespaced_custom_object_status(
            GROUP, VERSION, "default", "datasets", "lifelong-dataset", {"status": status}
        )
        assert patched["status"] == status
        with pytest.raises(ApiException) as info:
            objs.patch_namespaced_custom_object_status(
                GROUP, VERSION, "default", "datasets", "lifelong-dataset",
                {"status": {"updateTime": "yesterday"}},
            )  # fmt: skip
        assert info.value.status == 422
        assert "status.updateTime in body must be of type date-time" in info.value.body
    finally:
        api.close()


async def test_the_cloud_installs_extra_crds_once_and_can_go_without(tmp_path: Path) -> None:
    ports = {"port": 0, "hub_port": 0, "join_port": 0, "router_port": 0}

    async def crd_versions(cloud: Cloud) -> dict[str, str]:
        async with LocalClient(cloud.server.api) as local:
            items = (await local.list(CRDS))["items"]
        return {
            c["metadata"]["name"]: c["metadata"]["resourceVersion"]
            for c in items
            if c["spec"]["group"] == GROUP
        }

    async with Cloud(tmp_path, crds=(), **ports) as bare:
        assert await crd_versions(bare) == {}
    async with Cloud(tmp_path, **ports) as first:
        installed = await crd_versions(first)
    assert set(installed) == {crd["metadata"]["name"] for crd in load_sedna_crds()}
    async with Cloud(tmp_path, **ports) as again:
        assert await crd_versions(again) == installed  # unchanged CRDs are not rewritten
