"""The same controllers over HTTPS with the official client, as against a real cluster."""

from __future__ import annotations

from orbiter.orchestration.apiserver import APIServer
from orbiter.orchestration.client import (
    CONFIGMAPS,
    DEPLOYMENTS,
    NAMESPACES,
    PODS,
    REPLICASETS,
    SERVICEACCOUNTS,
    Client,
    KubeClient,
)
from orbiter.orchestration.cloud import ControllerManager

from .test_deployments import deployment
from .test_garbagecollection import gone
from .waiting import eventually


async def test_controllers_over_kubeclient(server: APIServer, client: Client) -> None:
    async with (
        KubeClient.from_kubeconfig(server.kubeconfig_path) as remote,
        ControllerManager(remote, resync=None),
    ):
        await client.create(NAMESPACES, {"metadata": {"name": "remote"}})
        d = deployment("web", replicas=2)
        d["metadata"]["namespace"] = "remote"
        await client.create(DEPLOYMENTS, d, "remote")
        await client.create(CONFIGMAPS, {"metadata": {"name": "cm"}}, "remote")

        async def running() -> None:
            assert len((await client.list(PODS, "remote"))["items"]) == 2
            assert len((await client.list(REPLICASETS, "remote"))["items"]) == 1
            await client.get(SERVICEACCOUNTS, "default", "remote")
            status = (await client.get(DEPLOYMENTS, "web", "remote")).get("status") or {}
            assert status.get("replicas") == 2

        await eventually(running)
        await client.delete(DEPLOYMENTS, "web", "remote", propagation_policy="Foreground")

        async def emptied() -> None:
            await gone(client, DEPLOYMENTS, "web", "remote")
            assert (await client.list(PODS, "remote"))["items"] == []

        await eventually(emptied)
        await client.delete(NAMESPACES, "remote")
        await eventually(lambda: gone(client, NAMESPACES, "remote", None))
