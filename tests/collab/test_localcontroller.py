"""The local controller (LC): its HTTP contract with workers, its state across EdgeCore
restarts, and the status path from a worker's report to the JointInferenceService's
``status.metrics`` (reference ``sedna.md`` §1.2, §1.6)."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from orbiter.collab.apis import JOINT_INFERENCE_SERVICES
from orbiter.collab.globalmanager import LocalControllerReports
from orbiter.collab.globalmanager.workers import LC_SERVER_ANNOTATION
from orbiter.collab.localcontroller import (
    LC_KEY,
    MAX_BODY,
    SOURCE,
    LocalController,
    joint_inference_summary,
    local_controller,
    report_key,
)
from orbiter.collab.reporting import Reporter
from orbiter.orchestration.client import Client
from orbiter.orchestration.edge.extensions import EdgeContext
from orbiter.orchestration.protocol import UPDATE, Message

from orbiter.testing import Cluster

from ..converging import until
from ..orchestration.test_autonomy import Proxy, proxied_cluster
from .test_globalmanager import JI, NS, WAIT, condition, service, start_models

KIND = "jointinferenceservice"


def body(worker: str = "w-1", **changes: Any) -> dict[str, Any]:
    """Sedna's worker message, as an edge worker of service ``JI`` posts it."""
    message: dict[str, Any] = {
        "name": worker,
        "namespace": NS,
        "ownerName": JI,
        "ownerKind": KIND,
        "kind": "inference",
        "status": "running",
        "ownerInfo": {
            "startTime": "2026-01-01T00:00:00Z",
            "updateTime": "2026-01-01T00:01:00Z",
            "inferenceNumber": 8,
            "hardExampleNumber": 2,
            "uploadCloudRatio": 0.25,
            "cloudCallNumber": 2,
            "fallbackNumber": 1,
        },
        "results": [],
    }
    message.update(changes)
    return message


class Reports:
    """What an LC hands EdgeCore's outbox: (key, source, content), in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, key: str, source: str, content: dict[str, Any]) -> None:
        self.sent.append((key, source, content))


async def post(port: int, worker: str, data: Any, *, raw: bytes | None = None) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{port}/sedna/workers/{worker}/info"
    async with aiohttp.ClientSession() as session:
        # A stream: aiohttp warns about large raw bodies.
        kwargs: dict[str, Any] = {"data": io.BytesIO(raw)} if raw is not None else {"json": data}
        async with session.post(url, **kwargs) as response:
            return response.status, await response.json()


# -- (a) the HTTP contract ---------------------------------------------------------------------


async def test_the_http_contract_and_the_summary_sent_upstream(tmp_path: Path) -> None:
    reports = Reports()
    context = EdgeContext(
        "edge-0", tmp_path, reports, asyncio.get_running_loop(), lambda _: None, tmp_path / "blobs"
    )
    lc = local_controller(port=0)(context)
    assert isinstance(lc, LocalController)
    await lc.start()
    try:
        port = lc.port
        assert port != 0
        # First it says where it listens (the GM gives that to this node's workers).
        lc_url = {"kind": "localcontroller", "url": f"http://127.0.0.1:{port}"}
        assert reports.sent == [(LC_KEY, SOURCE, lc_url)]
        reports.sent.clear()
        assert await post(port, "w-1", body()) == (200, {"Status": "Success", "Message": "OK"})
        key = report_key(KIND, NS, JI)
        assert key == f"sedna/{KIND}/{NS}/{JI}"
        [(sent_key, source, content)] = reports.sent
        assert (sent_key, source) == (key, SOURCE)
        assert content["ownerInfo"]["uploadCloudRatio"] == 0.25
        assert content["workers"] == 1

        bad: list[tuple[str, Any, str]] = [
            ("w-2", body("w-1"), "path"),  # name must equal the path's
            ("w-1", {k: v for k, v in body().items() if k != "ownerName"}, "ownerName"),
            ("w-1", {k: v for k, v in body().items() if k != "namespace"}, "namespace"),
            ("w-1", body(ownerKind=""), "ownerKind"),
            ("w-1", body(ownerInfo=[1]), "ownerInfo"),
            ("w-1", body(results={}), "results"),
            ("w-1", body(ownerInfo={"inferenceNumber": "many"}), "inferenceNumber"),
            ("w-1", body(ownerInfo={"uploadCloudRatio": -1}), "uploadCloudRatio"),
            ("w-1", [body()], "object"),
        ]
        for worker, data, says in bad:
            code, answer = await post(port, worker, data)
            assert code == 400, (data, answer)
            assert answer["Status"] == "Failure" and says in answer["Message"], answer
        code, answer = await post(port, "w-1", None, raw=b"{not json")
        assert (code, answer["Status"]) == (400, "Failure")
        code, answer = await post(port, "w-1", None, raw=b"x" * (MAX_BODY + 1))
        assert (code, answer["Status"]) == (413, "Failure")
        assert len(reports.sent) == 1  # nothing refused went upstream

        # Still answering; a second worker of the service: the node's summary covers both.
        second = body("w-2")
        second["ownerInfo"].update(
            inferenceNumber=2,
            hardExampleNumber=2,
            uploadCloudRatio=1.0,
            cloudCallNumber=2,
            fallbackNumber=0,
            startTime="2025-12-31T00:00:00Z",
            updateTime="2026-01-01T00:02:00Z",
        )
        assert (await post(port, "w-2", second))[0] == 200
        summary = reports.sent[-1][2]
        assert summary["workers"] == 2
        assert summary["ownerInfo"] == {
            "inferenceNumber": 10,
            "hardExampleNumber": 4,
            "cloudCallNumber": 4,
            "fallbackNumber": 1,
            "uploadCloudRatio": pytest.approx(0.4),  # (8 * 0.25 + 2 * 1.0) / 10
            "startTime": "2025-12-31T00:00:00Z",
            "updateTime": "2026-01-01T00:02:00Z",
        }
        # A newer report of a worker replaces its older one.
        again = body()
        again["ownerInfo"]["inferenceNumber"] = 18
        assert (await post(port, "w-1", again))[0] == 200
        assert reports.sent[-1][2]["ownerInfo"]["inferenceNumber"] == 20

        # Other owner kinds: stored and acknowledged, nothing sent (no manager yet).
        other = body("t-1", ownerKind="FederatedLearningJob", ownerName="fl")
        assert (await post(port, "t-1", other))[0] == 200
        assert len(reports.sent) == 3
        assert lc.store is not None
        assert lc.store.get("federatedlearningjob", NS, "fl", "t-1") == other
    finally:
        await lc.stop()


def test_the_summary_of_no_inference_is_zero() -> None:
    assert joint_inference_summary([{}, {"inferenceNumber": 0}])["uploadCloudRatio"] == 0.0


async def test_the_gm_handler_never_crashes_on_bad_content() -> None:
    class NoAPI:
        async def patch(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("a bad report reached the API")

    handler = LocalControllerReports(NoAPI())  # type: ignore[arg-type]
    for content in (None, [], {"ownerKind": KIND}, {**body(), "ownerInfo": "x"}):
        reply = await handler("edge-0", Message(SOURCE, "resource", UPDATE, "k", content))
        assert reply is not None and reply.operation == "error", content
    other = {"ownerKind": "federatedlearningjob", "namespace": NS, "ownerName": "f"}
    reply = await handler(
        "edge-0", Message(SOURCE, "resource", UPDATE, "k", other | {"ownerInfo": {}})
    )
    assert reply is not None and reply.operation == "response"


async def test_the_gm_records_a_loopback_lc_url_on_the_node_and_refuses_others() -> None:
    patches: list[tuple[Any, ...]] = []

    class API:
        async def patch(self, *args: Any, **kwargs: Any) -> Any:
            patches.append((*args, kwargs))
            return {}

    handler = LocalControllerReports(API())  # type: ignore[arg-type]

    async def announce(url: Any) -> Message | None:
        content = {"kind": "localcontroller", "url": url}
        return await handler("edge-0", Message(SOURCE, "resource", UPDATE, LC_KEY, content))

    for url in ("http://127.0.0.1:4242", "http://localhost:9100"):
        reply = await announce(url)
        assert reply is not None and reply.operation == "response", url
        res, node, patch, kwargs = patches.pop()
        assert (res.kind, node, kwargs) == ("Node", "edge-0", {"patch_type": "merge"})
        assert patch == {"metadata": {"annotations": {LC_SERVER_ANNOTATION: url}}}
    # A node must not point its workers (and their reports) at another host.
    for bad in (
        "http://10.0.0.1:9100",
        "http://127.0.0.1",
        "http://127.0.0.1:0",
        "http://127.0.0.1:70000",
        "https://127.0.0.1:9100",
        "http://127.0.0.1:9100/x",
        "http://localhost.evil:9100",
        None,
        9100,
    ):
        reply = await announce(bad)
        assert reply is not None and reply.operation == "error", bad
    assert patches == []


# -- (b) end to end, (c) state across restarts -------------------------------------------------


async def metric(client: Client, key: str) -> str | None:
    ji = await client.get(JOINT_INFERENCE_SERVICES, JI, NS)
    for entry in (ji.get("status") or {}).get("metrics") or []:
        if entry.get("key") == key:
            return str(entry.get("value"))
    return None


def reporter(port: int, info: dict[str, Any]) -> Reporter:
    return Reporter(
        f"http://127.0.0.1:{port}",
        worker_name="demo-edge-abc12",
        owner_name=JI,
        owner_kind=KIND,
        owner_info=lambda: info,
        namespace=NS,
    )


@pytest.mark.slow
async def test_worker_reports_become_the_service_metrics_and_survive_restarts(
    tmp_path: Path,
) -> None:
    async with Cluster(tmp_path, edges=1) as cluster:
        await cluster.wait_ready(WAIT)
        client = cluster.client
        await start_models(client)
        await client.create(JOINT_INFERENCE_SERVICES, service(), NS)
        await until(condition(client, "Running"), "the service Running", WAIT)

        info = body()["ownerInfo"]
        info["uploadCloudRatio"] = 0.375
        assert await asyncio.to_thread(reporter(cluster.lc_port("edge-0"), info).report, force=True)

        async def shows_ratio() -> bool:
            return await metric(client, "uploadCloudRatio") == "0.375"

        await until(shows_ratio, "the reported ratio in status.metrics", WAIT)
        ji = await client.get(JOINT_INFERENCE_SERVICES, JI, NS)
        status = ji["status"]
        assert {m["key"]: m["value"] for m in status["metrics"]} == {
            "inferenceNumber": "8",
            "hardExampleNumber": "2",
            "uploadCloudRatio": "0.375",
            "cloudCallNumber": "2",
            "fallbackNumber": "1",
        }
        # The GM's own fields are still there.
        assert status["conditions"][-1]["type"] == "Running"
        assert status["startTime"] and "active" in status

        # The GM takes reports only from a node running an edge worker of the service, and
        # acknowledges (drops) those about a service that is not there.
        handler = LocalControllerReports(client)
        content = {"ownerKind": KIND, "namespace": NS, "ownerName": JI, "ownerInfo": info}
        reply = await handler("edge-9", Message(SOURCE, "resource", UPDATE, "k", content))
        assert reply is not None and reply.operation == "error"
        assert str(reply.content).startswith("forbidden"), reply.content
        gone = content | {"ownerName": "gone"}
        reply = await handler("edge-0", Message(SOURCE, "resource", UPDATE, "k", gone))
        assert reply is not None and (reply.operation, reply.content) == ("response", "not found")
        assert await metric(client, "uploadCloudRatio") == "0.375"

        # (c) The LC's state survives an EdgeCore restart.
        await cluster.stop_edge(0)
        edge = await cluster.start_edge(0)
        [lc] = edge.extensions
        assert isinstance(lc, LocalController) and lc.store is not None
        stored = lc.store.get(KIND, NS, JI, "demo-edge-abc12")
        assert stored is not None and stored["ownerInfo"] == info

        # The next report after the restart still reaches the status.
        info["uploadCloudRatio"] = 0.5
        assert await asyncio.to_thread(reporter(cluster.lc_port("edge-0"), info).report, force=True)

        async def shows_new_ratio() -> bool:
            return await metric(client, "uploadCloudRatio") == "0.5"

        await until(shows_new_ratio, "the ratio reported after the restart", WAIT)

        # A deleted service: its report is acknowledged and dropped (the LC keeps answering).
        await client.delete(JOINT_INFERENCE_SERVICES, JI, NS)
        assert await asyncio.to_thread(reporter(cluster.lc_port("edge-0"), info).report, force=True)


# -- (d) reports made while the cloud is unreachable -------------------------------------------


@pytest.mark.slow
async def test_reports_made_while_cut_off_arrive_when_the_link_is_back(tmp_path: Path) -> None:
    proxy = Proxy()
    await proxy.start()
    try:
        async with proxied_cluster(
            tmp_path / "c", proxy, edges=1, extensions=[local_controller(port=0)]
        ) as cluster:
            await cluster.wait_ready(WAIT)
            client = cluster.client
            await start_models(client)
            await client.create(JOINT_INFERENCE_SERVICES, service(), NS)
            await until(condition(client, "Running"), "the service Running", WAIT)
            edge = cluster.edges[0]
            proxy.cut()

            async def cut_off() -> bool:
                return not edge.connected

            await until(cut_off, "the edge noticing the cut", WAIT)
            port = cluster.lc_port("edge-0")
            for ratio in (0.125, 0.25, 0.625):  # only the latest summary stays pending
                info = body()["ownerInfo"] | {"uploadCloudRatio": ratio}
                assert await asyncio.to_thread(reporter(port, info).report, force=True)
            assert await metric(client, "uploadCloudRatio") is None  # still cut off
            proxy.restore()

            async def caught_up() -> bool:
                return await metric(client, "uploadCloudRatio") == "0.625"

            await until(caught_up, "the report made while cut off", WAIT)
    finally:
        await proxy.stop()
