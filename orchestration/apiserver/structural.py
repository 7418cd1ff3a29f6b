"""Structural schemas of custom resources: validation, pruning and defaulting.

``compile_schema`` turns a CRD version's openAPIV3Schema into a tree of ``_Node`` objects once
(the server caches it per CRD version); each request then only walks the object along that tree,
running the checks bucketed under the value's JSON type. Messages copy kube-apiserver's wording
(kube-openapi's text wrapped in field errors).

The server calls, in this order: ``prune`` (unknown fields; refused under
``fieldValidation=Strict``), ``default``, then ``validate``.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime
import re
from collections.abc import Callable
from typing import Any

import orjson

from .fielderrors import (
    DUPLICATE,
    INVALID,
    JSON_TYPES,
    NOT_SUPPORTED,
    REQUIRED,
    TOO_LONG,
    TOO_MANY,
    TYPE_INVALID,
    FieldError,
    go_float,
    go_quote,
    json_type,
)

__all__ = ["CompiledSchema", "compile_schema"]


def _canon(v: Any) -> Any:
    """A hashable key under which JSON-equal values meet (1 == 1.0, but True != 1)."""
    t = json_type(v)
    if t in ("integer", "number"):
        return ("n", v)
    if t in ("object", "array"):
        return ("j", orjson.dumps(v, option=orjson.OPT_SORT_KEYS))
    return (t, v)


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_Check = Callable[[Any, str, list[FieldError]], None]
_ROOT_KEEP = frozenset({"apiVersion", "kind", "metadata"})
_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
# Lenient like kube's strfmt: seconds, fraction and zone are optional, case-insensitive T/Z.
_DATE_TIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(:(\d{2})(\.\d+)?)?([Zz]|[+-]\d{2}:?\d{2})?$"
)
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$")
_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


def _valid_date(m: re.Match[str] | None) -> bool:
    if m is None:
        return False
    try:
        datetime.date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return False
    return True


def _valid_base64(s: str) -> bool:
    try:
        base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _date_time_ok(s: str) -> bool:
    m = _DATE_TIME.match(s)
    return _valid_date(m) and m is not None and int(m[4]) < 24 and int(m[5]) < 60


_STRING_FORMATS: dict[str, Callable[[str], bool]] = {
    "date-time": _date_time_ok,
    "datetime": _date_time_ok,
    "date": lambda s: _valid_date(_DATE.match(s)),
    "uuid": lambda s: _UUID.match(s) is not None,
    "byte": _valid_base64,
}


class _Node:
    """One compiled schema: checks bucketed by JSON type, children and pruning/defaulting data."""

    __slots__ = (
        "additional",
        "any_checks",
        "checks",
        "defaults",
        "embedded",
        "items",
        "label",
        "needs_default",
        "nullable",
        "preserve",
        "props",
        "prunes",
        "simple",
        "trivial",
        "types",
        "walk_default",
        "walk_props",
    )
    trivial: bool  # nothing to check here or below: validation skips the subtree
    simple: bool  # only a type to check: parents accept a matching value without a call
    prunes: bool  # pruning could remove something here or below
    needs_default: bool  # defaulting has something to do here or below

    def __init__(self, s: dict[str, Any]) -> None:
        if s.get("x-kubernetes-int-or-string"):
            self.types: frozenset[str] | None = frozenset({"integer", "string"})
            self.label = "integer,string"
        elif isinstance(t := s.get("type"), str) and t:
            self.types = frozenset({"integer", "number"}) if t == "number" else frozenset({t})
            self.label = t
        else:
            self.types, self.label = None, ""
        self.nullable = bool(s.get("nullable"))
        self.preserve = bool(s.get("x-kubernetes-preserve-unknown-fields"))
        self.embedded = bool(s.get("x-kubernetes-embedded-resource"))
        props = s.get("properties")
        self.props: dict[str, _Node] = (
            {k: _Node(v) for k, v in props.items() if isinstance(v, dict)}
            if isinstance(props, dict)
            else {}
        )
        add = s.get("additionalProperties")
        self.additional: _Node | bool | None = _Node(add) if isinstance(add, dict) else add
        items = s.get("items")
        self.items = _Node(items) if isinstance(items, dict) else None
        self.checks: dict[str, list[_Check]] = {}
        self.any_checks: list[_Check] = []
        _add_checks(self, s)
        kids = [*self.props.values(), self.items, self.additional]
        nodes = [k for k in kids if isinstance(k, _Node)]
        self.walk_props = {k: n for k, n in self.props.items() if not n.trivial}
        unchecked = not self.checks and not self.any_checks and not self.embedded
        self.trivial = self.types is None and unchecked and all(n.trivial for n in nodes)
        self.simple = self.types is not None and unchecked and not nodes
        object_like = (self.types is not None and "object" in self.types) or bool(self.props)
        self.prunes = (
            object_like and not self.preserve and not isinstance(add, dict) and add is not True
        ) or any(n.prunes for n in nodes)
        self.defaults = [
            (k, p_schema["default"], self.props[k].nullable)
            for k, p_schema in (props.items() if isinstance(props, dict) else ())
            if isinstance(p_schema, dict) and "default" in p_schema
        ]
        # Nulls of non-nullable fields are dropped during defaulting, so any property counts.
        self.needs_default = bool(self.props) or any(n.needs_default for n in nodes)
        self.walk_default = {k: n for k, n in self.props.items() if n.needs_default}

    def check(self, v: Any, path: str, errs: list[FieldError]) -> None:
        t = JSON_TYPES.get(type(v)) or json_type(v)
        if t == "null" and (self.nullable or self.types is None):
            return
        if self.types is not None and t not in self.types:
            msg = f'{path} in body must be of type {self.label}: "{t}"'
            errs.append(FieldError(path, TYPE_INVALID, msg, t))
            return
        checks = self.checks.get(t)
        if checks:
            for chk in checks:
                chk(v, path, errs)
        for chk in self.any_checks:
            chk(v, path, errs)
        if t == "object":
            props, add = self.walk_props, self.additional
            extra = add if isinstance(add, _Node) and not add.trivial else None
            if props or extra is not None:
                for k, item in v.items():
                    node = props.get(k) or (extra if k not in self.props else None)
                    # Most leaves only need their type: accept a match without building a path.
                    if node is not None and not (
                        node.simple and JSON_TYPES.get(type(item)) in (node.types or ())
                    ):
                        node.check(item, _child(path, k), errs)
        elif t == "array" and self.items is not None and not self.items.trivial:
            node = self.items
            types = node.types if node.simple else None
            for i, item in enumerate(v):
                if types is None or JSON_TYPES.get(type(item)) not in types:
                    node.check(item, f"{path}[{i}]", errs)

    def prune(self, v: Any, path: str, out: list[str], root: bool = False) -> None:
        if type(v) is list:
            if self.items is not None and self.items.prunes:
                for i, item in enumerate(v):
                    self.items.prune(item, f"{path}[{i}]", out)
            return
        if type(v) is not dict:
            return
        add = self.additional
        keep_unknown = self.preserve or add is True
        for k in list(v):
            if (root or self.embedded) and k in _ROOT_KEEP:
                continue  # the server owns metadata; apiVersion/kind always survive
            node = self.props.get(k)
            if node is None:
                if isinstance(add, _Node):
                    node = add
                elif keep_unknown:
                    continue
                else:
                    del v[k]
                    out.append(_child(path, k))
                    continue
            if node.prunes:
                node.prune(v[k], _child(path, k), out)

    def default(self, v: Any) -> None:
        if type(v) is list:
            if self.items is not None and self.items.needs_default:
                for item in v:
                    self.items.default(item)
            return
        if type(v) is not dict:
            return
        for k, dflt, nullable in self.defaults:
            if k not in v or (v[k] is None and not nullable):
                v[k] = copy.deepcopy(dflt) if isinstance(dflt, dict | list) else dflt
        add = self.additional if isinstance(self.additional, _Node) else None
        walk, dropped = self.walk_default, None
        for k, item in v.items():
            if item is None:
                node = self.props.get(k) or add
                if node is not None and not node.nullable:
                    dropped = [*(dropped or ()), k]
            elif k in walk:
                walk[k].default(item)
            elif add is not None and add.needs_default and k not in self.props:
                add.default(item)
        # Like the apiserver: nulls of non-nullable fields without a default are pruned.
        for k in dropped or ():
            del v[k]


def _add_checks(n: _Node, s: dict[str, Any]) -> None:
    """Precompute the checks a schema asks for, each bound to its limits."""
    strs: list[_Check] = []
    nums: list[_Check] = []
    arrs: list[_Check] = []
    objs: list[_Check] = []

    def invalid(p: str, v: Any, msg: str) -> FieldError:
        return FieldError(p, INVALID, msg, v)

    if isinstance(mx := s.get("maxLength"), int):

        def max_len(v: str, p: str, e: list[FieldError], mx: int = mx) -> None:
            if len(v) > mx:
                e.append(FieldError(p, TOO_LONG, f"may not be longer than {mx}", v))

        strs.append(max_len)
    if isinstance(mn := s.get("minLength"), int) and mn > 0:

        def min_len(v: str, p: str, e: list[FieldError], mn: int = mn) -> None:
            if len(v) < mn:
                e.append(invalid(p, v, f"{p} in body should be at least {mn} chars long"))

        strs.append(min_len)
    if isinstance(pat := s.get("pattern"), str):
        try:
            rx = re.compile(pat.replace(r"\z", r"\Z"))
        except re.error:
            rx = None  # RE2-only syntax; validate_crd reports what Python cannot compile
        if rx is not None:

            def pattern(v: str, p: str, e: list[FieldError], rx: Any = rx, pat: str = pat) -> None:
                if rx.search(v) is None:
                    e.append(invalid(p, v, f"{p} in body should match '{pat}'"))

            strs.append(pattern)
    fmt = s.get("format")
    if isinstance(fmt, str) and (ok := _STRING_FORMATS.get(fmt)) is not None:

        def str_format(v: str, p: str, e: list[FieldError], ok: Any = ok, f: str = fmt) -> None:
            if not ok(v):
                e.append(
                    FieldError(
                        p, TYPE_INVALID, f"{p} in body must be of type {f}: {go_quote(v)}", v
                    )
                )

        strs.append(str_format)
    if isinstance(fmt, str) and fmt in _INT_RANGES:
        lo, hi = _INT_RANGES[fmt]

        def int_format(
            v: Any, p: str, e: list[FieldError], lo: int = lo, hi: int = hi, f: str = fmt
        ) -> None:
            if type(v) is int and not lo <= v <= hi:
                msg = f'{p} in body must be of type {f}: "{v}"'
                e.append(FieldError(p, TYPE_INVALID, msg, v))

        nums.append(int_format)
    for key, excl_key, op, word in (
        ("maximum", "exclusiveMaximum", "max", "less than"),
        ("minimum", "exclusiveMinimum", "min", "greater than"),
    ):
        limit, excl = s.get(key), s.get(excl_key)
        if not isinstance(excl, bool) and isinstance(excl, int | float):
            limit, excl = excl, True  # OpenAPI 3.1 spelling: the bound itself
        if isinstance(limit, bool) or not isinstance(limit, int | float):
            continue
        shown = go_float(float(limit))
        text = f"should be {word} {shown}" if excl else f"should be {word} or equal to {shown}"
        nums.append(_bound(limit, bool(excl), op == "max", text))
    if isinstance(m := s.get("multipleOf"), int | float) and not isinstance(m, bool) and m > 0:

        def multiple(v: Any, p: str, e: list[FieldError], m: Any = m) -> None:
            if type(v) is int and type(m) is int:
                bad = v % m != 0
            else:
                q = v / m
                bad = abs(q - round(q)) > 1e-9 * max(1.0, abs(q))
            if bad:
                e.append(invalid(p, v, f"{p} in body should be a multiple of {go_float(float(m))}"))

        nums.append(multiple)
    if isinstance(mn := s.get("minItems"), int) and mn > 0:

        def min_items(v: list[Any], p: str, e: list[FieldError], mn: int = mn) -> None:
            if len(v) < mn:
                e.append(invalid(p, len(v), f"{p} in body should have at least {mn} items"))

        arrs.append(min_items)
    if isinstance(mx := s.get("maxItems"), int):

        def max_items(v: list[Any], p: str, e: list[FieldError], mx: int = mx) -> None:
            if len(v) > mx:
                e.append(FieldError(p, TOO_MANY, f"must have at most {mx} items", len(v)))

        arrs.append(max_items)
    if s.get("uniqueItems") is True:

        def unique(v: list[Any], p: str, e: list[FieldError]) -> None:
            if len({_canon(x) for x in v}) != len(v):
                e.append(invalid(p, "", f"{p} in body shouldn't contain duplicates"))

        arrs.append(unique)
    list_type = s.get("x-kubernetes-list-type")
    map_keys = tuple(s.get("x-kubernetes-list-map-keys") or ())
    if list_type == "set" or (list_type == "map" and map_keys):

        def listed(
            v: list[Any], p: str, e: list[FieldError], keys: tuple[str, ...] = map_keys
        ) -> None:
            seen: set[Any] = set()
            for i, item in enumerate(v):
                if keys and type(item) is dict:
                    item = {k: item.get(k) for k in keys}
                key = _canon(item)
                if key in seen:
                    e.append(FieldError(f"{p}[{i}]", DUPLICATE, "", item))
                seen.add(key)

        arrs.append(listed)
    if isinstance(req := s.get("required"), list) and req:

        def required(v: dict[str, Any], p: str, e: list[FieldError], req: list[str] = req) -> None:
            for k in req:
                if k not in v:
                    e.append(FieldError(_child(p, k), REQUIRED, ""))

        objs.append(required)
    if isinstance(mn := s.get("minProperties"), int) and mn > 0:

        def min_props(v: dict[str, Any], p: str, e: list[FieldError], mn: int = mn) -> None:
            if len(v) < mn:
                e.append(invalid(p, len(v), f"{p} in body should have at least {mn} properties"))

        objs.append(min_props)
    if isinstance(mx := s.get("maxProperties"), int):

        def max_props(v: dict[str, Any], p: str, e: list[FieldError], mx: int = mx) -> None:
            if len(v) > mx:
                e.append(FieldError(p, TOO_MANY, f"must have at most {mx} items", len(v)))

        objs.append(max_props)
    if n.embedded:

        def embedded(v: dict[str, Any], p: str, e: list[FieldError]) -> None:
            for k in ("kind", "apiVersion"):
                if not isinstance(v.get(k), str) or not v[k]:
                    e.append(FieldError(_child(p, k), REQUIRED, "must not be empty"))
            if "metadata" in v and type(v["metadata"]) is not dict:
                msg = "must be an object"
                e.append(FieldError(_child(p, "metadata"), INVALID, msg, v["metadata"]))

        objs.append(embedded)
    if isinstance(enum := s.get("enum"), list) and enum:
        allowed = {_canon(x) for x in enum}
        labels = [x if isinstance(x, str) else orjson.dumps(x).decode() for x in enum]
        detail = "supported values: " + ", ".join(go_quote(x) for x in labels)

        def in_enum(v: Any, p: str, e: list[FieldError], ok: set[Any] = allowed) -> None:
            if _canon(v) not in ok:
                e.append(FieldError(p, NOT_SUPPORTED, detail, v))

        n.any_checks.append(in_enum)
    _add_junctors(n, s)
    for names, bucket in (
        (("string",), strs),
        (("integer", "number"), nums),
        (("array",), arrs),
        (("object",), objs),
    ):
        for name in names:
            if bucket:
                n.checks[name] = bucket


def _bound(limit: Any, exclusive: bool, upper: bool, text: str) -> _Check:
    def bound(v: Any, p: str, e: list[FieldError]) -> None:
        if upper:
            bad = v > limit or (exclusive and v == limit)
        else:
            bad = v < limit or (exclusive and v == limit)
        if bad:
            e.append(FieldError(p, INVALID, f"{p} in body {text}", v))

    return bound


def _add_junctors(n: _Node, s: dict[str, Any]) -> None:
    """allOf/anyOf/oneOf/not as value validations, reported with kube-openapi's wording."""

    def run(node: _Node, v: Any, p: str) -> list[FieldError]:
        errs: list[FieldError] = []
        node.check(v, p, errs)
        return errs

    def composite(p: str, text: str) -> FieldError:
        return FieldError(p, INVALID, f"{go_quote(p)} {text}", "")

    if isinstance(subs := s.get("allOf"), list) and subs:
        all_of = [_Node(x) for x in subs if isinstance(x, dict)]

        def check_all(v: Any, p: str, e: list[FieldError], alts: list[_Node] = all_of) -> None:
            results = [run(a, v, p) for a in alts]
            failed = [r for r in results if r]
            if failed:
                for r in failed:
                    e.extend(r)
                tail = ". Found none valid" if len(failed) == len(alts) else ""
                e.append(composite(p, f"must validate all the schemas (allOf){tail}"))

        n.any_checks.append(check_all)
    if isinstance(subs := s.get("anyOf"), list) and subs:
        any_of = [_Node(x) for x in subs if isinstance(x, dict)]

        def check_any(v: Any, p: str, e: list[FieldError], alts: list[_Node] = any_of) -> None:
            best: list[FieldError] | None = None
            for a in alts:
                r = run(a, v, p)
                if not r:
                    return
                if best is None or len(r) < len(best):
                    best = r
            e.append(composite(p, "must validate at least one schema (anyOf)"))
            e.extend(best or ())

        n.any_checks.append(check_any)
    if isinstance(subs := s.get("oneOf"), list) and subs:
        one_of = [_Node(x) for x in subs if isinstance(x, dict)]

        def check_one(v: Any, p: str, e: list[FieldError], alts: list[_Node] = one_of) -> None:
            results = [run(a, v, p) for a in alts]
            valid = sum(1 for r in results if not r)
            if valid == 1:
                return
            found = "Found none valid" if valid == 0 else f"Found {valid} valid alternatives"
            e.append(composite(p, f"must validate one and only one schema (oneOf). {found}"))
            if valid == 0:
                best: list[FieldError] = min(results, key=len)
                e.extend(best)

        n.any_checks.append(check_one)
    if isinstance(sub := s.get("not"), dict):
        not_node = _Node(sub)

        def check_not(v: Any, p: str, e: list[FieldError], alt: _Node = not_node) -> None:
            if not run(alt, v, p):
                e.append(composite(p, "must not validate the schema (not)"))

        n.any_checks.append(check_not)


class CompiledSchema:
    """A CRD version's schema, compiled once and applied to many objects."""

    __slots__ = ("_root", "schema")

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self._root = _Node(schema)

    def validate(self, obj: Any) -> list[FieldError]:
        """Every violation, with Kubernetes field paths (``spec.items[0].name``)."""
        errs: list[FieldError] = []
        self._root.check(obj, "", errs)
        return errs

    def prune(self, obj: Any) -> list[str]:
        """Drop unknown fields in place; return their paths (for Strict errors or Warn)."""
        out: list[str] = []
        self._root.prune(obj, "", out, root=True)
        return out

    def default(self, obj: Any) -> None:
        """Apply ``default`` values in place; drop nulls of non-nullable fields without one."""
        self._root.default(obj)


def compile_schema(schema: dict[str, Any]) -> CompiledSchema:
    """Compile an openAPIV3Schema (assumed structural: see ``crds.validate_crd``)."""
    return CompiledSchema(schema)
