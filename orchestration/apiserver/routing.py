"""What a REST request names, independent of the transport: the resource type, namespace,
name and subresource of an API path; the write options of a query; the body's object.

Shared by the HTTP frontend and by the cloud's handler for writes a node forwards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import orjson
from multidict import MultiMapping

from ..apis import ResourceType
from . import errors
from .errors import APIError
from .handling import API, Options
from .patching import decode_patch, load_yaml
from .resources import ResourceRegistry
from .selection import build_matcher

NOT_FOUND = "the server could not find the requested resource"


Query = MultiMapping[str]  # aiohttp's ``request.query``, or a ``multidict.MultiDict``


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """What an object path names: ``namespace`` None for cluster scope or all namespaces,
    ``name`` and ``subresource`` empty when not given."""

    rt: ResourceType
    namespace: str | None
    name: str
    subresource: str


def split_api_path(path: str) -> tuple[str, str, list[str]] | None:
    """``(group, version, rest)`` of ``/api/{v}/…`` or ``/apis/{g}/{v}/…`` with a non-empty
    rest (a resource path); None for any other path."""
    segs = [s for s in path.split("/") if s]
    if len(segs) >= 3 and segs[0] == "api":
        return "", segs[1], segs[2:]
    if len(segs) >= 4 and segs[0] == "apis":
        return segs[1], segs[2], segs[3:]
    return None


def resolve_target(
    registry: ResourceRegistry, group: str, version: str, rest: Sequence[str]
) -> Target:
    """The target of ``[namespaces/{ns}/]{plural}[/{name}[/{sub}]]`` in ``group/version``;
    APIError 404 for what names no resource."""
    parts = list(rest)
    if not parts:
        raise APIError(404, NOT_FOUND)
    namespace: str | None = None
    if (
        parts[0] == "namespaces"
        and len(parts) >= 3
        and not (len(parts) == 3 and parts[2] in ("status", "finalize"))
    ):
        namespace, parts = parts[1], parts[2:]
    if len(parts) > 3:
        raise APIError(404, NOT_FOUND)
    plural = parts[0]
    name = parts[1] if len(parts) > 1 else ""
    sub = parts[2] if len(parts) > 2 else ""
    rt = registry.lookup(group, version, plural)
    if rt is None:
        raise APIError(404, NOT_FOUND)
    if rt.namespaced and namespace is None and name:
        raise APIError(404, NOT_FOUND)
    if not rt.namespaced and namespace is not None:
        raise APIError(404, NOT_FOUND)
    if (
        sub
        and sub not in rt.subresources
        and not (sub == "finalize" and rt.plural == "namespaces" and not rt.group)
    ):
        raise APIError(404, NOT_FOUND)
    return Target(rt, namespace, name, sub)


def request_verb(method: str, name: str, *, watch: bool = False) -> str:
    """The Kubernetes authorization verb of an HTTP method on an object path."""
    if method == "GET":
        return "get" if name else "watch" if watch else "list"
    if method == "POST":
        return "create"
    verb = {"PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, method.lower())
    return "deletecollection" if verb == "delete" and not name else verb


def created_name(body: Any) -> str:
    """``metadata.name`` of a body to create, or "" (what ``create`` is authorized for)."""
    meta = body.get("metadata") if isinstance(body, dict) else None
    name = meta.get("name", "") if isinstance(meta, dict) else ""
    return name if isinstance(name, str) else ""


def write_options(q: Query) -> Options:
    """The write verbs' query options (dryRun, fieldValidation, fieldManager, force);
    APIError 400 for unsupported values."""
    dry_run = q.getall("dryRun", [])
    for value in dry_run:
        if value != "All":
            raise errors.bad_request(
                f'dryRun: Unsupported value: "{value}": supported values: "All"'
            )
    opts = Options(
        dry_run=bool(dry_run),
        field_validation=q.get("fieldValidation", ""),
        field_manager=q.get("fieldManager", ""),
        force=q.get("force") in ("true", "1"),
    )
    if opts.field_validation not in ("Ignore", "Warn", "Strict"):
        raise errors.bad_request(
            f'fieldValidation: Unsupported value: "{opts.field_validation}": supported '
            'values: "Ignore", "Warn", "Strict"'
        )
    return opts


def decode_json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise errors.bad_request(f"the request body is not valid JSON: {exc}") from None


def decode_body(raw: bytes, content_type: str) -> Any:
    """The object a create/update body holds, JSON or YAML by its media type (parameters
    such as ``; charset=`` ignored); APIError 400 for a bad body, 415 for another type."""
    ctype = content_type.split(";", 1)[0].strip().lower()
    if ctype in ("application/yaml", "application/x-yaml"):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise errors.bad_request("the request body is not UTF-8") from None
        return load_yaml(text, "the request body")
    if ctype and ctype not in ("application/json", "application/octet-stream", "text/plain"):
        raise APIError(
            415,
            f"the body of the request was in an unknown format ({ctype}); accepted media types "
            "include: application/json, application/yaml",
        )
    return decode_json(raw)


async def perform_write(
    api: API, target: Target, method: str, q: Query, raw: bytes, content_type: str
) -> tuple[int, dict[str, Any]]:
    """POST/PUT/PATCH/DELETE ``target`` with body ``raw`` (of ``content_type``, the whole
    header): ``(HTTP status, resulting object)``. Raises APIError or PatchError; who may do
    it is for the caller to check first."""
    rt, namespace, name, sub = target.rt, target.namespace, target.name, target.subresource
    ns = namespace or ""
    opts = write_options(q)
    if method == "POST":
        body = decode_body(raw, content_type)
        if sub == "binding" and name:
            return 201, await api.bind(rt, ns, name, body)
        if name:
            raise errors.method_not_allowed(rt, "POST on a named object")
        return 201, await api.create(rt, ns, body, opts)
    if method == "PUT" and name:
        body = decode_body(raw, content_type)
        if sub == "scale":
            return 200, await api.update_scale(rt, ns, name, body, opts)
        return 200, await api.update(rt, ns, name, body, opts, subresource=sub)
    if method == "PATCH" and name:
        kind, patch = decode_patch(content_type, raw)
        return 200, await api.patch_with(rt, ns, name, kind, patch, opts, subresource=sub)
    if method == "DELETE":
        if sub:
            raise errors.method_not_allowed(rt, f"DELETE on {rt.plural}/{sub}")
        if not name and rt.namespaced and namespace is None:
            raise errors.method_not_allowed(rt, "DELETE of a collection across namespaces")
        options = decode_json(raw) if raw.strip() else {}
        if not isinstance(options, dict):
            raise errors.bad_request("the DeleteOptions body must be a JSON object")
        for key in ("propagationPolicy", "gracePeriodSeconds"):
            if key in q:
                options.setdefault(key, q[key])
        dry = opts.dry_run or bool(options.get("dryRun"))
        if name:
            return 200, await api.delete(rt, ns, name, options, dry_run=dry)
        matches = build_matcher(rt, q.get("labelSelector", ""), q.get("fieldSelector", ""))
        return 200, await api.delete_collection(
            rt, namespace, matches=matches, options=options, dry_run=dry
        )
    raise errors.method_not_allowed(rt, method)
