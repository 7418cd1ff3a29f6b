"""Node client certificates over real HTTPS: a node reads and writes only what is its own."""

from __future__ import annotations

import http.client
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from orbiter.orchestration.apiserver.certificates import CertificateAuthority

from .conftest import RawClient, ServerThread

MERGE = "application/merge-patch+json"
NS = "/api/v1/namespaces/default"


def _cert_client(
    srv: ServerThread, ca: CertificateAuthority, cn: str, orgs: tuple[str, ...], tmp: Path
) -> RawClient:
    """A client that presents a certificate ``ca`` signed (and no token)."""
    cert, key = ca.issue(cn, organizations=orgs, client=True)
    assert key is not None
    stem = tmp / cn.replace(":", "_")
    crt, key_path = stem.with_suffix(".crt"), stem.with_suffix(".key")
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    client = RawClient(srv.url, srv.server.ca_path, None)
    client.ssl.load_cert_chain(crt, key_path)
    return client


def _node(srv: ServerThread, name: str, tmp: Path) -> RawClient:
    ca = CertificateAuthority.load_or_create(srv.server.data_dir)
    return _cert_client(srv, ca, f"system:node:{name}", ("system:nodes",), tmp)


def _pod(name: str, node: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}], **spec},
    }


@pytest.fixture
def cluster(server: ServerThread, raw: RawClient) -> ServerThread:
    """Nodes a and b; pod p-a on a using Secret s1 and ConfigMap c1; pod p-b on b."""
    for node in ("a", "b"):
        raw.json("POST", "/api/v1/nodes", {"metadata": {"name": node}}, expect=201)
    raw.json("POST", f"{NS}/secrets", {"metadata": {"name": "s1"}, "data": {}}, expect=201)
    raw.json("POST", f"{NS}/secrets", {"metadata": {"name": "s2"}, "data": {}}, expect=201)
    raw.json("POST", f"{NS}/configmaps", {"metadata": {"name": "c1"}, "data": {}}, expect=201)
    env = [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s1", "key": "k"}}}]
    pod_a = _pod("p-a", "a", volumes=[{"name": "v", "configMap": {"name": "c1"}}])
    pod_a["spec"]["containers"][0]["env"] = env
    raw.json("POST", f"{NS}/pods", pod_a, expect=201)
    raw.json("POST", f"{NS}/pods", _pod("p-b", "b"), expect=201)
    return server


def test_node_reads_only_what_its_pods_use(cluster: ServerThread, tmp_path: Path) -> None:
    a, b = _node(cluster, "a", tmp_path), _node(cluster, "b", tmp_path)
    assert a.get(f"{NS}/secrets/s1").json()["metadata"]["name"] == "s1"
    assert a.get(f"{NS}/configmaps/c1").status == 200
    assert a.get(f"{NS}/secrets/s2").status == 403  # no pod of a uses it
    resp = b.get(f"{NS}/secrets/s1")
    assert resp.status == 403
    body = resp.json()
    assert body["reason"] == "Forbidden"
    assert body["details"] == {"name": "s1", "kind": "secrets"}
    assert body["message"] == (
        'secrets "s1" is forbidden: User "system:node:b" cannot get resource "secrets" in API '
        'group "" in the namespace "default": no relationship found between node \'b\' and '
        "this object"
    )
    assert b.get(f"{NS}/configmaps/c1").status == 403
    # No list or watch of secrets, not even the referenced ones.
    assert a.get(f"{NS}/secrets").status == 403
    assert a.get("/api/v1/secrets").status == 403
    assert a.get(f"{NS}/secrets?watch=true").status == 403
    # Public state is readable.
    assert a.get(f"{NS}/pods?fieldSelector=spec.nodeName%3Da").status == 200
    assert a.get("/api/v1/nodes/b").status == 200


def test_node_writes_only_its_own_status(cluster: ServerThread, tmp_path: Path) -> None:
    a, b = _node(cluster, "a", tmp_path), _node(cluster, "b", tmp_path)
    node_patch = {"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}}
    pod_patch = {"status": {"phase": "Running"}}
    for client, path, patch in (
        (b, "/api/v1/nodes/a/status", node_patch),
        (b, "/api/v1/nodes/a", {"metadata": {"labels": {"x": "y"}}}),
        (b, f"{NS}/pods/p-a/status", pod_patch),
        (a, f"{NS}/pods/p-a", {"metadata": {"labels": {"x": "y"}}}),  # spec is not a node's
    ):
        resp = client.request("PATCH", path, patch, content_type=MERGE)
        assert resp.status == 403, (path, resp.body)
    assert (
        "system:node:b"
        in b.request("PATCH", f"{NS}/pods/p-a/status", pod_patch, content_type=MERGE).json()[
            "message"
        ]
    )

    resp = a.request("PATCH", "/api/v1/nodes/a/status", node_patch, content_type=MERGE)
    assert resp.status == 200, resp.body
    assert resp.json()["status"]["addresses"][0]["address"] == "10.0.0.1"
    resp = a.request("PATCH", f"{NS}/pods/p-a/status", pod_patch, content_type=MERGE)
    assert resp.status == 200, resp.body
    assert resp.json()["status"]["phase"] == "Running"
    # A node does not delete another node's pod, nor create what is not its own.
    assert b.request("DELETE", f"{NS}/pods/p-a").status == 403
    assert b.request("POST", "/api/v1/nodes", {"metadata": {"name": "c"}}).status == 403
    assert b.request("POST", f"{NS}/secrets", {"metadata": {"name": "s3"}}).status == 403


def test_node_registers_itself_and_renews_its_lease(server: ServerThread, tmp_path: Path) -> None:
    c = _node(server, "c", tmp_path)
    assert c.request("POST", "/api/v1/nodes", {"metadata": {"name": "c"}}).status == 201
    leases = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
    lease = {"metadata": {"name": "c"}, "spec": {"holderIdentity": "c"}}
    assert c.request("POST", leases, lease).status == 201
    renew = {"spec": {"renewTime": "2024-01-01T00:00:00.000000Z"}}
    assert c.request("PATCH", f"{leases}/c", renew, content_type=MERGE).status == 200
    other = {"metadata": {"name": "d"}, "spec": {"holderIdentity": "d"}}
    assert c.request("POST", leases, other).status == 403


def test_admin_token_is_unrestricted(cluster: ServerThread, raw: RawClient) -> None:
    assert raw.get(f"{NS}/secrets").status == 200
    assert raw.get(f"{NS}/secrets/s2").status == 200
    patch = {"status": {"phase": "Succeeded"}}
    resp = raw.request("PATCH", f"{NS}/pods/p-a/status", patch, content_type=MERGE)
    assert resp.status == 200, resp.body
    assert raw.get(f"{NS}/secrets", token=None).status == 401  # no token, no certificate
    assert raw.get(f"{NS}/secrets", token="wrong").status == 401


def test_other_certificates_are_refused(cluster: ServerThread, tmp_path: Path) -> None:
    ours = CertificateAuthority.load_or_create(cluster.server.data_dir)
    # Signed by our CA but not a node: there are no other certificate users.
    for cn, orgs in (("alice", ("system:nodes",)), ("system:node:a", ("devs",))):
        client = _cert_client(cluster, ours, cn, orgs, tmp_path)
        assert client.get(f"{NS}/pods").status == 401
    # A node certificate with a wrong token is refused too.
    assert _node(cluster, "a", tmp_path).get(f"{NS}/pods", token="wrong").status == 401
    # Signed by another CA: TLS refuses it, or (if the handshake got through) no user.
    (tmp_path / "other").mkdir()
    foreign = _cert_client(
        cluster,
        CertificateAuthority.load_or_create(tmp_path / "other"),
        "system:node:a",
        ("system:nodes",),
        tmp_path / "other",
    )
    try:
        status = foreign.get(f"{NS}/secrets/s1").status
    except (ssl.SSLError, ConnectionError, http.client.RemoteDisconnected):
        return
    assert status == 401
