"""``kubectl logs`` for pods on edge nodes: the API server asks the cloud, the cloud asks the
node over CloudHub, the node streams its runtime's log back (kubeedge.md §8)."""

from __future__ import annotations

import asyncio
import queue
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException
from orbiter.orchestration.client import PODS

from orbiter.testing import Cluster, ClusterThread

from ..converging import until as eventually

WAIT = 60.0
NODE = "edge-0"
PRINTER = "import time\nfor i in range(1000): print('line', i, flush=True); time.sleep(0.05)"


def pod(name: str, containers: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": NODE,
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {"name": f"c{i}", "image": "python", "command": ["python", "-u", "-c", PRINTER]}
                for i in range(containers)
            ],
        },
    }


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with Cluster(tmp_path, edges=1) as c:
        await c.wait_ready()
        yield c


@pytest.fixture
async def core(cluster: Cluster) -> AsyncIterator[k8s.CoreV1Api]:
    path = str(cluster.kubeconfig)
    api_client = k8s_config.new_client_from_config(config_file=path)  # type: ignore[no-untyped-call]
    try:
        yield k8s.CoreV1Api(api_client)
    finally:
        api_client.close()


async def running_pod(cluster: Cluster, core: k8s.CoreV1Api, name: str, lines: int = 3) -> None:
    """Create the printer pod and wait until its log holds ``lines`` lines."""
    await cluster.client.create(PODS, pod(name), "default")

    async def printed() -> bool:
        try:
            text = await asyncio.to_thread(core.read_namespaced_pod_log, name, "default")
        except ApiException:
            return False  # not started yet
        return len(str(text).splitlines()) >= lines

    await eventually(printed, f"pod {name} printing")


async def test_logs_tail_and_limit(cluster: Cluster, core: k8s.CoreV1Api) -> None:
    await running_pod(cluster, core, "printer")
    text = await asyncio.to_thread(core.read_namespaced_pod_log, "printer", "default")
    lines = text.splitlines()
    assert lines[:3] == ["line 0", "line 1", "line 2"]
    tail = await asyncio.to_thread(core.read_namespaced_pod_log, "printer", "default", tail_lines=2)
    got = tail.splitlines()
    assert len(got) == 2 and got[0].startswith("line ")
    assert int(got[1].split()[1]) == int(got[0].split()[1]) + 1
    limited = await asyncio.to_thread(
        core.read_namespaced_pod_log, "printer", "default", limit_bytes=5, container="c0"
    )
    assert limited == "line "


async def test_follow_gets_new_lines_and_closes(cluster: Cluster, core: k8s.CoreV1Api) -> None:
    await running_pod(cluster, core, "follower")
    resp: Any = await asyncio.to_thread(
        core.read_namespaced_pod_log,
        "follower",
        "default",
        follow=True,
        tail_lines=1,
        _preload_content=False,
    )
    assert resp.headers["Content-Type"].startswith("text/plain")

    def read_lines(count: int) -> list[str]:
        buf = b""
        while buf.count(b"\n") < count:
            buf += resp.read1(4096) if hasattr(resp, "read1") else resp.read(64)
        return buf.decode().splitlines()[:count]

    got = await asyncio.wait_for(asyncio.to_thread(read_lines, 10), WAIT)
    numbers = [int(line.split()[1]) for line in got]
    assert numbers == list(range(numbers[0], numbers[0] + 10))  # in order, none lost
    assert cluster.cloud.logs is not None and cluster.cloud.logs.streams(NODE) == 1
    # Close first: releasing an unfinished follow would read it to its end.
    resp.close()
    resp.release_conn()

    async def closed() -> bool:
        assert cluster.cloud.logs is not None
        return not cluster.cloud.logs.streams(NODE) and not cluster.edges[0].podlogs.active

    await eventually(closed, "the cloud and the node ending the stream")


async def test_missing_pod_and_ambiguous_container(cluster: Cluster, core: k8s.CoreV1Api) -> None:
    with pytest.raises(ApiException) as err:
        await asyncio.to_thread(core.read_namespaced_pod_log, "nope", "default")
    assert err.value.status == 404
    await cluster.client.create(PODS, pod("twins", containers=2), "default")
    with pytest.raises(ApiException) as err:
        await asyncio.to_thread(core.read_namespaced_pod_log, "twins", "default")
    assert err.value.status == 400
    assert "a container name must be specified for pod twins, choose one of: [c0 c1]" in str(
        err.value.body
    )
    with pytest.raises(ApiException) as err:
        await asyncio.to_thread(core.read_namespaced_pod_log, "twins", "default", container="zz")
    assert err.value.status == 400


async def test_node_not_connected(cluster: Cluster, core: k8s.CoreV1Api) -> None:
    await running_pod(cluster, core, "lonely", lines=1)
    await cluster.stop_edge(0)

    async def refused() -> str | None:
        try:
            await asyncio.to_thread(core.read_namespaced_pod_log, "lonely", "default")
        except ApiException as exc:
            return f"{exc.status} {exc.body}"
        return None

    message = await eventually(refused, "logs refused once the node is gone")
    assert message.startswith("400 ") and "node edge-0 is not connected" in message


# --- real kubectl ---------------------------------------------------------------------------


def kubectl(cluster: ClusterThread, cache: Path, *args: str) -> list[str]:
    config = ["--kubeconfig", str(cluster.kubeconfig), "--cache-dir", str(cache)]
    return ["/usr/bin/kubectl", *config, *args]


@pytest.fixture
def cluster_thread(tmp_path: Path) -> Iterator[ClusterThread]:
    with ClusterThread(tmp_path / "c", edges=1) as c:
        c.wait_ready()
        yield c


@pytest.mark.kubectl
@pytest.mark.slow
def test_kubectl_logs_and_follow(cluster_thread: ClusterThread, tmp_path: Path) -> None:
    c = cluster_thread
    cache = tmp_path / "kube-cache"
    c.call(c.cluster.client.create(PODS, pod("printer"), "default"))
    deadline = time.monotonic() + WAIT
    while True:
        out = subprocess.run(
            kubectl(c, cache, "logs", "printer", "--tail=3"),
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        if out.returncode == 0 and len(out.stdout.splitlines()) == 3:
            break
        assert time.monotonic() < deadline, f"kubectl logs never worked: {out.stderr}"
        time.sleep(0.2)  # polling a pod that is starting: no event to await
    assert all(line.startswith("line ") for line in out.stdout.splitlines())

    proc = subprocess.Popen(
        kubectl(c, cache, "logs", "-f", "printer"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    reader = threading.Thread(target=pump, name="kubectl-logs-stdout")
    reader.start()
    try:
        seen = [lines.get(timeout=WAIT) for _ in range(5)]
        assert seen[:3] == ["line 0", "line 1", "line 2"]
        # follow keeps delivering what is printed after the request
        last = int(seen[-1].split()[1])
        later = lines.get(timeout=WAIT)
        while int(later.split()[1]) < last + 20:
            later = lines.get(timeout=WAIT)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        reader.join(10)
        assert proc.stderr is not None and proc.stdout is not None
        proc.stderr.close()
        proc.stdout.close()

    logs = c.cluster.cloud.logs
    assert logs is not None
    deadline = time.monotonic() + WAIT
    while logs.streams(NODE) or c.edges[0].podlogs.active:
        assert time.monotonic() < deadline, "the log stream outlived kubectl"
        time.sleep(0.1)  # the server notices the closed connection on its own

    out = subprocess.run(
        kubectl(c, cache, "logs", "nope"), capture_output=True, text=True, timeout=WAIT
    )
    assert out.returncode != 0 and 'pods "nope" not found' in out.stderr


# --- the cloud's stream buffer, without a cluster ------------------------------------------


def test_slow_reader_gets_a_drop_marker_not_a_stalled_hub() -> None:
    from orbiter.orchestration.cloud.podlogs import _CHUNK_OVERHEAD, _Stream

    cap = 2 * (10 + _CHUNK_OVERHEAD) + 5  # room for two chunks (each costs its object too)
    stream = _Stream(NODE)
    for _ in range(5):
        stream.push(b"x" * 10, cap)  # the next three are dropped
    stream.push(None, cap)

    async def drain() -> list[Any]:
        return [await stream.get() for _ in range(4)]

    items = asyncio.run(drain())
    assert items[:2] == [b"x" * 10, b"x" * 10]
    assert getattr(items[2], "count", None) == 30 and items[3] is None
