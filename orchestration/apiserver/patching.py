"""PATCH bodies: decoding, JSON patch (RFC 6902), JSON merge patch (RFC 7386).

Strategic merge patch and our simplified server-side apply live in ``strategic.py``
(they need the per-kind merge-key table); the two entry points are re-exported here
so the request handler has one module to call.

All functions take and return plain JSON values (dict/list/str/int/float/bool/None)
and never mutate their arguments: they work on a private deep copy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final

import yaml


class PatchError(ValueError):
    """A patch that is malformed (400), cannot apply (422) or has an unknown type (415)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class UnsupportedPatchType(PatchError):
    def __init__(self, content_type: str) -> None:
        supported = ", ".join(PATCH_CONTENT_TYPES)
        super().__init__(
            415,
            f"the body of the request was in an unknown format ({content_type or 'none'}); "
            f"accepted media types include: {supported}",
        )


# Media type → the short name kubectl's ``--type`` uses (``apply`` is server-side apply).
PATCH_CONTENT_TYPES: Final[Mapping[str, str]] = {
    "application/json-patch+json": "json",
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
    "application/apply-patch+yaml": "apply",
}


def copy_json(value: Any) -> Any:
    """Deep copy of a JSON value; much cheaper than ``copy.deepcopy`` for this shape."""
    if isinstance(value, dict):
        return {k: copy_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_json(v) for v in value]
    return value


def json_equal(a: Any, b: Any) -> bool:
    """Equality as JSON sees it: 1 == 1.0, but true != 1 (Python's ``==`` says otherwise)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(v, b[k]) for k, v in a.items())
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


# --- decoding -------------------------------------------------------------------------------


class _JSONishLoader(yaml.SafeLoader):
    """Safe YAML without timestamp resolution: Kubernetes reads YAML as JSON, so an
    unquoted ``2024-01-01T00:00:00Z`` stays a string instead of becoming a datetime. Nor are
    YAML 1.1's base-60 numbers read (Go's YAML has none): ``end: 24:00``, a Sedna trigger's
    timer, stays "24:00" instead of becoming 1440."""


# PyYAML's int and float patterns less their sexagesimal alternatives.
_INT = re.compile(
    r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"
)
_FLOAT = re.compile(
    r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_PATTERNS = {"tag:yaml.org,2002:int": _INT, "tag:yaml.org,2002:float": _FLOAT}
_JSONishLoader.yaml_implicit_resolvers = {
    first: [
        (tag, _PATTERNS.get(tag, rx))
        for tag, rx in resolvers
        if tag != "tag:yaml.org,2002:timestamp"
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}

# YAML aliases make tiny bodies expand into huge documents ("billion laughs").
_MAX_NODES = 1_000_000


def _yaml_to_json(value: Any, budget: list[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise PatchError(400, "apply patch is too large once YAML aliases are expanded")
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if isinstance(k, bool) or k is None:
                k = json.dumps(k)  # true/false/null, as sigs.k8s.io/yaml writes them
            elif isinstance(k, int | float):
                k = str(k)
            elif not isinstance(k, str):
                raise PatchError(400, f"apply patch: unsupported mapping key {k!r}")
            out[k] = _yaml_to_json(v, budget)
        return out
    if isinstance(value, list):
        return [_yaml_to_json(v, budget) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise PatchError(400, f"apply patch: value of type {type(value).__name__} is not JSON")


def load_yaml(text: str, what: str) -> Any:
    """YAML read the way Kubernetes reads it (as JSON), with alias expansion capped."""
    try:
        loaded = yaml.load(text, Loader=_JSONishLoader)
        return _yaml_to_json(loaded, [_MAX_NODES])
    except yaml.YAMLError as e:
        raise PatchError(400, f"{what} is not valid YAML: {e}") from None
    except RecursionError:
        raise PatchError(
            400, f"{what} nests too deeply (or its aliases refer to themselves)"
        ) from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_patch(content_type: str, body: bytes) -> tuple[str, Any]:
    """Parse a PATCH body; returns (patch type name, parsed body).

    Raises ``UnsupportedPatchType`` (415) for an unknown media type and ``PatchError``
    (400) for a body that does not parse. Media type parameters (``; charset=``) are ignored.
    """
    media_type = content_type.split(";", 1)[0].strip().lower()
    name = PATCH_CONTENT_TYPES.get(media_type)
    if name is None:
        raise UnsupportedPatchType(media_type)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PatchError(400, f"{name} patch body is not UTF-8: {e}") from None
    if not text.strip():
        raise PatchError(400, f"{name} patch body is empty")
    if name == "apply":
        data = load_yaml(text, "apply patch")
        if not isinstance(data, dict):
            raise PatchError(400, "apply patch must be an object (a YAML mapping)")
        return name, data
    try:
        return name, json.loads(text, parse_constant=_reject_constant)
    except ValueError as e:
        raise PatchError(400, f"{name} patch is not valid JSON: {e}") from None
    except RecursionError:
        raise PatchError(400, f"{name} patch nests too deeply") from None


# --- JSON patch (RFC 6902) ------------------------------------------------------------------

_OPS = ("add", "remove", "replace", "move", "copy", "test")
_ESCAPES = re.compile(r"(?:[^~]|~[01])*")
_ARRAY_INDEX = re.compile(r"0|[1-9][0-9]*")


def _parse_pointer(pointer: Any, where: str) -> list[str]:
    if not isinstance(pointer, str):
        raise PatchError(400, f"{where}: must be a JSON pointer string, got {pointer!r}")
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PatchError(400, f"{where}: JSON pointer {pointer!r} must start with '/'")
    tokens = pointer[1:].split("/")
    for token in tokens:
        if not _ESCAPES.fullmatch(token):
            raise PatchError(400, f"{where}: JSON pointer {pointer!r} has a bad '~' escape")
    # ~1 first: "~01" must decode to "~1", not "/".
    return [t.replace("~1", "/").replace("~0", "~") for t in tokens]


def _index(token: str, length: int, pointer: str, *, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return length
    if not _ARRAY_INDEX.fullmatch(token):
        raise PatchError(422, f"path {pointer!r}: {token!r} is not a valid array index")
    index = int(token)
    if index > length or (index == length and not allow_end):
        raise PatchError(422, f"path {pointer!r}: array index {index} is out of range")
    return index


def _resolve(doc: Any, tokens: list[str], pointer: str) -> Any:
    current = doc
    for depth, token in enumerate(tokens):
        if isinstance(current, dict):
            if token not in current:
                missing = "/" + "/".join(tokens[: depth + 1])
                raise PatchError(422, f"path {pointer!r} does not exist (no {missing!r})")
            current = current[token]
        elif isinstance(current, list):
            current = current[_index(token, len(current), pointer, allow_end=False)]
        else:
            raise PatchError(422, f"path {pointer!r} does not exist (a scalar has no children)")
    return current


def _add(doc: Any, tokens: list[str], value: Any, pointer: str) -> Any:
    if not tokens:
        return value
    parent = _resolve(doc, tokens[:-1], pointer)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(last, len(parent), pointer, allow_end=True), value)
    else:
        raise PatchError(422, f"path {pointer!r}: parent is not an object or array")
    return doc


def _remove(doc: Any, tokens: list[str], pointer: str) -> Any:
    if not tokens:
        raise PatchError(422, "path '': cannot remove the whole document")
    parent = _resolve(doc, tokens[:-1], pointer)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(422, f"path {pointer!r} does not exist")
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_index(last, len(parent), pointer, allow_end=False))
    raise PatchError(422, f"path {pointer!r}: parent is not an object or array")


def _replace(doc: Any, tokens: list[str], value: Any, pointer: str) -> Any:
    if not tokens:
        return value
    parent = _resolve(doc, tokens[:-1], pointer)
    last = tokens[-1]
    if isinstance(parent, list):
        parent[_index(last, len(parent), pointer, allow_end=False)] = value
    elif isinstance(parent, dict) and last in parent:
        parent[last] = value
    else:
        raise PatchError(422, f"path {pointer!r} does not exist")
    return doc


def _validate_ops(ops: Any) -> list[dict[str, Any]]:
    if not isinstance(ops, list):
        raise PatchError(400, "JSON patch must be an array of operations")
    for i, op in enumerate(ops):
        where = f"operation {i}"
        if not isinstance(op, dict):
            raise PatchError(400, f"{where}: must be an object, got {op!r}")
        name = op.get("op")
        if name not in _OPS:
            raise PatchError(400, f"{where}: 'op' must be one of {', '.join(_OPS)}, got {name!r}")
        if "path" not in op:
            raise PatchError(400, f"{where} ({name}): missing 'path'")
        _parse_pointer(op["path"], f"{where} ({name}) path")
        if name in ("add", "replace", "test") and "value" not in op:
            raise PatchError(400, f"{where} ({name}) at {op['path']!r}: missing 'value'")
        if name in ("move", "copy"):
            if "from" not in op:
                raise PatchError(400, f"{where} ({name}) to {op['path']!r}: missing 'from'")
            _parse_pointer(op["from"], f"{where} ({name}) from")
    return ops


MAX_COPIED_BYTES = 3 * 1024 * 1024  # the request cap: a patch may not grow an object more


def apply_json_patch(doc: Any, ops: Any) -> Any:
    """Apply an RFC 6902 JSON patch; the operations run in order, all or nothing."""
    result = copy_json(doc)
    copied_bytes = 0
    for i, op in enumerate(_validate_ops(ops)):
        name, pointer = op["op"], op["path"]
        path = _parse_pointer(pointer, "path")
        try:
            if name == "add":
                result = _add(result, path, copy_json(op["value"]), pointer)
            elif name == "remove":
                _remove(result, path, pointer)
            elif name == "replace":
                result = _replace(result, path, copy_json(op["value"]), pointer)
            elif name == "test":
                actual = _resolve(result, path, pointer)
                if not json_equal(actual, op["value"]):
                    # Values stay out of the message: they may be a Secret's data.
                    raise PatchError(422, f"test failed at {pointer!r}: the value differs")
            else:  # move, copy
                source = _parse_pointer(op["from"], "from")
                value = _resolve(result, source, op["from"])
                if name == "copy":
                    # Copies are the one way a small patch grows a document without bound.
                    copied_bytes += len(json.dumps(value))
                    if copied_bytes > MAX_COPIED_BYTES:
                        raise PatchError(
                            422, f"copies add over {MAX_COPIED_BYTES} bytes to the object"
                        )
                    result = _add(result, path, copy_json(value), pointer)
                elif path != source:
                    if path[: len(source)] == source:
                        raise PatchError(
                            422, f"cannot move {op['from']!r} into its own child {pointer!r}"
                        )
                    _remove(result, source, op["from"])
                    result = _add(result, path, value, pointer)
        except PatchError as e:
            raise PatchError(e.code, f"operation {i} ({name}): {e.message}") from None
    return result


# --- JSON merge patch (RFC 7386) ------------------------------------------------------------


def _merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy_json(patch)
    result = target if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


def apply_merge_patch(doc: Any, patch: Any) -> Any:
    """Apply an RFC 7386 merge patch: objects merge, null deletes, anything else replaces."""
    return _merge(copy_json(doc), patch)


# --- strategic merge patch and apply (see strategic.py) -------------------------------------


def apply_strategic_merge_patch(doc: Any, patch: Any, kind: str) -> Any:
    """Kubernetes strategic merge patch for a built-in ``kind``; see ``strategic.py``."""
    # Imported here: strategic.py imports PatchError from this module.
    from .strategic import strategic_merge_patch

    return strategic_merge_patch(doc, patch, kind)


def apply_server_side_apply(
    existing: dict[str, Any] | None, applied: dict[str, Any], kind: str, builtin: bool
) -> dict[str, Any]:
    """Our documented simplification of server-side apply (``application/apply-patch+yaml``).

    - ``existing is None``: the object is created from ``applied`` (nulls dropped).
    - Otherwise ``applied`` is deep-merged into ``existing``: maps merge recursively;
      lists with a known merge key merge item by item (by that key, or by value for
      set-like lists such as ``metadata.finalizers``); every other list is replaced.
      Merge keys are known for built-in kinds (``builtin=True``) and, for every kind,
      for ``metadata`` (finalizers, ownerReferences), whose schema is the same everywhere.
    - A null in ``applied`` does not delete anything; it is ignored.

    Limits, on purpose: there is no ``managedFields`` ownership tracking, so there are
    never conflicts (``force`` changes nothing) and a field removed from the applied
    configuration is NOT removed from the object (real apply would remove it when this
    manager was its only owner). Use a merge patch or an update to delete fields.
    """
    from .strategic import server_side_apply

    return server_side_apply(existing, applied, kind, builtin)
