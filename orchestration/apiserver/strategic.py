"""Strategic merge patch (SMP) for built-in kinds, and our simplified server-side apply.

SMP is a JSON merge patch in which some lists merge item by item instead of being
replaced: the "merge key" of each such list comes from the Go struct tags of the
Kubernetes types (``patchStrategy:"merge" patchMergeKey:"name"``). ``MERGE_KEYS``
carries the ones we serve, by kind and dotted field path (list items add no segment,
so ``spec.containers.env`` is the env list of every container).

Behaviour follows apimachinery's ``strategicpatch.StrategicMergeMapPatch``, including
its ordering rules: items of a merged list that the patch names come in the patch's
order (or ``$setElementOrder``'s), interleaved with the object's other items by their
live order; an item that is new to the list therefore lands *before* the live items
(``kubectl patch`` adding a container puts it first, as on a real cluster).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any, Final

from .patching import PatchError, copy_json

# Merge "key" of a list of scalars merged as a set (``metadata.finalizers``).
BY_VALUE: Final = ""

_CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")
_CONTAINER_KEYS = {
    "env": "name",
    "ports": "containerPort",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
}
_POD_SPEC_KEYS = {
    **dict.fromkeys(_CONTAINER_LISTS, "name"),
    **{f"{c}.{f}": key for c in _CONTAINER_LISTS for f, key in _CONTAINER_KEYS.items()},
    "volumes": "name",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
    "schedulingGates": "name",
}
_OBJECT_META_KEYS = {"finalizers": BY_VALUE, "ownerReferences": "uid"}
_CONDITIONS = {"status.conditions": "type"}


def _under(prefix: str, keys: Mapping[str, str]) -> dict[str, str]:
    return {f"{prefix}.{path}": key for path, key in keys.items()}


def _pod_template(prefix: str) -> dict[str, str]:
    return {
        **_under(f"{prefix}.metadata", _OBJECT_META_KEYS),
        **_under(f"{prefix}.spec", _POD_SPEC_KEYS),
    }


# Every object's metadata: the same ObjectMeta schema for all kinds.
COMMON_MERGE_KEYS: Final[Mapping[str, str]] = _under("metadata", _OBJECT_META_KEYS)

MERGE_KEYS: Final[Mapping[str, Mapping[str, str]]] = {
    "Pod": {
        **_under("spec", _POD_SPEC_KEYS),
        **_CONDITIONS,
        "status.podIPs": "ip",
        "status.hostIPs": "ip",
    },
    "PodTemplate": _pod_template("template"),
    **{
        kind: {**_pod_template("spec.template"), **_CONDITIONS}
        for kind in (
            "Deployment",
            "ReplicaSet",
            "StatefulSet",
            "DaemonSet",
            "ReplicationController",
            "Job",
        )
    },
    "CronJob": _pod_template("spec.jobTemplate.spec.template"),
    "Service": {"spec.ports": "port"},
    "Node": {"spec.podCIDRs": BY_VALUE, "status.addresses": "type", **_CONDITIONS},
    "Namespace": dict(_CONDITIONS),
    "ServiceAccount": {"secrets": "name"},
}


def merge_key(kind: str, path: str) -> str | None:
    """Merge key of the list at dotted ``path`` of ``kind``: a field name, ``BY_VALUE``
    for a set-like list of scalars, or None for a list that is replaced as a whole."""
    key = COMMON_MERGE_KEYS.get(path)
    return key if key is not None else MERGE_KEYS.get(kind, {}).get(path)


_MISSING: Final = object()
_PATCH = "$patch"
_RETAIN_KEYS = "$retainKeys"
_SET_ORDER = "$setElementOrder"
_DELETE_FROM = "$deleteFromPrimitiveList"

KeyOf = Callable[[Any], Hashable]


def _join(base: str, field: str) -> str:
    return f"{base}.{field}" if base else field


def _loc(where: str) -> str:
    return where or "patch root"


def _key(value: Any) -> Hashable:
    """A hashable identity for a scalar that compares as JSON does (true != 1)."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", value)
    if isinstance(value, str):
        return ("string", value)
    if value is None:
        return ("null",)
    return ("other", repr(value))


def _key_of(rule: str) -> KeyOf:
    if rule == BY_VALUE:
        return _key
    # Items without the key never match anything (the live object may hold odd data).
    return lambda x: _key(x[rule]) if isinstance(x, dict) and rule in x else ("none", id(x))


def _element_kind(items: list[Any], where: str, code: int) -> str | None:
    kinds = set()
    for item in items:
        if isinstance(item, list):
            raise PatchError(code, f"{where}: lists of lists cannot be merged")
        kinds.add("object" if isinstance(item, dict) else "scalar")
    if len(kinds) > 1:
        raise PatchError(code, f"{where}: the list mixes objects and scalar values")
    return kinds.pop() if kinds else None


def _normalize(
    merged: list[Any], order: list[Hashable], live: list[Hashable], key_of: KeyOf
) -> list[Any]:
    """apimachinery's ordering: items named in ``order`` follow it; the others keep their
    ``live`` order; the two runs interleave, a live item going first only when both
    items are live and it comes first there."""
    rank: dict[Hashable, int] = {}
    for i, k in enumerate(order):
        rank.setdefault(k, i)
    live_rank: dict[Hashable, int] = {}
    for i, k in enumerate(live):
        live_rank.setdefault(k, i)
    named = sorted((x for x in merged if key_of(x) in rank), key=lambda x: rank[key_of(x)])
    others = sorted(
        (x for x in merged if key_of(x) not in rank),
        key=lambda x: live_rank.get(key_of(x), len(live_rank)),
    )
    out: list[Any] = []
    i = j = 0
    while i < len(others) and j < len(named):
        left, right = live_rank.get(key_of(others[i])), live_rank.get(key_of(named[j]))
        if left is not None and right is not None and left < right:
            out.append(others[i])
            i += 1
        else:
            out.append(named[j])
            j += 1
    return out + others[i:] + named[j:]


class _StrategicMerge:
    """One patch application; ``original`` arguments are private copies, free to mutate."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def merge_map(
        self, original: dict[str, Any], patch: dict[str, Any], path: str, where: str
    ) -> dict[str, Any]:
        directive = patch.get(_PATCH, "merge")
        if directive == "replace":
            return self.merge_map({}, {k: v for k, v in patch.items() if k != _PATCH}, path, where)
        if directive == "delete":
            return {}  # apimachinery leaves an empty map, not a missing key
        if directive != "merge":
            raise PatchError(400, f"{_loc(where)}: unknown $patch directive {directive!r}")
        if _RETAIN_KEYS in patch:
            original = self._retain(original, patch, where)
        orders: dict[str, Any] = {}
        deletions: dict[str, Any] = {}
        for key, value in patch.items():
            if key.startswith(_SET_ORDER):
                orders[self._directive_field(key, _SET_ORDER, where)] = value
            elif key.startswith(_DELETE_FROM):
                deletions[self._directive_field(key, _DELETE_FROM, where)] = value
        ordered = set()
        for field, order in orders.items():
            # A null deletes the list instead (below).
            if patch.get(field, _MISSING) is not None and self._ordered_list(
                original, patch, field, order, path, where
            ):
                ordered.add(field)
        for key, value in patch.items():
            if (
                key in (_PATCH, _RETAIN_KEYS)
                or key in ordered
                or key.startswith((_SET_ORDER, _DELETE_FROM))
            ):
                continue
            if value is None:
                original.pop(key, None)
            else:
                original[key] = self.merge_value(
                    original.get(key, _MISSING), value, _join(path, key), _join(where, key)
                )
        for field, values in deletions.items():
            self._delete_from_list(original, field, values, where)
        return original

    def merge_value(self, current: Any, value: Any, path: str, where: str) -> Any:
        if isinstance(value, dict):
            return self.merge_map(current if isinstance(current, dict) else {}, value, path, where)
        if isinstance(value, list):
            rule = merge_key(self.kind, path)
            if rule is None:
                return copy_json(value)
            return self.merge_list(
                current if isinstance(current, list) else [], value, rule, path, where
            )[0]
        return value

    def merge_list(
        self, original: list[Any], patch: list[Any], rule: str, path: str, where: str
    ) -> tuple[list[Any], list[Hashable]]:
        """Merge two lists; also returns the "live order" that ``$setElementOrder`` sorts
        against: the merged list before ordering, cut to the live list's length."""
        patch_kind = _element_kind(patch, where, 400)
        live_kind = _element_kind(original, where, 422)
        if patch_kind and live_kind and patch_kind != live_kind:
            raise PatchError(
                422, f"{where}: the patch has {patch_kind}s where the object has {live_kind}s"
            )
        if (patch_kind or live_kind) != "object":
            merged, seen = [], set()
            for x in [*original, *patch]:
                if _key(x) not in seen:  # a set: duplicates collapse
                    seen.add(_key(x))
                    merged.append(x)
            live = [_key(x) for x in original]
            return _normalize(merged, [_key(x) for x in patch], live, _key), live
        if rule == BY_VALUE:
            raise PatchError(
                400, f"{where}: a list of objects without a merge key cannot be merged"
            )
        return self._merge_objects(original, patch, rule, path, where)

    def _merge_objects(
        self, original: list[Any], patch: list[Any], rule: str, path: str, where: str
    ) -> tuple[list[Any], list[Hashable]]:
        key_of = _key_of(rule)
        survivors, plain, replace = list(original), [], False
        for i, item in enumerate(patch):
            directive = item.get(_PATCH, "merge")
            if directive == "replace":
                replace = True  # anywhere in the list: the list becomes the other items
            elif directive == "delete":
                if rule not in item:
                    raise PatchError(
                        400, f"{where}[{i}]: does not contain declared merge key {rule!r}"
                    )
                survivors = [x for x in survivors if key_of(x) != key_of(item)]
            elif directive == "merge":
                plain.append((i, item))
            else:
                raise PatchError(400, f"{where}[{i}]: unknown $patch directive {directive!r}")
        if replace:
            items = [self.merge_map({}, item, path, f"{where}[{i}]") for i, item in plain]
            return items, [key_of(x) for x in original]
        merged = list(survivors)
        position: dict[Hashable, int] = {}
        for pos, x in enumerate(merged):
            position.setdefault(key_of(x), pos)
        for i, item in plain:
            if rule not in item:
                raise PatchError(400, f"{where}[{i}]: does not contain declared merge key {rule!r}")
            k, item_where = key_of(item), f"{where}[{rule}={item[rule]}]"
            if k in position:
                merged[position[k]] = self.merge_map(merged[position[k]], item, path, item_where)
            else:
                position[k] = len(merged)
                merged.append(self.merge_map({}, item, path, item_where))
        order = [key_of(item) for _, item in plain]
        result = _normalize(merged, order, [key_of(x) for x in survivors], key_of)
        return result, [key_of(x) for x in merged[: len(original)]]

    def _ordered_list(
        self,
        original: dict[str, Any],
        patch: dict[str, Any],
        field: str,
        order: Any,
        path: str,
        where: str,
    ) -> bool:
        """Merge ``field`` and sort it by ``$setElementOrder/field``; False if not done."""
        path, where = _join(path, field), _join(where, field)
        if not isinstance(order, list):
            raise PatchError(400, f"{_loc(where)}: $setElementOrder must be a list")
        rule = merge_key(self.kind, path)
        if rule is None:  # not in our table: the directive tells which kind of list it is
            rule = _infer_rule(order)
            if rule is None:
                return False
        key_of = _key_of(rule)
        for i, item in enumerate(order):
            if rule != BY_VALUE and not (isinstance(item, dict) and rule in item):
                raise PatchError(400, f"{where}: $setElementOrder[{i}] lacks merge key {rule!r}")
        order_keys = [key_of(x) for x in order]
        current, given = original.get(field), patch.get(field, _MISSING)
        if given is not _MISSING:
            if not isinstance(given, list):
                raise PatchError(400, f"{where}: must be a list when $setElementOrder is given")
            _check_order(given, order_keys, rule, where)
        if not isinstance(current, list):
            if given is _MISSING:
                return True  # nothing to order
            merged, live = self.merge_list([], given, rule, path, where)[0], []
        elif given is _MISSING:
            merged, live = current, [key_of(x) for x in current]
        else:
            merged, live = self.merge_list(current, given, rule, path, where)
        original[field] = _normalize(merged, order_keys, live, key_of)
        return True

    def _retain(
        self, original: dict[str, Any], patch: dict[str, Any], where: str
    ) -> dict[str, Any]:
        keep = patch[_RETAIN_KEYS]
        if not isinstance(keep, list) or not all(isinstance(k, str) for k in keep):
            raise PatchError(400, f"{_loc(where)}: $retainKeys must be a list of field names")
        for key, value in patch.items():
            directive = key in (_PATCH, _RETAIN_KEYS) or key.startswith((_SET_ORDER, _DELETE_FROM))
            if value is not None and not directive and key not in keep:
                raise PatchError(
                    400, f"{_loc(where)}: field {key!r} is patched but not in $retainKeys"
                )
        return {k: v for k, v in original.items() if k in keep}

    @staticmethod
    def _directive_field(key: str, prefix: str, where: str) -> str:
        if not key.startswith(prefix + "/") or len(key) == len(prefix) + 1:
            raise PatchError(400, f"{_loc(where)}: {key!r} must look like {prefix}/<field>")
        return key[len(prefix) + 1 :]

    @staticmethod
    def _delete_from_list(original: dict[str, Any], field: str, values: Any, where: str) -> None:
        if not isinstance(values, list) or any(isinstance(v, dict | list) for v in values):
            raise PatchError(
                400, f"{_loc(where)}: {_DELETE_FROM}/{field} must be a list of scalars"
            )
        current = original.get(field)
        if current is None:
            return
        if not isinstance(current, list):
            raise PatchError(
                422, f"{_join(where, field)}: not a list, cannot delete values from it"
            )
        drop = {_key(v) for v in values}
        original[field] = [x for x in current if isinstance(x, dict | list) or _key(x) not in drop]


def _infer_rule(order: list[Any]) -> str | None:
    """kubectl sends ``[{key: value}, ...]`` (or scalars) for merge lists only."""
    if order and all(isinstance(x, dict) and len(x) == 1 for x in order):
        keys = {next(iter(x)) for x in order}
        return keys.pop() if len(keys) == 1 else None
    if order and not any(isinstance(x, dict | list) for x in order):
        return BY_VALUE
    return None


def _check_order(given: list[Any], order: list[Hashable], rule: str, where: str) -> None:
    """The patch list's items must appear in ``$setElementOrder``, in the same order."""
    if not order:
        return  # apimachinery checks nothing against an empty order
    pos = 0
    for item in given:
        if isinstance(item, dict) and (_PATCH in item or rule not in item):
            continue  # directives, or a missing merge key that merging reports
        k = _key_of(rule)(item)
        while pos < len(order) and order[pos] != k:
            pos += 1
        if pos == len(order):
            raise PatchError(
                400, f"{where}: the order of the patch list doesn't match $setElementOrder"
            )
        pos += 1


def strategic_merge_patch(doc: Any, patch: Any, kind: str) -> Any:
    """Apply a strategic merge patch to a ``kind`` object (see the module docstring)."""
    if not isinstance(patch, dict):
        raise PatchError(400, "a strategic merge patch must be a JSON object")
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise PatchError(422, "a strategic merge patch applies to an object only")
    return _StrategicMerge(kind).merge_map(copy_json(doc), patch, "", "")


# --- simplified server-side apply -----------------------------------------------------------


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _apply_map(
    current: dict[str, Any], applied: dict[str, Any], kind: str, path: str
) -> dict[str, Any]:
    for key, value in applied.items():
        if value is None:
            continue  # apply never deletes
        field, live = _join(path, key), current.get(key)
        if isinstance(value, dict) and isinstance(live, dict):
            current[key] = _apply_map(live, value, kind, field)
        elif (
            isinstance(value, list)
            and isinstance(live, list)
            and (rule := merge_key(kind, field)) is not None
        ):
            current[key] = _apply_list(live, value, rule, kind, field)
        else:
            current[key] = _without_nulls(value)
    return current


def _apply_list(live: list[Any], applied: list[Any], rule: str, kind: str, path: str) -> list[Any]:
    if rule == BY_VALUE:
        if any(isinstance(x, dict | list) for x in [*live, *applied]):
            return [_without_nulls(x) for x in applied]
        out, seen = list(live), {_key(x) for x in live}
        for x in applied:
            if _key(x) not in seen:
                seen.add(_key(x))
                out.append(x)
        return out
    if not all(isinstance(x, dict) and x.get(rule) is not None for x in applied):
        return [_without_nulls(x) for x in applied]  # unmatchable items: replace the list
    key_of = _key_of(rule)
    out = list(live)
    for item in applied:
        pos = next((i for i, x in enumerate(out) if key_of(x) == key_of(item)), None)
        if pos is None:
            out.append(_without_nulls(item))
        else:
            out[pos] = _apply_map(out[pos], item, kind, path)
    return out


def server_side_apply(
    existing: dict[str, Any] | None, applied: dict[str, Any], kind: str, builtin: bool
) -> dict[str, Any]:
    """See ``patching.apply_server_side_apply`` for the rules and their limits."""
    if not isinstance(applied, dict):
        raise PatchError(400, "an apply patch must be an object")
    if existing is None:
        return {k: _without_nulls(v) for k, v in applied.items() if v is not None}
    # Custom kinds: only metadata's merge keys are known (kind "" has no table).
    return _apply_map(copy_json(existing), applied, kind if builtin else "", "")
