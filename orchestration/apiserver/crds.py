"""CustomResourceDefinitions: the mistakes kube-apiserver refuses, and what a CRD serves.

``validate_crd`` checks an apiextensions.k8s.io/v1 CRD with kube-apiserver's paths and wording
(names, scope, versions, structural schemas, subresources, printer columns), so a manifest that a
real cluster refuses is refused here too. ``crd_resource_types`` turns an accepted CRD into one
``ResourceType`` per served version.
"""

from __future__ import annotations

import re
from typing import Any

from ..apis import ResourceType
from .fielderrors import FORBIDDEN, INVALID, NOT_SUPPORTED, REQUIRED, FieldError
from .structural import compile_schema

__all__ = ["crd_resource_types", "validate_crd"]

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_MSG = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an"
    " alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or"
    " 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
)
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or"
    " '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used"
    rf" for validation is '{_LABEL}(\.{_LABEL})*')"
)
_SCHEMA_TYPES = ("array", "boolean", "integer", "number", "object", "string")
_COLUMN_TYPES = ("boolean", "date", "integer", "number", "string")
_COLUMN_FORMATS = ("byte", "date", "date-time", "double", "float", "int32", "int64", "password")
_LIST_TYPES = ("atomic", "map", "set")
_UNSUPPORTED = (
    "$ref",
    "$schema",
    "additionalItems",
    "definitions",
    "dependencies",
    "id",
    "patternProperties",
)
# Keywords a junctor (allOf/anyOf/oneOf/not) branch may not carry in a structural schema.
_NESTED_FORBIDDEN = (
    ("type", "must be empty to be structural"),
    ("additionalProperties", "must be undefined to be structural"),
    ("default", "must be undefined to be structural"),
    ("title", "must be empty to be structural"),
    ("description", "must be empty to be structural"),
    ("nullable", "must be false to be structural"),
    ("x-kubernetes-preserve-unknown-fields", "must be false to be structural"),
    ("x-kubernetes-embedded-resource", "must be false to be structural"),
    ("x-kubernetes-int-or-string", "must be false to be structural"),
    ("x-kubernetes-list-map-keys", "must be empty to be structural"),
    ("x-kubernetes-list-type", "must be undefined to be structural"),
)
_INT_OR_STRING_ANY_OF = [{"type": "integer"}, {"type": "string"}]
_ROOT, _ITEM, _FIELD = "root", "item", "field"
_EMPTY_TYPE = {
    _ROOT: "must not be empty at the root",
    _ITEM: "must not be empty for specified array items",
    _FIELD: "must not be empty for specified object fields",
}


def _dns1035(path: str, value: str, errs: list[FieldError], mixed_case: bool = False) -> None:
    problems = []
    if len(value) > 63:
        problems.append("must be no more than 63 characters")
    if not _DNS1035.match(value.lower() if mixed_case else value):
        problems.append(_DNS1035_MSG)
    if problems:
        text = ",".join(problems)
        if mixed_case:
            text = "may have mixed case, but should otherwise match: " + text
        errs.append(FieldError(path, INVALID, text, value))


# The Go types' shapes: a real server refuses other JSON types while decoding.
_SPEC_TYPES: dict[str, type] = {
    "group": str,
    "names": dict,
    "scope": str,
    "versions": list,
    "conversion": dict,
}
_NAMES_TYPES: dict[str, type] = {"plural": str, "singular": str, "kind": str, "listKind": str}
_NAMES_TYPES |= {"shortNames": list, "categories": list}
_VERSION_TYPES: dict[str, type] = {"name": str, "served": bool, "storage": bool, "deprecated": bool}
_VERSION_TYPES |= {"schema": dict, "subresources": dict, "additionalPrinterColumns": list}
_TYPE_WORDS: dict[type, str] = {
    str: "a string",
    dict: "an object",
    list: "an array",
    bool: "a boolean",
}


def _shapes(obj: dict[str, Any], types: dict[str, type], path: str, errs: list[FieldError]) -> bool:
    ok = True
    for key, want in types.items():
        value = obj.get(key)
        if value is not None and not isinstance(value, want):
            errs.append(FieldError(f"{path}.{key}", INVALID, f"must be {_TYPE_WORDS[want]}", value))
            ok = False
    return ok


def validate_crd(crd: dict[str, Any]) -> list[FieldError]:
    """What kube-apiserver would refuse in this CRD (an empty list when it is acceptable)."""
    errs: list[FieldError] = []
    spec = crd.get("spec")
    if not isinstance(spec, dict):
        return [FieldError("spec", REQUIRED)]
    shaped = _shapes(spec, _SPEC_TYPES, "spec", errs)
    shaped &= _shapes(_obj(spec.get("names")), _NAMES_TYPES, "spec.names", errs)
    versions = spec.get("versions")
    for i, version in enumerate(versions if isinstance(versions, list) else ()):
        if isinstance(version, dict):
            shaped &= _shapes(version, _VERSION_TYPES, f"spec.versions[{i}]", errs)
    if not shaped:
        return errs
    group = spec.get("group")
    if not isinstance(group, str) or not group:
        errs.append(FieldError("spec.group", REQUIRED))
    elif len(group) > 253 or not _SUBDOMAIN.match(group):
        errs.append(FieldError("spec.group", INVALID, _SUBDOMAIN_MSG, group))
    elif "." not in group:
        errs.append(
            FieldError("spec.group", INVALID, "should be a domain with at least one dot", group)
        )
    plural = _names(_obj(spec.get("names")), errs)
    name = _obj(crd.get("metadata")).get("name")
    if plural and group and name != f"{plural}.{group}":
        detail = 'must be spec.names.plural+"."+spec.group'
        errs.append(FieldError("metadata.name", INVALID, detail, name or ""))
    scope = spec.get("scope")
    if not scope:
        errs.append(FieldError("spec.scope", REQUIRED))
    elif scope not in ("Cluster", "Namespaced"):
        detail = 'supported values: "Cluster", "Namespaced"'
        errs.append(FieldError("spec.scope", NOT_SUPPORTED, detail, scope))
    if spec.get("preserveUnknownFields") is True:
        detail = (
            "cannot set to true, set x-kubernetes-preserve-unknown-fields to true in"
            " spec.versions[*].schema instead"
        )
        errs.append(FieldError("spec.preserveUnknownFields", INVALID, detail, True))
    _versions(spec.get("versions"), errs)
    return errs


def _names(names: dict[str, Any], errs: list[FieldError]) -> str:
    plural, kind = _str(names.get("plural")), _str(names.get("kind"))
    singular = _str(names.get("singular")) or kind.lower()  # defaulted first, as upstream
    list_kind = _str(names.get("listKind")) or (f"{kind}List" if kind else "")
    for key, value in (("plural", plural), ("singular", singular), ("kind", kind)):
        if not value:
            errs.append(FieldError(f"spec.names.{key}", REQUIRED))
    for key, value in (("plural", plural), ("singular", singular)):
        if value:
            _dns1035(f"spec.names.{key}", value, errs)
    for key, value in (("kind", kind), ("listKind", list_kind)):
        if value:
            _dns1035(f"spec.names.{key}", value, errs, mixed_case=True)
    if kind and kind == list_kind:
        msg = "kind and listKind cannot be the same"
        errs.append(FieldError("spec.names.listKind", INVALID, msg, list_kind))
    for key in ("shortNames", "categories"):
        values = names.get(key)
        for i, value in enumerate(values if isinstance(values, list) else ()):
            _dns1035(f"spec.names.{key}[{i}]", str(value), errs)
    return plural


def _versions(versions: Any, errs: list[FieldError]) -> None:
    if not isinstance(versions, list) or not versions:
        errs.append(FieldError("spec.versions", REQUIRED, "must have at least one version"))
        return
    seen: set[str] = set()
    names = [v.get("name") if isinstance(v, dict) else None for v in versions]
    for i, version in enumerate(versions):
        path = f"spec.versions[{i}]"
        if not isinstance(version, dict):
            errs.append(FieldError(path, INVALID, "must be an object", version))
            continue
        vname = version.get("name")
        if not isinstance(vname, str) or not vname:
            errs.append(FieldError(f"{path}.name", REQUIRED))
        else:
            _dns1035(f"{path}.name", vname, errs)
            if vname in seen:
                errs.append(
                    FieldError("spec.versions", INVALID, "must contain unique version names", names)
                )
            seen.add(vname)
        schema = _obj(version.get("schema")).get("openAPIV3Schema")
        if not isinstance(schema, dict):
            errs.append(
                FieldError(f"{path}.schema.openAPIV3Schema", REQUIRED, "schemas are required")
            )
        else:
            _structural(schema, f"{path}.schema.openAPIV3Schema", _ROOT, errs)
        _subresources(version.get("subresources"), f"{path}.subresources", errs)
        columns = version.get("additionalPrinterColumns")
        for j, col in enumerate(columns if isinstance(columns, list) else ()):
            _column(col, f"{path}.additionalPrinterColumns[{j}]", errs)
    if sum(1 for v in versions if isinstance(v, dict) and v.get("storage") is True) != 1:
        detail = "must have exactly one version marked as storage version"
        errs.append(FieldError("spec.versions", INVALID, detail, names))


def _subresources(sub: Any, path: str, errs: list[FieldError]) -> None:
    scale = sub.get("scale") if isinstance(sub, dict) else None
    if not isinstance(scale, dict):
        return
    for key, under in (("specReplicasPath", ".spec"), ("statusReplicasPath", ".status")):
        value = scale.get(key)
        if not value:
            errs.append(FieldError(f"{path}.scale.{key}", REQUIRED))
        elif not str(value).startswith(under + "."):
            errs.append(
                FieldError(
                    f"{path}.scale.{key}", INVALID, f"should be a json path under {under}", value
                )
            )
    selector = scale.get("labelSelectorPath")
    if selector and not str(selector).startswith((".spec.", ".status.")):
        detail = "should be a json path under either .spec or .status"
        errs.append(FieldError(f"{path}.scale.labelSelectorPath", INVALID, detail, selector))


def _column(col: Any, path: str, errs: list[FieldError]) -> None:
    if not isinstance(col, dict):
        errs.append(FieldError(path, INVALID, "must be an object", col))
        return
    if not col.get("name"):
        errs.append(FieldError(f"{path}.name", REQUIRED))
    ctype = col.get("type")
    if not ctype:
        errs.append(
            FieldError(f"{path}.type", REQUIRED, f"must be one of {','.join(_COLUMN_TYPES)}")
        )
    elif ctype not in _COLUMN_TYPES:
        errs.append(FieldError(f"{path}.type", NOT_SUPPORTED, _supported(_COLUMN_TYPES), ctype))
    fmt = col.get("format")
    if fmt and fmt not in _COLUMN_FORMATS:
        errs.append(FieldError(f"{path}.format", NOT_SUPPORTED, _supported(_COLUMN_FORMATS), fmt))
    if not col.get("jsonPath"):
        errs.append(FieldError(f"{path}.jsonPath", REQUIRED))


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _supported(values: tuple[str, ...]) -> str:
    return "supported values: " + ", ".join(f'"{v}"' for v in values)


def _structural(s: dict[str, Any], path: str, level: str, errs: list[FieldError]) -> None:
    """The checks of a (non-junctor) schema node, then its children."""
    _common(s, path, errs)
    stype = s.get("type") or ""
    props = _obj(s.get("properties"))
    add = s.get("additionalProperties")
    int_or_string = s.get("x-kubernetes-int-or-string") is True
    preserve = s.get("x-kubernetes-preserve-unknown-fields") is True
    embedded = s.get("x-kubernetes-embedded-resource") is True
    if embedded and stype != "object":
        msg = "must be object if x-kubernetes-embedded-resource is true"
        errs.append(
            FieldError(f"{path}.type", INVALID, msg, stype)
            if stype
            else FieldError(f"{path}.type", REQUIRED, msg)
        )
    elif not stype and not int_or_string and not preserve:
        errs.append(FieldError(f"{path}.type", REQUIRED, _EMPTY_TYPE[level]))
    if level == _ROOT and stype and stype != "object":
        errs.append(FieldError(f"{path}.type", INVALID, "must be object at the root", stype))
    if add is not None and level == _ROOT:
        errs.append(
            FieldError(f"{path}.additionalProperties", FORBIDDEN, "must not be used at the root")
        )
    if embedded and add is not None:
        msg = "must not be used if x-kubernetes-embedded-resource is set"
        errs.append(FieldError(f"{path}.additionalProperties", FORBIDDEN, msg))
    if embedded and not preserve and not props:
        msg = (
            "must not be empty if x-kubernetes-embedded-resource is true without"
            " x-kubernetes-preserve-unknown-fields"
        )
        errs.append(FieldError(f"{path}.properties", REQUIRED, msg))
    if int_or_string and preserve:
        msg = "must be false if x-kubernetes-int-or-string is true"
        errs.append(FieldError(f"{path}.x-kubernetes-preserve-unknown-fields", INVALID, msg, True))
    if int_or_string and embedded:
        msg = "must be false if x-kubernetes-int-or-string is true"
        errs.append(FieldError(f"{path}.x-kubernetes-embedded-resource", INVALID, msg, True))
    if level == _ROOT or embedded:
        for key, want in (("kind", "string"), ("apiVersion", "string"), ("metadata", "object")):
            sub = props.get(key)
            if isinstance(sub, dict) and sub.get("type") != want:
                errs.append(
                    FieldError(
                        f"{path}.properties[{key}].type",
                        INVALID,
                        f"must be {want}",
                        sub.get("type") or "",
                    )
                )
    if level == _ROOT and isinstance(md := props.get("metadata"), dict):
        extra = set(md) - {"type", "properties", "description", "title", "default"}
        extra |= set(md.get("properties") or {}) - {"name", "generateName"}
        if extra:
            msg = (
                "must not specify anything other than name and generateName, but metadata is"
                " implicitly specified"
            )
            errs.append(FieldError(f"{path}.properties[metadata]", FORBIDDEN, msg))
    if "default" in s and level != _ROOT:
        _default(s, path, errs)
    for key, sub in props.items():
        if isinstance(sub, dict):
            _structural(sub, f"{path}.properties[{key}]", _FIELD, errs)
    if isinstance(add, dict):
        _structural(add, f"{path}.additionalProperties", _FIELD, errs)
    items = s.get("items")
    if stype == "array" and items is None:
        errs.append(FieldError(f"{path}.items", REQUIRED, "must be specified"))
    if isinstance(items, dict):
        _structural(items, f"{path}.items", _ITEM, errs)
    elif items is not None:
        errs.append(
            FieldError(f"{path}.items", FORBIDDEN, "items must be a schema object and not an array")
        )
    _junctors(s, path, errs, int_or_string)


def _common(s: dict[str, Any], path: str, errs: list[FieldError]) -> None:
    """Checks shared by plain and junctor nodes: keywords, types, patterns."""
    for key in _UNSUPPORTED:
        if key in s:
            errs.append(FieldError(f"{path}.{key}", FORBIDDEN, f"{key} is not supported"))
    stype = s.get("type")
    if stype and stype not in _SCHEMA_TYPES:
        errs.append(FieldError(f"{path}.type", NOT_SUPPORTED, _supported(_SCHEMA_TYPES), stype))
    if s.get("uniqueItems") is True:
        msg = "uniqueItems cannot be set to true since the runtime complexity becomes quadratic"
        errs.append(FieldError(f"{path}.uniqueItems", FORBIDDEN, msg))
    if (
        isinstance(s.get("properties"), dict)
        and s["properties"]
        and s.get("additionalProperties") not in (None, True)
    ):
        msg = "additionalProperties and properties are mutual exclusive"
        errs.append(FieldError(f"{path}.additionalProperties", FORBIDDEN, msg))
    if isinstance(pattern := s.get("pattern"), str):
        try:
            re.compile(pattern)
        except re.error as exc:
            msg = f"must be a valid regular expression, but isn't: {exc}"
            errs.append(FieldError(f"{path}.pattern", INVALID, msg, pattern))
    list_type = s.get("x-kubernetes-list-type")
    if list_type is not None and list_type not in _LIST_TYPES:
        errs.append(
            FieldError(
                f"{path}.x-kubernetes-list-type", NOT_SUPPORTED, _supported(_LIST_TYPES), list_type
            )
        )
    if list_type == "map" and not s.get("x-kubernetes-list-map-keys"):
        msg = "must not be empty if x-kubernetes-list-type is map"
        errs.append(FieldError(f"{path}.x-kubernetes-list-map-keys", REQUIRED, msg))


def _junctors(s: dict[str, Any], path: str, errs: list[FieldError], int_or_string: bool) -> None:
    for key in ("allOf", "anyOf", "oneOf"):
        subs = s.get(key)
        if not isinstance(subs, list):
            continue
        if key == "anyOf" and int_or_string and subs == _INT_OR_STRING_ANY_OF:
            continue  # the one shape controller-gen emits for IntOrString
        for i, sub in enumerate(subs):
            if isinstance(sub, dict):
                skip = key == "allOf" and i == 0 and int_or_string
                _nested(sub, f"{path}.{key}[{i}]", errs, skip_int_or_string=skip)
    if isinstance(s.get("not"), dict):
        _nested(s["not"], f"{path}.not", errs)


def _nested(
    s: dict[str, Any], path: str, errs: list[FieldError], skip_int_or_string: bool = False
) -> None:
    """A junctor branch: value validations only, as structural schemas require."""
    _common(s, path, errs)
    for key, msg in _NESTED_FORBIDDEN:
        if s.get(key) not in (None, False, "", []):
            errs.append(FieldError(f"{path}.{key}", FORBIDDEN, msg))
    props = _obj(s.get("properties"))
    if "metadata" in props:
        errs.append(
            FieldError(
                f"{path}.properties[metadata]",
                FORBIDDEN,
                "must not be specified in a nested context",
            )
        )
    for key, sub in props.items():
        if isinstance(sub, dict):
            _nested(sub, f"{path}.properties[{key}]", errs)
    if isinstance(s.get("items"), dict):
        _nested(s["items"], f"{path}.items", errs)
    _junctors(s, path, errs, skip_int_or_string)


def _default(s: dict[str, Any], path: str, errs: list[FieldError]) -> None:
    """A default must pass its own schema (the apiserver would refuse the defaulted object)."""
    for e in compile_schema(s).validate(s["default"]):
        where = f"{path}.default" + (f".{e.path}" if e.path else "")
        errs.append(FieldError(where, e.type, e.message.lstrip(), e.value))


def crd_resource_types(crd: dict[str, Any]) -> list[ResourceType]:
    """One ResourceType per served version of an accepted CRD."""
    spec = crd["spec"]
    names = spec["names"]
    kind = names["kind"]
    out = []
    for version in spec.get("versions") or ():
        if not version.get("served"):
            continue
        sub = _obj(version.get("subresources"))
        schema = _obj(version.get("schema")).get("openAPIV3Schema")
        out.append(
            ResourceType(
                group=spec["group"],
                version=version["name"],
                kind=kind,
                plural=names["plural"],
                singular=names.get("singular") or kind.lower(),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                subresources=frozenset(
                    k for k in ("status", "scale") if isinstance(sub.get(k), dict)
                ),
                custom=True,
                schema=schema,
                printer_columns=tuple(version.get("additionalPrinterColumns") or ()),
            )
        )
    return out
