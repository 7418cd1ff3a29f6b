"""Field errors as kube-apiserver prints them, and Go's formatting of the values they quote.

Users and tools compare these messages with what a real cluster says, so the value formatting
follows Go's ``%q`` and ``%v`` rather than Python's ``repr``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

__all__ = [
    "DUPLICATE",
    "FORBIDDEN",
    "INVALID",
    "JSON_TYPES",
    "NOT_SUPPORTED",
    "REQUIRED",
    "TOO_LONG",
    "TOO_MANY",
    "TYPE_INVALID",
    "FieldError",
    "go_float",
    "go_quote",
    "go_value",
    "json_type",
]

REQUIRED = "FieldValueRequired"
INVALID = "FieldValueInvalid"
TYPE_INVALID = "FieldValueTypeInvalid"
NOT_SUPPORTED = "FieldValueNotSupported"
TOO_LONG = "FieldValueTooLong"
TOO_MANY = "FieldValueTooMany"
DUPLICATE = "FieldValueDuplicate"
FORBIDDEN = "FieldValueForbidden"

_LABELS = {
    REQUIRED: "Required value",
    INVALID: "Invalid value",
    TYPE_INVALID: "Invalid value",
    NOT_SUPPORTED: "Unsupported value",
    TOO_LONG: "Too long",
    TOO_MANY: "Too many",
    DUPLICATE: "Duplicate value",
    FORBIDDEN: "Forbidden",
}
# Like k8s.io/apimachinery's field.Error: these never print the offending value.
_VALUELESS = frozenset({REQUIRED, FORBIDDEN, TOO_LONG})


@dataclass(frozen=True, slots=True)
class FieldError:
    """One field error, printed like ``field.Error`` (``spec.x: Invalid value: 1: detail``)."""

    path: str
    type: str
    message: str = ""  # the detail after the value
    value: Any = ""

    @property
    def body(self) -> str:
        """The text after ``path: `` (what a Status cause carries as its message)."""
        text = _LABELS.get(self.type, self.type)
        if self.type not in _VALUELESS:
            text = f"{text}: {go_value(self.value)}"
        return f"{text}: {self.message}" if self.message else text

    @property
    def detail(self) -> str:
        """Alias of ``body``: the whole text after the path, value included."""
        return self.body

    def as_cause(self) -> dict[str, str]:
        """The ``details.causes[]`` entry of a 422 Status."""
        return {"reason": self.type, "message": self.body, "field": self.path}

    def __str__(self) -> str:
        return f"{self.path}: {self.body}" if self.path else self.body


def go_quote(s: str) -> str:
    """Go's ``%q`` for a string (strconv.Quote)."""
    if s.isprintable() and '"' not in s and "\\" not in s:
        return f'"{s}"'
    out = ['"']
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        elif ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        else:
            code = ord(ch)
            out.append(
                f"\\x{code:02x}"
                if code < 0x80
                else f"\\u{code:04x}"
                if code < 0x10000
                else f"\\U{code:08x}"
            )
    out.append('"')
    return "".join(out)


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_GO_ESCAPES["\v"] = "\\v"


def go_float(f: float) -> str:
    """Go's ``%v`` for a float64: shortest digits, exponent form outside 1e-4 <= |f| < 1e6."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    sign, digits, exp = Decimal(repr(f)).as_tuple()
    ds = "".join(map(str, digits)).rstrip("0") or "0"
    assert isinstance(exp, int)
    exp += len(digits) - len(ds)  # value == ds * 10**exp
    x = len(ds) - 1 + exp  # exponent of the first digit
    neg = "-" if sign else ""
    if ds == "0":
        return neg + "0"
    if x < -4 or x >= 6:
        mant = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
        return f"{neg}{mant}e{'-' if x < 0 else '+'}{abs(x):02d}"
    if exp >= 0:
        return neg + ds + "0" * exp
    point = len(ds) + exp
    if point > 0:
        return f"{neg}{ds[:point]}.{ds[point:]}"
    return f"{neg}0.{'0' * -point}{ds}"


def go_value(v: Any) -> str:
    """How field.Error prints a bad value: strings quoted, scalars bare, the rest as JSON."""
    if isinstance(v, str):
        return go_quote(v)
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return go_float(v)
    return orjson.dumps(v).decode()


JSON_TYPES: dict[type, str] = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    type(None): "null",
}


def json_type(v: Any) -> str:
    """The JSON type name kube-openapi reports (``integer`` and ``number`` kept apart)."""
    t = JSON_TYPES.get(type(v))
    if t is not None:
        return t
    for cls, name in JSON_TYPES.items():  # subclasses; bool precedes int in the table
        if isinstance(v, cls):
            return name
    return "object"
