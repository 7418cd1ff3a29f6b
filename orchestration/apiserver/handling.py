"""The API's verbs as plain async functions over the store: every transport calls these.

HTTP routes (``http.py``) and the in-process client are thin adapters over ``API``.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextvars
import copy
import secrets
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from ..apis import ResourceType
from ..store import (
    CompactedError,
    FutureRevisionError,
    KeyExistsError,
    KeyNotFoundError,
    KeyValue,
    RevisionMismatchError,
    Store,
)
from . import errors
from .admission import admit, has_spec
from .encryption import AESGCMTransformer
from .errors import APIError
from .namespacing import NamespaceCache
from .patching import (
    PatchError,
    apply_json_patch,
    apply_merge_patch,
    apply_server_side_apply,
    apply_strategic_merge_patch,
)
from .podlogs import LogSource
from .resources import ResourceRegistry
from .storage import Codec, list_prefix, object_key
from .watching import WatchEvent, watch_events

_RETRIES = 8  # server-side retries of a patch that lost a compare-and-swap race
_GENERATE_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # like Kubernetes: no vowels, no look-alikes


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Options:
    """Query options shared by the write verbs."""

    __slots__ = ("dry_run", "field_manager", "field_validation", "force")

    def __init__(
        self,
        *,
        dry_run: bool = False,
        field_validation: str = "",
        field_manager: str = "",
        force: bool = False,
    ) -> None:
        self.dry_run = dry_run
        self.field_validation = field_validation or "Warn"
        self.field_manager = field_manager
        self.force = force


# The warnings of the request being served (unknown fields under fieldValidation=Warn). A
# transport that reports them (HTTP: "Warning: 299" headers) sets a list here; elsewhere
# they are dropped.
WARNINGS: contextvars.ContextVar[builtins.list[str] | None] = contextvars.ContextVar(
    "request_warnings", default=None
)


class API:
    def __init__(
        self,
        store: Store,
        registry: ResourceRegistry | None = None,
        transformer: AESGCMTransformer | None = None,
    ) -> None:
        self.store = store
        self.registry = registry or ResourceRegistry()
        self.codec = Codec(transformer)
        ns_rt = self.registry.lookup("", "v1", "namespaces")
        assert ns_rt is not None
        self._namespace_rt = ns_rt
        self.namespaces = NamespaceCache(store, self.codec, ns_rt)
        self._key_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        # Hooks run after a committed write: (rt, verb, old, new). CRDs use one.
        self.after_write: list[Callable[[ResourceType, str, Any, Any], Any]] = []
        # Hooks validating a write beyond admission: return causes; CRD schemas use one.
        self.validators: list[
            Callable[[ResourceType, dict[str, Any], dict[str, Any] | None, Options], Any]
        ] = []
        # Where pods/log reads come from (the cloud sets one; None: logs are refused).
        self.pod_logs: LogSource | None = None

    # --- reads ---------------------------------------------------------------------------

    async def get(self, rt: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        kv = await self.store.get(object_key(rt, namespace, name))
        if kv is None:
            raise errors.not_found(rt, name)
        return self.codec.decode(rt, kv)

    async def list(
        self,
        rt: ResourceType,
        namespace: str | None,
        *,
        matches: Callable[[dict[str, Any]], bool] | None = None,
        limit: int = 0,
        continue_token: str = "",
    ) -> dict[str, Any]:
        prefix = list_prefix(rt, namespace)
        revision, start_after = 0, ""
        if continue_token:
            revision, start_after = _decode_continue(continue_token, prefix)
        items: list[dict[str, Any]] = []
        page = max(limit, 500) if matches else limit
        next_token = ""
        remaining: int | None = None
        while True:
            try:
                res = await self.store.list(
                    prefix, revision=revision, limit=page, start_after=start_after
                )
            except CompactedError as exc:
                raise errors.expired(
                    "The provided continue parameter is too old to display a consistent list "
                    "result. You can start a new list without the continue parameter."
                ) from exc
            except FutureRevisionError as exc:
                raise errors.APIError(504, str(exc), reason="Timeout") from exc
            revision = res.revision
            for i, kv in enumerate(res.kvs):
                obj = self.codec.decode(rt, kv)
                if matches is not None and not matches(obj):
                    continue
                items.append(obj)
                if limit and len(items) >= limit:
                    if i + 1 < len(res.kvs) or res.more:
                        next_token = _encode_continue(revision, kv.key, prefix)
                        if matches is None:
                            remaining = len(res.kvs) - i - 1 + (res.remaining if res.more else 0)
                    break
            else:
                if res.more and res.kvs:
                    start_after = res.kvs[-1].key
                    continue
            break
        meta: dict[str, Any] = {"resourceVersion": str(revision)}
        if next_token:
            meta["continue"] = next_token
            if remaining:
                meta["remainingItemCount"] = remaining
        return {
            "kind": rt.list_kind,
            "apiVersion": rt.api_version,
            "metadata": meta,
            "items": items,
        }

    async def watch(
        self,
        rt: ResourceType,
        namespace: str | None,
        *,
        resource_version: str = "",
        matches: Callable[[dict[str, Any]], bool] | None = None,
        bookmark_interval: float | None = None,
    ) -> AsyncIterator[WatchEvent]:
        """A watch stream. From "" or "0": the current objects as ADDED, then changes."""
        prefix = list_prefix(rt, namespace)
        initial: list[WatchEvent] = []
        if resource_version in ("", "0"):
            listed = await self.list(rt, namespace, matches=matches)
            after = int(listed["metadata"]["resourceVersion"])
            initial = [WatchEvent("ADDED", o) for o in listed["items"]]
        else:
            try:
                after = int(resource_version)
            except ValueError:
                raise errors.bad_request(
                    f"invalid resourceVersion {resource_version!r}: must be an integer"
                ) from None
            compacted = await self.store.compacted_revision()
            if after < compacted:
                raise errors.expired(f"too old resource version: {after} ({compacted + 1})")
        return watch_events(
            self.store,
            self.codec,
            rt,
            prefix,
            after,
            matches,
            bookmark_interval=bookmark_interval,
            initial=initial,
        )

    # --- writes --------------------------------------------------------------------------

    def _check_identity(self, rt: ResourceType, obj: Any, namespace: str) -> dict[str, Any]:
        if not isinstance(obj, dict):
            raise errors.bad_request(f"the body of a {rt.kind} must be a JSON object")
        api_version = obj.setdefault("apiVersion", rt.api_version)
        kind = obj.setdefault("kind", rt.kind)
        if api_version != rt.api_version:
            raise errors.bad_request(
                f"the API version in the data ({api_version}) does not match the expected API "
                f"version ({rt.api_version})"
            )
        if kind != rt.kind:
            raise errors.bad_request(
                f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})"
            )
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be a JSON object")
        if rt.namespaced:
            body_ns = meta.get("namespace")
            if body_ns and body_ns != namespace:
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent on "
                    "the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        return meta

    async def _check_namespace(self, rt: ResourceType, namespace: str, name: str) -> None:
        if not rt.namespaced:
            return
        state = await self.namespaces.state(namespace)
        if state is None:
            raise errors.not_found(self._namespace_rt, namespace)
        if state:
            raise errors.forbidden(
                f'{rt.plural} "{name}" is forbidden: unable to create new content in '
                f"namespace {namespace} because it is being terminated"
            )

    async def _validate(
        self, rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None, opts: Options
    ) -> builtins.list[str]:
        """Admission plus registered validators; returns warnings (unknown fields pruned)."""
        causes = admit(rt, obj, old)
        warnings: list[str] = []
        for validator in self.validators:
            more_causes, more_warnings = await validator(rt, obj, old, opts)
            causes += more_causes
            warnings += more_warnings
        if causes:
            raise errors.invalid(rt, obj["metadata"].get("name", ""), causes)
        if warnings and (sink := WARNINGS.get()) is not None:
            sink.extend(warnings)
        return warnings

    async def create(
        self, rt: ResourceType, namespace: str, obj: Any, opts: Options | None = None
    ) -> dict[str, Any]:
        opts = opts or Options()
        meta = self._check_identity(rt, obj, namespace)
        body: dict[str, Any] = obj
        if not meta.get("name") and meta.get("generateName"):
            base = str(meta["generateName"])[:58]
            meta["name"] = base + "".join(secrets.choice(_GENERATE_CHARS) for _ in range(5))
        for field in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(field, None)
        meta.pop("managedFields", None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        if has_spec(rt):
            meta["generation"] = 1
        if rt.custom and "status" in rt.subresources:
            obj.pop("status", None)  # status is written through /status only
        # No name yet is for validation to refuse (422), after the namespace check.
        await self._check_namespace(rt, namespace, str(meta.get("name") or ""))
        await self._validate(rt, obj, None, opts)
        key = object_key(rt, namespace, meta["name"])
        if opts.dry_run:
            if await self.store.get(key) is not None:
                raise errors.already_exists(rt, meta["name"])
            return body
        try:
            kv = await self.store.create(key, self.codec.encode(rt, key, obj))
        except KeyExistsError:
            raise errors.already_exists(rt, meta["name"]) from None
        meta["resourceVersion"] = str(kv.mod_revision)
        await self._after(rt, "create", None, obj)
        return body

    async def _after(
        self, rt: ResourceType, verb: str, old: dict[str, Any] | None, new: dict[str, Any] | None
    ) -> None:
        for hook in self.after_write:
            result = hook(rt, verb, old, new)
            if asyncio.iscoroutine(result):
                await result

    async def _current(
        self, rt: ResourceType, namespace: str, name: str
    ) -> tuple[KeyValue, dict[str, Any]]:
        key = object_key(rt, namespace, name)
        kv = await self.store.get(key)
        if kv is None:
            raise errors.not_found(rt, name)
        return kv, self.codec.decode(rt, kv)

    async def update(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        obj: Any,
        opts: Options | None = None,
        *,
        subresource: str = "",
    ) -> dict[str, Any]:
        opts = opts or Options()
        meta = self._check_identity(rt, obj, namespace)
        if meta.get("name", name) != name:
            raise errors.bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL "
                f"({name})"
            )
        meta["name"] = name
        kv, old = await self._current(rt, namespace, name)
        expected = meta.get("resourceVersion") or ""
        if expected and expected != old["metadata"]["resourceVersion"]:
            raise errors.conflict(rt, name)
        return await self._replace(rt, kv, old, obj, opts, subresource)

    async def _replace(
        self,
        rt: ResourceType,
        kv: KeyValue,
        old: dict[str, Any],
        obj: dict[str, Any],
        opts: Options,
        subresource: str,
    ) -> dict[str, Any]:
        """Write ``obj`` over ``old`` (read at ``kv``): keep what clients may not change."""
        name = old["metadata"]["name"]
        given_uid = (obj.get("metadata") or {}).get("uid")
        if given_uid and given_uid != old["metadata"].get("uid"):
            # A body naming another uid was meant for another object (one deleted and
            # re-created under this name): refuse it, as kube-apiserver does.
            raise errors.invalid(
                rt, name, [("metadata.uid", f'Invalid value: "{given_uid}": field is immutable')]
            )
        if subresource == "finalize":
            spec = obj.get("spec")
            finalizers = spec.get("finalizers") if isinstance(spec, dict) else None
            if not isinstance(finalizers, list) or not all(isinstance(f, str) for f in finalizers):
                raise errors.invalid(
                    rt, name, [("spec.finalizers", "Invalid value: must be a list of strings")]
                )
            obj = copy.deepcopy(old)
            obj.setdefault("spec", {})["finalizers"] = finalizers
        elif subresource == "binding":
            # What a binding may change: the node (once) and the PodScheduled condition.
            node = obj["spec"]["nodeName"]
            status = obj.get("status")
            obj = copy.deepcopy(old)
            obj.setdefault("spec", {})["nodeName"] = node
            obj["status"] = status
        elif subresource == "status":
            status = obj.get("status")
            obj = copy.deepcopy(old)
            if status is None:
                obj.pop("status", None)
            else:
                obj["status"] = status
        elif "status" in rt.subresources or rt.plural == "pods":
            if "status" in old:
                obj["status"] = old["status"]
            else:
                obj.pop("status", None)
        meta = obj["metadata"]
        old_meta = old["metadata"]
        for field in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ):
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        meta.pop("managedFields", None)
        if has_spec(rt):
            changed = _spec_of(obj) != _spec_of(old)
            meta["generation"] = old_meta.get("generation", 1) + (1 if changed else 0)
        if subresource not in ("finalize", "binding"):
            await self._validate(rt, obj, old, opts)
        if opts.dry_run:
            return obj
        key = kv.key
        if old_meta.get("deletionTimestamp") and not finalizers_pending(rt, obj):
            # The last finalizer is gone from an object being deleted: finish the delete.
            try:
                await self.store.delete(key, kv.mod_revision)
            except RevisionMismatchError:
                raise errors.conflict(rt, name) from None
            except KeyNotFoundError:
                raise errors.not_found(rt, name) from None
            await self._after(rt, "delete", old, None)
            return obj
        try:
            new_kv = await self.store.update(key, self.codec.encode(rt, key, obj), kv.mod_revision)
        except RevisionMismatchError:
            raise errors.conflict(rt, name) from None
        except KeyNotFoundError:
            raise errors.not_found(rt, name) from None
        meta["resourceVersion"] = str(new_kv.mod_revision)
        await self._after(rt, "update", old, obj)
        return obj

    async def patch(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        apply_patch: Callable[[dict[str, Any] | None], dict[str, Any]],
        opts: Options | None = None,
        *,
        subresource: str = "",
        create_if_missing: bool = False,
    ) -> dict[str, Any]:
        """Read, apply ``apply_patch`` to a copy, write with compare-and-swap; retry on races.

        A patch that names a resourceVersion is a precondition and is not retried.
        """
        # Patches of one object from this process take turns, so they do not race each
        # other into conflicts; the retries are for writers in other processes.
        key = object_key(rt, namespace, name)
        lock = self._key_locks.get(key)
        if lock is None:
            lock = self._key_locks[key] = asyncio.Lock()
        async with lock:
            return await self._patch_locked(
                rt, namespace, name, apply_patch, opts or Options(), subresource, create_if_missing
            )

    async def _patch_locked(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        apply_patch: Callable[[dict[str, Any] | None], dict[str, Any]],
        opts: Options,
        subresource: str,
        create_if_missing: bool,
    ) -> dict[str, Any]:
        for _ in range(_RETRIES):
            key = object_key(rt, namespace, name)
            kv = await self.store.get(key)
            if kv is None:
                if not create_if_missing:
                    raise errors.not_found(rt, name)
                created = apply_patch(None)
                created.setdefault("metadata", {}).setdefault("name", name)
                return await self.create(rt, namespace, created, opts)
            old = self.codec.decode(rt, kv)
            # The patch sees the object without its resourceVersion, so one left in the result
            # came from the patch itself: a precondition, checked once and never retried.
            base = copy.deepcopy(old)
            del base["metadata"]["resourceVersion"]
            new = apply_patch(base)
            if not isinstance(new, dict):
                raise errors.bad_request("the patch must produce a JSON object")
            meta = self._check_identity(rt, new, namespace)
            if meta.get("name", name) != name:
                raise errors.bad_request("the patch may not change metadata.name")
            meta["name"] = name
            precondition = meta.get("resourceVersion")
            if precondition and precondition != old["metadata"]["resourceVersion"]:
                raise errors.conflict(rt, name)
            try:
                return await self._replace(rt, kv, old, new, opts, subresource)
            except APIError as exc:
                if exc.code != 409 or exc.reason != "Conflict" or precondition:
                    raise
        raise errors.conflict(rt, name)

    async def patch_with(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        patch_type: str,
        patch: Any,
        opts: Options | None = None,
        *,
        subresource: str = "",
    ) -> dict[str, Any]:
        """Apply a decoded patch of ``patch_type``: json, merge, strategic or apply."""
        opts = opts or Options()
        try:
            return await self._patch_with(rt, namespace, name, patch_type, patch, opts, subresource)
        except PatchError as exc:
            raise APIError(exc.code, str(exc)) from None

    async def _patch_with(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        patch_type: str,
        patch: Any,
        opts: Options,
        subresource: str,
    ) -> dict[str, Any]:
        if patch_type == "strategic" and rt.custom:
            raise APIError(
                415,
                "the body of the request was in an unknown format - accepted media types "
                "include: application/json-patch+json, application/merge-patch+json, "
                "application/apply-patch+yaml",
            )
        if subresource == "scale":
            # Scale is a built-in kind: strategic merge (what the kubernetes client sends for a
            # dict body) works on it as on any other; it has no lists, so no merge keys.
            scale_appliers: dict[str, Callable[[Any, Any], Any]] = {
                "json": apply_json_patch,
                "merge": apply_merge_patch,
                "strategic": lambda doc, p: apply_strategic_merge_patch(doc, p, "Scale"),
            }
            scale_applier = scale_appliers.get(patch_type)
            if scale_applier is None:
                raise APIError(
                    415,
                    "the scale subresource accepts JSON patch, merge patch and strategic merge "
                    "patch",
                )
            scale = await self.get_scale(rt, namespace, name)
            del scale["metadata"][
                "resourceVersion"
            ]  # only a patch that names one is a precondition
            new = scale_applier(scale, patch)
            return await self.update_scale(rt, namespace, name, new, opts)
        if patch_type == "apply":
            if not opts.field_manager:
                raise errors.bad_request(
                    "PATCH with application/apply-patch+yaml requires the fieldManager parameter"
                )
            if not isinstance(patch, dict):
                raise errors.bad_request("an apply patch must be a YAML or JSON object")
            return await self.patch(
                rt,
                namespace,
                name,
                lambda old: apply_server_side_apply(old, patch, rt.kind, not rt.custom),
                opts,
                subresource=subresource,
                create_if_missing=not subresource,
            )
        appliers: dict[str, Callable[[Any, Any], Any]] = {
            "json": apply_json_patch,
            "merge": apply_merge_patch,
            "strategic": lambda doc, p: apply_strategic_merge_patch(doc, p, rt.kind),
        }
        applier = appliers.get(patch_type)
        if applier is None:
            raise APIError(415, f"unsupported patch type {patch_type!r}")

        def apply(old: dict[str, Any] | None) -> dict[str, Any]:
            assert old is not None
            result: dict[str, Any] = applier(old, patch)
            return result

        return await self.patch(rt, namespace, name, apply, opts, subresource=subresource)

    async def delete(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        options = options or {}
        policy = options.get("propagationPolicy") or ""
        if policy not in ("", "Background", "Foreground", "Orphan"):
            raise errors.bad_request(
                f'propagationPolicy: Unsupported value: "{policy}": supported values: '
                '"Background", "Foreground", "Orphan"'
            )
        if options.get("orphanDependents") is True:
            policy = "Orphan"
        pre = options.get("preconditions") or {}
        if not isinstance(pre, dict):
            raise errors.bad_request("DeleteOptions.preconditions must be an object")
        for _ in range(_RETRIES):
            kv, obj = await self._current(rt, namespace, name)
            meta = obj["metadata"]
            if pre.get("uid") and pre["uid"] != meta.get("uid"):
                raise errors.APIError(
                    409,
                    f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: "
                    f"{meta.get('uid')}",
                )
            if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
                raise errors.conflict(rt, name)
            finalizers = list(meta.get("finalizers") or [])
            extra = {"Foreground": "foregroundDeletion", "Orphan": "orphan"}.get(policy)
            if extra and extra not in finalizers:
                finalizers.append(extra)
            pending = copy.deepcopy(obj)
            pending["metadata"]["finalizers"] = finalizers
            if finalizers_pending(rt, pending):
                # Deletion waits for finalizers (and for a namespace, for its contents to go).
                if meta.get("deletionTimestamp") and (meta.get("finalizers") or []) == finalizers:
                    return obj
                new = pending
                if not finalizers:
                    new["metadata"].pop("finalizers")
                new["metadata"].setdefault("deletionTimestamp", now_rfc3339())
                new["metadata"].setdefault("deletionGracePeriodSeconds", 0)
                if rt.plural == "namespaces":
                    new.setdefault("status", {})["phase"] = "Terminating"
                if dry_run:
                    return new
                try:
                    new_kv = await self.store.update(
                        kv.key, self.codec.encode(rt, kv.key, new), kv.mod_revision
                    )
                except (RevisionMismatchError, KeyNotFoundError):
                    continue
                new["metadata"]["resourceVersion"] = str(new_kv.mod_revision)
                await self._after(rt, "update", obj, new)
                return new
            if dry_run:
                return obj
            try:
                gone = await self.store.delete(kv.key, kv.mod_revision)
            except RevisionMismatchError:
                continue
            except KeyNotFoundError:
                raise errors.not_found(rt, name) from None
            meta["resourceVersion"] = str(gone.mod_revision)
            await self._after(rt, "delete", obj, None)
            return obj
        raise errors.conflict(rt, name)

    async def delete_collection(
        self,
        rt: ResourceType,
        namespace: str | None,
        *,
        matches: Callable[[dict[str, Any]], bool] | None = None,
        options: dict[str, Any] | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        listed = await self.list(rt, namespace, matches=matches)
        deleted = []
        for item in listed["items"]:
            meta = item["metadata"]
            try:
                deleted.append(
                    await self.delete(
                        rt, meta.get("namespace", ""), meta["name"], options, dry_run=dry_run
                    )
                )
            except APIError as exc:
                if exc.code != 404:
                    raise
        listed["items"] = deleted
        return listed

    # --- subresources --------------------------------------------------------------------

    async def bind(
        self, rt: ResourceType, namespace: str, name: str, binding: Any
    ) -> dict[str, Any]:
        """``pods/binding``: set the pod's node once, as the scheduler does."""
        target = (binding or {}).get("target") if isinstance(binding, dict) else None
        node = (target or {}).get("name") if isinstance(target, dict) else None
        if not node:
            raise errors.bad_request("a Binding needs target.name (the node)")

        def assign(pod: dict[str, Any] | None) -> dict[str, Any]:
            assert pod is not None
            spec = pod.setdefault("spec", {})
            if spec.get("nodeName"):
                raise errors.APIError(
                    409, f'pod {name} is already assigned to node "{spec["nodeName"]}"'
                )
            if pod["metadata"].get("deletionTimestamp"):
                raise errors.APIError(409, f"pod {name} is being deleted, cannot be assigned")
            spec["nodeName"] = node
            conditions = pod.setdefault("status", {}).setdefault("conditions", [])
            conditions[:] = [c for c in conditions if c.get("type") != "PodScheduled"]
            conditions.append(
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now_rfc3339()}
            )
            return pod

        await self.patch(rt, namespace, name, assign, subresource="binding")
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "code": 201,
        }

    async def get_scale(self, rt: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        obj = await self.get(rt, namespace, name)
        return scale_of(obj)

    async def update_scale(
        self, rt: ResourceType, namespace: str, name: str, scale: Any, opts: Options | None = None
    ) -> dict[str, Any]:
        replicas = (
            ((scale or {}).get("spec") or {}).get("replicas") if isinstance(scale, dict) else None
        )
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise errors.invalid(
                rt, name, [("spec.replicas", f"Invalid value: {replicas!r}: must be >= 0")]
            )
        expected = ((scale or {}).get("metadata") or {}).get("resourceVersion")

        def set_replicas(obj: dict[str, Any] | None) -> dict[str, Any]:
            assert obj is not None
            if expected:
                obj["metadata"]["resourceVersion"] = expected  # a precondition
            obj.setdefault("spec", {})["replicas"] = replicas
            return obj

        return scale_of(await self.patch(rt, namespace, name, set_replicas, opts))


def scale_of(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    selector = (obj.get("spec") or {}).get("selector") or {}
    labels = ",".join(f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items())
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"],
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
            "creationTimestamp": meta.get("creationTimestamp"),
        },
        "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 0)},
        "status": {"replicas": (obj.get("status") or {}).get("replicas", 0), "selector": labels},
    }


def finalizers_pending(rt: ResourceType, obj: dict[str, Any]) -> bool:
    if obj["metadata"].get("finalizers"):
        return True
    # A namespace also waits for spec.finalizers, removed once its contents are gone.
    return (
        rt.group == ""
        and rt.plural == "namespaces"
        and bool((obj.get("spec") or {}).get("finalizers"))
    )


def _spec_of(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _encode_continue(revision: int, key: str, prefix: str) -> str:
    raw = orjson.dumps({"v": "meta.k8s.io/v1", "rv": revision, "start": key[len(prefix) :]})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_continue(token: str, prefix: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = orjson.loads(raw)
        revision, start = int(data["rv"]), str(data["start"])
    except Exception:
        raise errors.bad_request("continue key is not valid: cannot decode it") from None
    if revision <= 0 or "\x00" in start:
        raise errors.bad_request("continue key is not valid: bad resource version or key")
    return revision, prefix + start
