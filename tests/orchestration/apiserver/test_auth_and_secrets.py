"""Bearer-token authentication, anonymous health endpoints, and Secrets encrypted at rest."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import yaml

from .conftest import KUBECTLS, Kubectl, RawClient, ServerThread

PROTECTED = [
    "/api",
    "/apis",
    "/api/v1",
    "/api/v1/namespaces",
    "/api/v1/namespaces/default/secrets",
    "/api/v1/namespaces/default/configmaps?watch=true",
    "/apis/apps/v1/namespaces/default/deployments",
    "/openapi/v2",
    "/openapi/v3",
]


def assert_unauthorized(resp_status: int, body: bytes) -> None:
    assert resp_status == 401, body
    status = json.loads(body)
    assert status["kind"] == "Status"
    assert status["code"] == 401
    assert status["reason"] == "Unauthorized"
    assert status["status"] == "Failure"


@pytest.mark.parametrize("path", PROTECTED)
@pytest.mark.parametrize(
    "auth",
    [None, "Bearer not-the-token", "Bearer ", "Basic YWRtaW46YWRtaW4=", "token-without-scheme"],
    ids=["none", "wrong-token", "empty-token", "basic-auth", "no-scheme"],
)
def test_requests_without_a_valid_token_are_401(
    path: str, auth: str | None, server: ServerThread, raw: RawClient
) -> None:
    headers = {} if auth is None else {"Authorization": auth}
    resp = raw.request("GET", path, token=None, headers=headers)
    assert_unauthorized(resp.status, resp.body)


def test_writes_without_a_valid_token_are_401_and_change_nothing(
    server: ServerThread, raw: RawClient
) -> None:
    before = server.call(server.store.current_revision())
    cm = {"metadata": {"name": "sneaky"}}
    resp = raw.request("POST", "/api/v1/namespaces/default/configmaps", cm, token="wrong")
    assert_unauthorized(resp.status, resp.body)
    resp = raw.request("DELETE", "/api/v1/namespaces/default", token=None)
    assert_unauthorized(resp.status, resp.body)
    assert server.call(server.store.current_revision()) == before
    # The right token works.
    assert raw.request("POST", "/api/v1/namespaces/default/configmaps", cm).status == 201


def test_another_servers_token_is_refused(server: ServerThread, tmp_path: Path) -> None:
    with ServerThread(tmp_path / "other") as other:
        assert other.server.token != server.server.token
        client = RawClient(server.url, server.server.ca_path, other.server.token)
        resp = client.get("/api/v1/namespaces")
        assert_unauthorized(resp.status, resp.body)


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/healthz", "/livez/", "/readyz/"])
def test_health_endpoints_need_no_token(path: str, server: ServerThread, raw: RawClient) -> None:
    resp = raw.get(path, token=None)
    assert resp.status == 200
    assert resp.body == b"ok"


def test_version_needs_no_token(server: ServerThread, raw: RawClient) -> None:
    resp = raw.get("/version", token=None)
    assert resp.status == 200
    info = resp.json()
    assert info["major"] == "1" and info["minor"] == "31"
    assert info["gitVersion"].startswith("v1.31.")


# --- Secrets at rest --------------------------------------------------------------------------

PLAIN = "correct-horse-battery-staple-1c9e"
OTHER_PLAIN = "string-data-value-77f2a0"
CONFIG_VALUE = "configmap-value-plainly-stored-5d1b"


def stored_bytes(server: ServerThread) -> bytes:
    """Every byte SQLite keeps for this server: the database and its WAL."""
    files = sorted(server.server.data_dir.glob("state.db*"))
    assert any(f.name == "state.db" for f in files)
    return b"".join(f.read_bytes() for f in files)


def test_secrets_are_encrypted_at_rest(server: ServerThread, raw: RawClient) -> None:
    encoded = base64.b64encode(PLAIN.encode()).decode()
    created = raw.json(
        "POST",
        "/api/v1/namespaces/default/secrets",
        {"metadata": {"name": "db-password", "annotations": {"note": PLAIN}},
         "type": "Opaque", "data": {"password": encoded}, "stringData": {"other": OTHER_PLAIN}},
        expect=201,
    )  # fmt: skip
    assert created["data"]["password"] == encoded
    assert created["data"]["other"] == base64.b64encode(OTHER_PLAIN.encode()).decode()
    assert "stringData" not in created
    # A ConfigMap next to it, stored in the clear: proves the bytes read below are the store.
    raw.json("POST", "/api/v1/namespaces/default/configmaps",
             {"metadata": {"name": "plain"}, "data": {"v": CONFIG_VALUE}}, expect=201)  # fmt: skip
    # Update the Secret as well: every stored version must be encrypted.
    patched = raw.request("PATCH", "/api/v1/namespaces/default/secrets/db-password",
                          {"metadata": {"labels": {"rotated": "no"}}},
                          content_type="application/merge-patch+json")  # fmt: skip
    assert patched.status == 200, patched.body

    blob = stored_bytes(server)
    assert CONFIG_VALUE.encode() in blob
    for secret in (PLAIN, OTHER_PLAIN):
        assert secret.encode() not in blob
        assert base64.b64encode(secret.encode()) not in blob
    assert b"k8s:enc:aesgcm:v1:" in blob

    got = raw.json("GET", "/api/v1/namespaces/default/secrets/db-password")
    assert base64.b64decode(got["data"]["password"]).decode() == PLAIN
    assert got["metadata"]["labels"] == {"rotated": "no"}
    key = server.server.data_dir / "encryption.key"
    assert key.stat().st_mode & 0o777 == 0o600


@pytest.mark.kubectl
def test_kubectl_reads_an_encrypted_secret(
    server: ServerThread, raw: RawClient, tmp_path: Path
) -> None:
    kubectl = Kubectl(KUBECTLS["dispatcher"], server.kubeconfig, tmp_path / "kube-cache")
    manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "api-key"},
        "stringData": {"key": PLAIN},
    }
    out = kubectl("apply", "-f", "-", stdin=yaml.safe_dump(manifest))
    assert "secret/api-key created" in out
    got = yaml.safe_load(kubectl("get", "secret", "api-key", "-o", "yaml"))
    assert got["type"] == "Opaque"
    assert base64.b64decode(got["data"]["key"]).decode() == PLAIN
    # kubectl's last-applied annotation holds the plain value: it is inside the encrypted
    # object, so it never reaches the disk either.
    blob = stored_bytes(server)
    assert PLAIN.encode() not in blob
    assert base64.b64encode(PLAIN.encode()) not in blob
