"""The contract suite over both transports, plus what is particular to each."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from orbiter.orchestration.apiserver.serving import APIServer
from orbiter.orchestration.client import (
    CONFIGMAPS,
    CRDS,
    PODS,
    ClientError,
    KubeClient,
    LocalClient,
    Resource,
)
from orbiter.orchestration.client._kube import resource_path

from .contract import ClientContract
from .informer_contract import InformerContract


class TestLocalClient(ClientContract, InformerContract):
    @pytest.fixture
    def client(self, server: APIServer) -> Any:
        return LocalClient(server.api, bookmark_interval=0.1)


class TestKubeClient(ClientContract, InformerContract):
    @pytest.fixture
    async def client(self, server: APIServer) -> AsyncIterator[KubeClient]:
        client = KubeClient.from_kubeconfig(server.kubeconfig_path)
        try:
            yield client
        finally:
            await client.close()


# --- KubeClient specifics ------------------------------------------------------------------


def test_importing_the_client_does_not_import_kubernetes() -> None:
    code = "import sys, orbiter.orchestration.client; print('kubernetes' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_resource_paths() -> None:
    assert resource_path(PODS) == "/api/v1/pods"
    assert resource_path(PODS, "ns", "p", "status") == "/api/v1/namespaces/ns/pods/p/status"
    widgets = Resource("example.com", "v1", "widgets", "Widget")
    assert resource_path(widgets, "a b", "w/1") == (
        "/apis/example.com/v1/namespaces/a%20b/widgets/w%2F1"
    )
    assert resource_path(CRDS, "ignored", "x") == (
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/x"
    )
    # Quoting leaves "." and "..": a URL library would fold "namespaces/../pods" into
    # "/api/v1/pods", every namespace's.
    for bad in (".", ".."):
        with pytest.raises(ValueError, match="may not be a namespace or object name"):
            resource_path(PODS, bad)
        with pytest.raises(ValueError, match="may not be a namespace or object name"):
            resource_path(PODS, "ns", bad)


def test_from_kubeconfig_refuses_a_missing_file_or_context(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        KubeClient.from_kubeconfig(tmp_path / "missing")
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "ctx",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(Exception, match="nope"):
        KubeClient.from_kubeconfig(path, context="nope")


async def test_kubeconfig_context_and_bad_credentials(server: APIServer, tmp_path: Path) -> None:
    config = yaml.safe_load(server.kubeconfig_path.read_text())
    config["users"].append({"name": "intruder", "user": {"token": "wrong"}})
    config["contexts"].append(
        {"name": "intruder", "context": {"cluster": "orbiter", "user": "intruder"}}
    )
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    good = KubeClient.from_kubeconfig(path, context="orbiter")
    bad = KubeClient.from_kubeconfig(path, context="intruder")
    try:
        assert (await good.list(CONFIGMAPS, "default"))["items"] == []
        with pytest.raises(ClientError) as refused:
            await bad.list(CONFIGMAPS, "default")
        assert refused.value.status == 401
    finally:
        await good.close()
        await bad.close()


async def test_closed_client_refuses_requests(server: APIServer) -> None:
    client = KubeClient.from_kubeconfig(server.kubeconfig_path)
    await client.close()
    with pytest.raises(RuntimeError, match="closed"):
        await client.get(CONFIGMAPS, "a", "default")
