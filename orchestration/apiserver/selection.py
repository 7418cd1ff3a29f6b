"""Label and field selectors from a request, as one predicate over decoded objects."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..apis import ResourceType
from . import errors
from .selectors import FieldSelector, LabelSelector, SelectorError, fields_for

Matcher = Callable[[dict[str, Any]], bool]


def build_matcher(rt: ResourceType, label_selector: str, field_selector: str) -> Matcher | None:
    """None when nothing is selected (the fast path: no per-object work)."""
    try:
        labels = LabelSelector.parse(label_selector) if label_selector.strip() else None
        fields_of = fields_for(rt.kind)
        fields = (
            FieldSelector.parse(field_selector, fields_of.allowed)
            if field_selector.strip()
            else None
        )
    except SelectorError as exc:
        raise errors.bad_request(f"unable to parse requirement: {exc}") from None
    if labels is None and fields is None:
        return None

    def matches(obj: dict[str, Any]) -> bool:
        if labels is not None and not labels.matches(obj.get("metadata", {}).get("labels") or {}):
            return False
        return fields is None or fields.matches(fields_of(obj))

    return matches
