"""The contents of the OpenAPI v3 documents: paths, operations and schemas per resource.

Operation ids, tags, schema names and parameters follow kube-apiserver, because clients key on
them: kubectl reads ``x-kubernetes-group-version-kind`` and the PATCH operation's parameters.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from ..apis import ResourceType
from .discovery import KUBE_MAJOR, KUBE_MINOR

__all__ = ["build_document", "schema_name"]

VERSION = f"v{KUBE_MAJOR}.{KUBE_MINOR}.0"
_META = "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1."
_JSON = "application/json"


def _ident(s: str, capitalize: bool) -> str:
    """Like kube-openapi's ToValidOperationID: drop other characters, capitalise after them."""
    out, up = [], capitalize
    for i, ch in enumerate(s):
        if ch.isalpha() or ch == "_" or (i and ch.isdigit()):
            out.append(ch.upper() if up else ch)
            up = False
        else:
            up = True
    return "".join(out)


def _short_group(group: str) -> str:
    return group.removesuffix(".k8s.io") if group else "core"


def schema_name(rt: ResourceType) -> str:
    """The components.schemas key kube-apiserver uses (``io.example.v1.Widget`` for CRDs)."""
    if rt.custom or ("." in rt.group and not rt.group.endswith(".k8s.io")):
        base = ".".join(reversed(rt.group.split(".")))
    elif rt.group == "apiextensions.k8s.io":
        base = "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions"
    else:
        base = f"io.k8s.api.{_short_group(rt.group)}"
    return f"{base}.{rt.version}.{rt.kind}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _param(name: str, description: str, kind: str = "string", where: str = "query") -> Any:
    p: dict[str, Any] = {"name": name, "in": where, "description": description}
    if where == "path":
        p["required"] = True
    p["schema"] = {"type": kind, "uniqueItems": True}
    return p


_DRY_RUN = _param("dryRun", "When present, modifications are not persisted. Valid value: All")
_FIELD_MANAGER = _param("fieldManager", "A name associated with the actor making the changes.")
_FIELD_VALIDATION = _param(
    "fieldValidation",
    "How the server handles unknown or duplicate fields in the object: Ignore, Warn or Strict.",
)
_FORCE = _param("force", "Force apply requests to take over conflicting fields.", "boolean")
_PRETTY = _param("pretty", "If 'true', the output is pretty printed.")
_GRACE = _param("gracePeriodSeconds", "Seconds before the object is deleted.", "integer")
_ORPHAN = _param("orphanDependents", "Deprecated: use propagationPolicy.", "boolean")
_PROPAGATION = _param("propagationPolicy", "Orphan, Background or Foreground.")
_SELECTION = [
    _param("continue", "The continue token of a previous list call."),
    _param("fieldSelector", "Restrict the returned objects by their fields."),
    _param("labelSelector", "Restrict the returned objects by their labels."),
    _param("limit", "Maximum number of objects to return.", "integer"),
    _param("resourceVersion", "Which version of the resource to serve."),
    _param("resourceVersionMatch", "How resourceVersion applies to list calls."),
    _param("sendInitialEvents", "Start a watch with synthetic ADDED events.", "boolean"),
    _param("timeoutSeconds", "Timeout of the list or watch call.", "integer"),
]
_LIST = [
    _param("allowWatchBookmarks", "Request BOOKMARK watch events.", "boolean"),
    *_SELECTION,
    _param("watch", "Watch for changes instead of listing.", "boolean"),
]
_WRITE = [_DRY_RUN, _FIELD_MANAGER, _FIELD_VALIDATION]
_DELETE = [_DRY_RUN, _GRACE, _ORPHAN, _PROPAGATION]
# Strategic merge is not advertised even for built-ins: kubectl 1.30+ would then build its
# patches from these permissive schemas (no merge keys), while without it kubectl falls back to
# its compiled-in types, exactly as it must. The server still accepts strategic merge for them.
_PATCH_TYPES = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/apply-patch+yaml",
)
_STATUS_CODES = {"200": "OK", "201": "Created", "202": "Accepted"}
_OBJECT_META = (
    "Standard object's metadata. More info:"
    " https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"
)
_TYPE_META = {
    "apiVersion": {"type": "string", "description": "The versioned schema of this object."},
    "kind": {"type": "string", "description": "The REST resource this object represents."},
}


def _responses(ref: dict[str, str], *codes: str, watch: bool = False) -> dict[str, Any]:
    content = {_JSON: {"schema": ref}}
    if watch:
        content[f"{_JSON};stream=watch"] = {"schema": {"$ref": _META + "WatchEvent"}}
    out: dict[str, Any] = {c: {"description": _STATUS_CODES[c], "content": content} for c in codes}
    out["401"] = {"description": "Unauthorized"}
    return out


def _body(ref: dict[str, str], types: Iterable[str] = (_JSON,)) -> dict[str, Any]:
    return {"content": {t: {"schema": ref} for t in types}, "required": True}


def _permissive(description: str, gvk: list[dict[str, str]] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "description": description,
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    if gvk:
        schema["x-kubernetes-group-version-kind"] = gvk
    return schema


_META_SCHEMAS = {
    name: _permissive(text)
    for name, text in (
        ("ObjectMeta", "Metadata that all persisted resources must have."),
        ("ListMeta", "Metadata of synthetic resources such as lists."),
        ("DeleteOptions", "Options of a delete call."),
        ("Patch", "A patch, in the format its Content-Type names."),
        ("WatchEvent", "One event of a watch stream."),
        ("APIResourceList", "The resources served in a group-version."),
        ("APIVersions", "The versions of the core group."),
        ("APIGroupList", "The API groups served."),
        ("APIGroup", "One API group and its versions."),
    )
}
_META_SCHEMAS["Status"] = _permissive(
    "The result of a call that returns no object.",
    [{"group": "", "kind": "Status", "version": "v1"}],
)
_META_NAME = "io.k8s.apimachinery.pkg.apis.meta.v1."
_GV_META = (
    "APIResourceList",
    "DeleteOptions",
    "ListMeta",
    "ObjectMeta",
    "Patch",
    "Status",
    "WatchEvent",
)
_STATUS = {"$ref": _META + "Status"}
_PATCH_BODY = _body({"$ref": _META + "Patch"}, _PATCH_TYPES)
_DELETE_BODY = {"content": {_JSON: {"schema": {"$ref": _META + "DeleteOptions"}}}}
_SUB_KINDS = {  # subresources whose body is another kind
    "scale": (
        "io.k8s.api.autoscaling.v1.Scale",
        {"group": "autoscaling", "version": "v1", "kind": "Scale"},
    ),
    "binding": ("io.k8s.api.core.v1.Binding", {"group": "", "version": "v1", "kind": "Binding"}),
}


def _kind_schema(rt: ResourceType, gvk: dict[str, str]) -> dict[str, Any]:
    if rt.custom and rt.schema:
        schema = copy.deepcopy(rt.schema)
        schema["properties"] = {**schema.get("properties", {}), **_TYPE_META}
    else:
        # Built-ins: the server validates them; publishing no fields keeps kubectl permissive.
        schema = _permissive(f"{rt.kind}: its fields are not published; the server validates.")
        schema["properties"] = dict(_TYPE_META)
    schema["properties"]["metadata"] = {
        "description": _OBJECT_META,
        "allOf": [{"$ref": _META + "ObjectMeta"}],
    }
    schema["x-kubernetes-group-version-kind"] = [gvk]
    return schema


def _list_schema(rt: ResourceType, kind_ref: dict[str, str]) -> dict[str, Any]:
    return {
        "description": f"{rt.list_kind} is a list of {rt.kind}",
        "type": "object",
        "required": ["items"],
        "properties": {
            **_TYPE_META,
            "items": {"type": "array", "items": kind_ref},
            "metadata": {"allOf": [{"$ref": _META + "ListMeta"}], "default": {}},
        },
        "x-kubernetes-group-version-kind": [
            {"group": rt.group, "kind": rt.list_kind, "version": rt.version}
        ],
    }


class _Resource:
    """The paths and schemas of one resource, with the operation names kube-apiserver uses."""

    def __init__(self, rt: ResourceType, paths: dict[str, Any], schemas: dict[str, Any]) -> None:
        self.rt, self.paths, self.schemas = rt, paths, schemas
        self.gvk = {"group": rt.group, "kind": rt.kind, "version": rt.version}
        self.tag = f"{_ident(_short_group(rt.group), False)}_{_ident(rt.version, False)}"
        self.gv = _ident(_short_group(rt.group), True) + _ident(rt.version, True)
        self.scoped = ("Namespaced" if rt.namespaced else "") + rt.kind
        ns = "/namespaces/{namespace}" if rt.namespaced else ""
        self.collection = f"/{rt.gv_path}{ns}/{rt.plural}"
        namespace = _param("namespace", "object name and auth scope", where="path")
        self.scope = [namespace] if rt.namespaced else []
        name = _param("name", f"name of the {rt.kind}", where="path")
        self.item_params = [name, *self.scope, _PRETTY]
        self.verbs = set(rt.verbs)

    def op(
        self,
        action: str,
        verb: str,
        text: str,
        responses: dict[str, Any],
        params: list[Any] | None = None,
        body: dict[str, Any] | None = None,
        suffix: str = "",
        gvk: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """One operation; its id is verb + group-version + [Namespaced]Kind + suffix."""
        op_id = f"{verb}{self.gv}{self.scoped}{suffix}"
        op: dict[str, Any] = {"tags": [self.tag], "description": text, "operationId": op_id}
        if params:
            op["parameters"] = params
        if body is not None:
            op["requestBody"] = body
        op["responses"] = responses
        op["x-kubernetes-action"] = action
        op["x-kubernetes-group-version-kind"] = gvk or self.gvk
        return op

    def build(self) -> None:
        rt, name, verbs = self.rt, schema_name(self.rt), self.verbs
        self.schemas[name] = _kind_schema(rt, self.gvk)
        self.schemas[name + "List"] = _list_schema(rt, _ref(name))
        kind, listed = _ref(name), _responses(_ref(name + "List"), "200", watch=True)
        listing = f"list or watch objects of kind {rt.kind}"
        coll: dict[str, Any] = {}
        if "list" in verbs:
            coll["get"] = self.op("list", "list", listing, listed, _LIST)
        if "create" in verbs:
            created = _responses(kind, "200", "201", "202")
            coll["post"] = self.op(
                "post", "create", f"create a {rt.kind}", created, _WRITE, _body(kind)
            )
        if "deletecollection" in verbs:
            text, params = f"delete collection of {rt.kind}", [*_DELETE, *_SELECTION]
            ok = _responses(_STATUS, "200")
            coll["delete"] = self.op("deletecollection", "delete", text, ok, params, _DELETE_BODY)
            coll["delete"]["operationId"] = f"delete{self.gv}Collection{self.scoped}"
        if coll:
            self.paths[self.collection] = {**coll, "parameters": [*self.scope, _PRETTY]}
        if rt.namespaced and "list" in verbs:
            every = self.op("list", "list", listing, listed, _LIST)
            every["operationId"] = f"list{self.gv}{rt.kind}ForAllNamespaces"
            self.paths[f"/{rt.gv_path}/{rt.plural}"] = {"get": every, "parameters": [_PRETTY]}
        self.item("", "the specified", kind)
        if "status" in rt.subresources:
            self.item("Status", "status of the specified", kind)
        if "scale" in rt.subresources:
            scale_ref = self.sub_schema("scale")
            self.item("Scale", "scale of the specified", scale_ref, _SUB_KINDS["scale"][1])
        if "binding" in rt.subresources:
            ref, text = self.sub_schema("binding"), f"create binding of a {rt.kind}"
            ok, gvk = _responses(ref, "200", "201", "202"), _SUB_KINDS["binding"][1]
            post = self.op("post", "create", text, ok, _WRITE, _body(ref), "Binding", gvk)
            path = f"{self.collection}/{{name}}/binding"
            self.paths[path] = {"post": post, "parameters": self.item_params}

    def sub_schema(self, sub: str) -> dict[str, str]:
        name, gvk = _SUB_KINDS[sub]
        self.schemas[name] = _permissive(f"The body of the {sub} subresource.", [gvk])
        return _ref(name)

    def item(
        self, suffix: str, what: str, ref: dict[str, str], gvk: dict[str, str] | None = None
    ) -> None:
        """get, put and patch of the object or one of its subresources; delete of the object."""
        kind, verbs = self.rt.kind, self.verbs
        ops: dict[str, Any] = {}
        if "get" in verbs:
            ok = _responses(ref, "200")
            ops["get"] = self.op("get", "read", f"read {what} {kind}", ok, None, None, suffix, gvk)
        if "update" in verbs:
            ok, body = _responses(ref, "200", "201"), _body(ref)
            text = f"replace {what} {kind}"
            ops["put"] = self.op("put", "replace", text, ok, _WRITE, body, suffix, gvk)
        if "delete" in verbs and not suffix:
            ok = _responses(_STATUS, "200", "202")
            ops["delete"] = self.op(
                "delete", "delete", f"delete a {kind}", ok, _DELETE, _DELETE_BODY
            )
        if "patch" in verbs:
            # fieldValidation on every PATCH: kubectl decides from the first PATCH operation it
            # meets for a kind, and the status subresource's carries the same kind.
            ok, text = _responses(ref, "200", "201"), f"partially update {what} {kind}"
            params = [*_WRITE, _FORCE]
            ops["patch"] = self.op("patch", "patch", text, ok, params, _PATCH_BODY, suffix, gvk)
        if ops:
            path = f"{self.collection}/{{name}}" + (f"/{suffix.lower()}" if suffix else "")
            self.paths[path] = {**ops, "parameters": self.item_params}


def _document(paths: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": VERSION},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "BearerToken": {
                    "type": "apiKey",
                    "description": "Bearer Token authentication",
                    "name": "authorization",
                    "in": "header",
                }
            },
        },
        "security": [{"BearerToken": []}],
    }


def _discovery_doc(path: str, op_id: str, tag: str, text: str, meta: str) -> dict[str, Any]:
    op = {
        "tags": [tag],
        "description": text,
        "operationId": op_id,
        "responses": _responses({"$ref": _META + meta}, "200"),
    }
    return _document({path: {"get": op}}, {f"{_META_NAME}{meta}": _META_SCHEMAS[meta]})


def build_document(key: str, resources: list[ResourceType]) -> dict[str, Any]:
    if key == "api":
        return _discovery_doc(
            "/api/", "getCoreAPIVersions", "core", "get available API versions", "APIVersions"
        )
    if key == "apis":
        return _discovery_doc(
            "/apis/", "getAPIVersions", "apis", "get available API versions", "APIGroupList"
        )
    parts = key.split("/")
    if len(parts) == 2 and parts[0] == "apis":
        group = _ident(_short_group(parts[1]), False)
        op_id = f"get{_ident(_short_group(parts[1]), True)}APIGroup"
        return _discovery_doc(f"/{key}/", op_id, group, "get information of a group", "APIGroup")
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    if resources:
        gv = _Resource(resources[0], paths, schemas)
        op = {
            "tags": [gv.tag],
            "description": "get available resources",
            "operationId": f"get{gv.gv}APIResources",
            "responses": _responses({"$ref": _META + "APIResourceList"}, "200"),
        }
        paths[f"/{key}/"] = {"get": op}
    for rt in resources:
        _Resource(rt, paths, schemas).build()
    for meta in _GV_META:
        schemas[_META_NAME + meta] = _META_SCHEMAS[meta]
    return _document(paths, schemas)
