"""OpenAPI documents generated from the served ResourceTypes.

kubectl cannot apply without them. 1.27 downloads ``/openapi/v2`` as a gnostic protobuf (a
minimal document is enough: it then finds no schema for a kind and validates nothing
client-side). 1.28 and later read the ``/openapi/v3`` index and per group-version documents:
when a kind's PATCH operation lists the ``fieldValidation`` query parameter, kubectl leaves
validation to the server and sends ``fieldValidation=Strict``.

Built-in kinds are published as permissive schemas (so kubectl never refuses a manifest that the
server would accept); CRDs publish their own openAPIV3Schema, named like kube-apiserver does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import orjson

from ..apis import ResourceType
from .openapi_paths import VERSION, build_document, schema_name

__all__ = [
    "V2_CONTENT_TYPE",
    "OpenAPIDocs",
    "openapi_v2_protobuf",
    "openapi_v3_document",
    "openapi_v3_index",
    "schema_name",
]

# Go's mime parser refuses the "@" of the type kubectl asks for, so answer with a dot.
V2_CONTENT_TYPE = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): strings and embedded messages alike."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def openapi_v2_protobuf(resources: Iterable[ResourceType] = ()) -> bytes:
    """A gnostic ``openapi_v2.Document``: swagger, info and the required (empty) paths.

    ``resources`` is accepted for symmetry and ignored: with no definitions kubectl 1.27 skips
    client-side validation, and kubectl 1.28+ uses OpenAPI v3 instead.
    """
    # Field numbers from gnostic's OpenAPIv2.proto: Info{1 title, 2 version, ..., 6 license},
    # Document{1 swagger, 2 info, ..., 8 paths}; Paths must be present even when empty.
    info = _field(1, b"Kubernetes") + _field(2, VERSION.encode())
    return _field(1, b"2.0") + _field(2, info) + _field(8, b"")


def _plan(resources: Iterable[ResourceType]) -> dict[str, list[ResourceType]]:
    """Document key (``api/v1``, ``apis/apps``...) -> resources, in a stable order."""
    plan: dict[str, list[ResourceType]] = {"api": [], "apis": []}
    for rt in sorted(resources, key=lambda r: (r.group, r.version, r.plural)):
        if rt.group:
            plan.setdefault(f"apis/{rt.group}", [])
        plan.setdefault(rt.gv_path, []).append(rt)
    return plan


def _encode(doc: dict[str, Any]) -> tuple[bytes, str]:
    body = orjson.dumps(doc)
    # kube-apiserver's hash: hex SHA-512 of the document, upper case.
    return body, hashlib.sha512(body).hexdigest().upper()


def openapi_v3_document(gv_path: str, resources: Iterable[ResourceType]) -> dict[str, Any]:
    """The OpenAPI 3.0 document of ``api/v1``, ``apis/apps/v1``, ``apis/apps``, ``api``, ``apis``.

    Raises KeyError for a path the resources do not serve.
    """
    key = gv_path.strip("/")
    plan = _plan(resources)
    return build_document(key, plan[key])


def openapi_v3_index(resources: Iterable[ResourceType]) -> dict[str, Any]:
    """``/openapi/v3``: every document's URL, carrying its content hash for client caches."""
    plan = _plan(resources)
    paths = {}
    for key, rts in plan.items():
        _, digest = _encode(build_document(key, rts))
        paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest}"}
    return {"paths": paths}


def _fingerprint(resources: Iterable[ResourceType]) -> bytes:
    """Everything the documents depend on (printer columns, short names... do not count)."""
    rows = [
        [
            *(rt.group, rt.version, rt.plural, rt.kind, rt.namespaced, rt.custom),
            *(list(rt.verbs), sorted(rt.subresources), rt.schema if rt.custom else None),
        ]
        for rt in resources
    ]
    rows.sort(key=lambda row: row[:3])
    return orjson.dumps(rows, option=orjson.OPT_SORT_KEYS)


class OpenAPIDocs:
    """The documents as bytes, rebuilt only when the served resources change.

    ``source`` is any iterable of ResourceTypes, read again on every call (CRDs come and go). A
    ``generation`` attribute, as ResourceRegistry has, lets unchanged calls skip even reading it;
    a change that leaves the documents equal keeps their hashes, so clients' caches stay valid.
    """

    def __init__(self, source: Iterable[ResourceType]) -> None:
        self._source = source
        self._generation: Any = object()
        self._seen: tuple[Any, ...] | None = None
        self._fingerprint = b""
        self._docs: dict[str, tuple[bytes, str]] = {}
        self._index = b""
        self._v2 = openapi_v2_protobuf()

    def update(self, source: Iterable[ResourceType]) -> None:
        """Serve another set of resources (checked lazily, like any change)."""
        self._source, self._generation = source, object()

    def _refresh(self) -> None:
        generation = getattr(self._source, "generation", None)
        if generation is not None and generation == self._generation and self._seen is not None:
            return
        resources = list(self._source)
        seen = tuple((rt, id(rt.schema)) for rt in resources)
        self._generation = generation
        if seen == self._seen:
            return
        self._seen = seen
        fingerprint = _fingerprint(resources)
        if fingerprint == self._fingerprint:
            return
        self._fingerprint = fingerprint
        self._docs = {
            key: _encode(build_document(key, rts)) for key, rts in _plan(resources).items()
        }
        index = {
            key: {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest}"}
            for key, (_, digest) in self._docs.items()
        }
        self._index = orjson.dumps({"paths": index})

    def v2_protobuf(self) -> bytes:
        return self._v2

    def v3_index(self) -> bytes:
        self._refresh()
        return self._index

    def v3_document(self, gv_path: str) -> bytes | None:
        """The serialised document, or None when nothing is served there (404)."""
        self._refresh()
        found = self._docs.get(gv_path.strip("/"))
        return found[0] if found else None

    def v3_hash(self, gv_path: str) -> str | None:
        """The document's hash (for an ETag), or None when nothing is served there."""
        self._refresh()
        found = self._docs.get(gv_path.strip("/"))
        return found[1] if found else None
