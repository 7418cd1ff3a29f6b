"""Label and field selectors: ``?labelSelector=`` / ``?fieldSelector=`` and ``spec.selector``.

The syntax and matching rules are Kubernetes' (``k8s.io/apimachinery/pkg/labels`` and
``.../fields``): requirements are ANDed; ``!=`` and ``notin`` also match objects that
lack the label; field values are compared as strings, a missing field being "".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final


class SelectorError(ValueError):
    """A selector that does not parse or names an unsupported field."""


# --- label keys and values ------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def validate_label_key(key: str) -> None:
    prefix, slash, name = key.rpartition("/")
    if slash and not (prefix and len(prefix) <= 253 and _DNS_SUBDOMAIN.fullmatch(prefix)):
        raise SelectorError(
            f"invalid label key {key!r}: the prefix must be a DNS subdomain "
            "(lowercase alphanumerics, '-' and '.', at most 253 characters)"
        )
    if not (len(name) <= 63 and _NAME.fullmatch(name)):
        raise SelectorError(
            f"invalid label key {key!r}: the name must be 1-63 characters, alphanumerics, "
            "'-', '_' or '.', starting and ending with an alphanumeric"
        )


def validate_label_value(value: str) -> None:
    if value and not (len(value) <= 63 and _NAME.fullmatch(value)):
        raise SelectorError(
            f"invalid label value {value!r}: at most 63 characters, alphanumerics, "
            "'-', '_' or '.', starting and ending with an alphanumeric"
        )


# --- label selectors ------------------------------------------------------------------------

# Operators, written as in the selector syntax; "exists" / "!" have no value.
EQUALS, NOT_EQUALS, IN, NOT_IN = "=", "!=", "in", "notin"
EXISTS, DOES_NOT_EXIST, GREATER, LESS = "exists", "!", "gt", "lt"
_EXPRESSION_OPS: Final = {
    "In": IN,
    "NotIn": NOT_IN,
    "Exists": EXISTS,
    "DoesNotExist": DOES_NOT_EXIST,
}


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op in (EQUALS, IN):
            return present and labels[self.key] in self.values
        if self.op in (NOT_EQUALS, NOT_IN):
            return not present or labels[self.key] not in self.values
        if self.op == EXISTS:
            return present
        if self.op == DOES_NOT_EXIST:
            return not present
        # gt / lt: the label must hold an integer (Kubernetes' node affinity operators).
        if not present:
            return False
        try:
            actual = int(labels[self.key])
        except ValueError:
            return False
        bound = int(self.values[0])
        return actual > bound if self.op == GREATER else actual < bound

    def __str__(self) -> str:
        if self.op == EXISTS:
            return self.key
        if self.op == DOES_NOT_EXIST:
            return f"!{self.key}"
        if self.op in (IN, NOT_IN):
            return f"{self.key} {self.op} ({','.join(self.values)})"
        symbol = {GREATER: ">", LESS: "<"}.get(self.op, self.op)
        return f"{self.key}{symbol}{self.values[0]}"


def _requirement(key: str, op: str, values: Collection[str]) -> Requirement:
    validate_label_key(key)
    if op in (IN, NOT_IN) and not values:
        raise SelectorError(f"{key}: for 'in' and 'notin' the set of values can't be empty")
    if op in (EXISTS, DOES_NOT_EXIST) and values:
        raise SelectorError(f"{key}: 'exists' and 'does not exist' take no values")
    if op in (GREATER, LESS):
        if len(values) != 1 or not re.fullmatch(r"-?[0-9]+", next(iter(values))):
            raise SelectorError(f"{key}: '>' and '<' need a single integer value")
    else:
        for value in values:
            validate_label_value(value)
    # Sorted: a stable string form, and duplicates in "in (a,a)" collapse.
    return Requirement(key, op, tuple(sorted(set(values))))


# Tokens: the operator symbols, or a run of anything else but whitespace.
_TOKEN = re.compile(r"\s*(!=|==|=|!|\(|\)|,|>|<|[^\s!=(),<>]+)")
_SYMBOLS = frozenset({"!=", "==", "=", "!", "(", ")", ",", ">", "<"})


class _Tokens:
    def __init__(self, text: str) -> None:
        self.text = text
        self.items: list[str] = _TOKEN.findall(text)  # every non-space character is a token
        self.pos = 0

    def peek(self) -> str | None:
        return self.items[self.pos] if self.pos < len(self.items) else None

    def next(self, expected: str) -> str:
        token = self.peek()
        if token is None:
            raise SelectorError(f"label selector {self.text!r}: expected {expected}, found the end")
        self.pos += 1
        return token

    def identifier(self, expected: str) -> str:
        token = self.next(expected)
        if token in _SYMBOLS:
            raise SelectorError(
                f"label selector {self.text!r}: expected {expected}, found {token!r}"
            )
        return token

    def fail(self, token: str, expected: str) -> SelectorError:
        return SelectorError(f"label selector {self.text!r}: found {token!r}, expected {expected}")


def _parse_requirement(tokens: _Tokens) -> Requirement:
    first = tokens.next("a label key or '!'")
    if first == "!":
        return _requirement(tokens.identifier("a label key after '!'"), DOES_NOT_EXIST, ())
    if first in _SYMBOLS:
        raise tokens.fail(first, "a label key or '!'")
    op = tokens.peek()
    if op is None or op == ",":
        return _requirement(first, EXISTS, ())
    tokens.pos += 1
    if op in ("=", "==", "!=", ">", "<"):
        # "a=" (then the end or ',') selects the empty value.
        ended = tokens.peek() in (None, ",")
        value = "" if ended else tokens.identifier("a label value")
        kind = {"=": EQUALS, "==": EQUALS, "!=": NOT_EQUALS, ">": GREATER, "<": LESS}[op]
        return _requirement(first, kind, (value,))
    if op in (IN, NOT_IN):
        if (token := tokens.next("'('")) != "(":
            raise tokens.fail(token, "'('")
        values: list[str] = []
        expect_value = True
        while (token := tokens.next("a value or ')'")) != ")":
            if token == ",":
                if expect_value:
                    values.append("")  # "(a,,b)": an empty value, as Kubernetes reads it
                expect_value = True
            elif expect_value and token not in _SYMBOLS:
                values.append(token)
                expect_value = False
            else:
                raise tokens.fail(token, "',' or ')'")
        if expect_value:
            values.append("")  # "(a,)" and "()" hold the empty value too
        return _requirement(first, op, values)
    raise tokens.fail(op, "'=', '==', '!=', 'in', 'notin', '>' or '<'")


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """ANDed label requirements; no requirement selects everything."""

    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def parse(cls, text: str) -> LabelSelector:
        tokens = _Tokens(text)
        requirements = []
        while tokens.peek() is not None:
            requirements.append(_parse_requirement(tokens))
            token = tokens.peek()
            if token is not None:
                if token != ",":
                    raise tokens.fail(token, "',' or the end")
                tokens.pos += 1
                if tokens.peek() is None:
                    raise SelectorError(f"label selector {text!r}: ends with ','")
        return cls(tuple(sorted(requirements, key=lambda r: r.key)))

    @classmethod
    def from_dict(cls, selector: Mapping[str, Any] | None) -> LabelSelector:
        """A ``metav1.LabelSelector``; None or ``{}`` select everything."""
        if not selector:
            return cls()
        if not isinstance(selector, Mapping):
            raise SelectorError(f"a label selector must be an object, got {selector!r}")
        requirements = []
        match_labels = selector.get("matchLabels") or {}
        if not isinstance(match_labels, Mapping):
            raise SelectorError("matchLabels must be a map of strings")
        for key, value in match_labels.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise SelectorError(f"matchLabels: {key!r}: {value!r} must map string to string")
            requirements.append(_requirement(key, EQUALS, (value,)))
        expressions = selector.get("matchExpressions") or []
        if not isinstance(expressions, list):
            raise SelectorError("matchExpressions must be a list")
        for i, expression in enumerate(expressions):
            if not isinstance(expression, Mapping):
                raise SelectorError(f"matchExpressions[{i}] must be an object")
            key, operator = expression.get("key"), expression.get("operator")
            values = expression.get("values") or []
            if not isinstance(key, str):
                raise SelectorError(f"matchExpressions[{i}].key must be a string")
            if not isinstance(operator, str) or operator not in _EXPRESSION_OPS:
                raise SelectorError(
                    f"matchExpressions[{i}].operator: {operator!r} is not a valid label "
                    f"selector operator ({', '.join(_EXPRESSION_OPS)})"
                )
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise SelectorError(f"matchExpressions[{i}].values must be a list of strings")
            requirements.append(_requirement(key, _EXPRESSION_OPS[operator], values))
        return cls(tuple(sorted(requirements, key=lambda r: r.key)))

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def __iter__(self) -> Iterator[Requirement]:
        return iter(self.requirements)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


# --- field selectors ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldRequirement:
    field: str
    op: str  # EQUALS or NOT_EQUALS
    value: str

    def matches(self, fields: Mapping[str, str]) -> bool:
        return (fields.get(self.field, "") == self.value) == (self.op == EQUALS)


def _split_unescaped(text: str, separators: tuple[str, ...]) -> Iterator[tuple[int, str]]:
    """Positions of ``separators`` outside backslash escapes, longest match first."""
    i = 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        for sep in separators:
            if text.startswith(sep, i):
                yield i, sep
                i += len(sep) - 1
                break
        i += 1


def _unescape(value: str, term: str) -> str:
    out, i = [], 0
    while i < len(value):
        if value[i] == "\\":
            if i + 1 >= len(value) or value[i + 1] not in "\\,=":
                raise SelectorError(f"field selector term {term!r}: invalid escape in {value!r}")
            i += 1
        elif value[i] in ",=":
            raise SelectorError(f"field selector term {term!r}: {value[i]!r} must be escaped")
        out.append(value[i])
        i += 1
    return "".join(out)


@dataclass(frozen=True, slots=True)
class FieldSelector:
    """ANDed ``field=value`` / ``field!=value`` requirements over a kind's selectable fields."""

    requirements: tuple[FieldRequirement, ...] = ()

    @classmethod
    def parse(cls, text: str, allowed: Collection[str]) -> FieldSelector:
        terms, start = [], 0
        for pos, _ in _split_unescaped(text, (",",)):
            terms.append(text[start:pos])
            start = pos + 1
        terms.append(text[start:])
        requirements = []
        for term in terms:
            if not term.strip():
                continue
            found = next(_split_unescaped(term, ("!=", "==", "=")), None)
            if found is None:
                raise SelectorError(f"invalid field selector {text!r}: can't understand {term!r}")
            pos, op = found
            field = term[:pos].strip()
            if field not in allowed:
                raise SelectorError(f"field label not supported: {field}")
            value = _unescape(term[pos + len(op) :], term)
            requirements.append(
                FieldRequirement(field, NOT_EQUALS if op == "!=" else EQUALS, value)
            )
        return cls(tuple(requirements))

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, fields: Mapping[str, str]) -> bool:
        return all(r.matches(fields) for r in self.requirements)

    def exact(self, field: str) -> str | None:
        """The value an ``=`` requirement pins ``field`` to, if any (to narrow a list)."""
        return next(
            (r.value for r in self.requirements if r.field == field and r.op == EQUALS), None
        )

    def __str__(self) -> str:
        def escape(v: str) -> str:
            return v.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")

        return ",".join(f"{r.field}{r.op}{escape(r.value)}" for r in self.requirements)


# --- selectable fields per kind -------------------------------------------------------------


def _get(obj: Mapping[str, Any], path: str) -> str:
    """The field at dotted ``path`` as Kubernetes prints it in a field set; missing is ""."""
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def default_fields(obj: Mapping[str, Any]) -> dict[str, str]:
    """``metadata.name`` and ``metadata.namespace``: what every kind can select on."""
    return {
        "metadata.name": _get(obj, "metadata.name"),
        "metadata.namespace": _get(obj, "metadata.namespace"),
    }


def _with(
    *paths: str, booleans: tuple[str, ...] = ()
) -> Callable[[Mapping[str, Any]], dict[str, str]]:
    def fields(obj: Mapping[str, Any]) -> dict[str, str]:
        out = {**default_fields(obj), **{p: _get(obj, p) for p in (*paths, *booleans)}}
        for p in booleans:
            out[p] = out[p] or "false"  # Go bools: absent is false
        return out

    return fields


pod_fields = _with(
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
    booleans=("spec.hostNetwork",),
)
_event_fields = _with(
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "type",
)


def event_fields(obj: Mapping[str, Any]) -> dict[str, str]:
    # "source" is the reporting component, as in Kubernetes' event field set.
    return {**_event_fields(obj), "source": _get(obj, "source.component")}


secret_fields = _with("type")
node_fields = _with(booleans=("spec.unschedulable",))
namespace_fields = _with("status.phase")


FieldsOf = Callable[[Mapping[str, Any]], dict[str, str]]


@dataclass(frozen=True, slots=True)
class SelectableFields:
    """A kind's selectable fields: call it on an object for its field set;
    ``allowed`` names the field labels (what ``FieldSelector.parse`` accepts)."""

    extract: FieldsOf

    @property
    def allowed(self) -> frozenset[str]:
        # Extractors fill every field, "" when missing: an empty object names them all.
        return frozenset(self.extract({}))

    def __call__(self, obj: Mapping[str, Any]) -> dict[str, str]:
        return self.extract(obj)


# Kinds with more than the default fields.
FIELDS_BY_KIND: Final[Mapping[str, SelectableFields]] = {
    "Pod": SelectableFields(pod_fields),
    "Event": SelectableFields(event_fields),
    "Secret": SelectableFields(secret_fields),
    "Node": SelectableFields(node_fields),
    "Namespace": SelectableFields(namespace_fields),
}
_DEFAULT = SelectableFields(default_fields)


def fields_for(kind: str) -> SelectableFields:
    return FIELDS_BY_KIND.get(kind, _DEFAULT)


def supported_fields(kind: str) -> frozenset[str]:
    return fields_for(kind).allowed
