"""The Deployment controller: rolls a deployment's pod template out through replica sets.

As in Kubernetes: each template gets a replica set named ``<deployment>-<pod-template-hash>``
(the hash also labels its selector, template and so its pods); a template change scales a new
replica set up and the old ones down (RollingUpdate within maxSurge/maxUnavailable, or
Recreate: old ones to zero first); ``deployment.kubernetes.io/revision`` numbers the
templates; ``revisionHistoryLimit`` prunes old empty replica sets; a paused deployment rolls
nothing out. Status is computed from the replica sets' status and written through the status
subresource.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Iterable
from typing import Any

import orjson

from ..client import DEPLOYMENTS, REPLICASETS, Client, ConflictError, NotFoundError
from .controlling import (
    Controller,
    Informers,
    being_deleted,
    claim,
    controller_ref,
    meta,
    now_rfc3339,
    owner_keys,
    owner_reference,
    parse_time,
    selector_matches,
)

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)

REVISION = "deployment.kubernetes.io/revision"
DESIRED_REPLICAS = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
HASH_LABEL = "pod-template-hash"
# Deployment annotations a replica set does not inherit.
_NOT_COPIED = frozenset(
    {
        REVISION,
        DESIRED_REPLICAS,
        MAX_REPLICAS,
        "deployment.kubernetes.io/revision-history",
        "kubectl.kubernetes.io/last-applied-configuration",
    }
)
_SAFE_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' rand.SafeEncodeString alphabet

# Progressing condition reasons, as Kubernetes writes them.
NEW_RS_CREATED = "NewReplicaSetCreated"
FOUND_NEW_RS = "FoundNewReplicaSet"
RS_UPDATED = "ReplicaSetUpdated"
NEW_RS_AVAILABLE = "NewReplicaSetAvailable"
TIMED_OUT = "ProgressDeadlineExceeded"
PAUSED = "DeploymentPaused"
RESUMED = "DeploymentResumed"


def pod_template_hash(template: dict[str, Any], collision_count: int | None = None) -> str:
    """FNV-1a (32 bit) of the template, as Kubernetes' ComputeHash, over canonical JSON."""
    data = orjson.dumps(template, option=orjson.OPT_SORT_KEYS)
    if collision_count:
        data += str(collision_count).encode()
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return "".join(_SAFE_CHARS[ord(c) % len(_SAFE_CHARS)] for c in str(h))


def _int_or_percent(value: Any, total: int, round_up: bool) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value)
    if text.endswith("%"):
        scaled = total * int(text[:-1]) / 100
        return math.ceil(scaled) if round_up else math.floor(scaled)
    return int(text)


def surge_and_unavailable(d: dict[str, Any]) -> tuple[int, int]:
    """maxSurge and maxUnavailable as pod counts; (0, 0) for Recreate."""
    spec = d.get("spec") or {}
    strategy = spec.get("strategy") or {}
    replicas = _replicas(d)
    if strategy.get("type", "RollingUpdate") != "RollingUpdate" or replicas == 0:
        return 0, 0
    rolling = strategy.get("rollingUpdate") or {}
    surge = _int_or_percent(rolling.get("maxSurge", "25%"), replicas, True)
    unavailable = _int_or_percent(rolling.get("maxUnavailable", "25%"), replicas, False)
    if surge == 0 and unavailable == 0:
        unavailable = 1  # both zero could never progress
    return surge, min(unavailable, replicas)


def _replicas(obj: dict[str, Any]) -> int:
    return int((obj.get("spec") or {}).get("replicas", 1))


def _status_int(obj: dict[str, Any] | None, field: str) -> int:
    return int(((obj or {}).get("status") or {}).get(field) or 0)


def _revision(rs: dict[str, Any]) -> int:
    try:
        return int((meta(rs).get("annotations") or {}).get(REVISION, 0))
    except ValueError:
        return 0


def _without_hash(template: dict[str, Any]) -> dict[str, Any]:
    template = copy.deepcopy(template)
    labels = (template.get("metadata") or {}).get("labels")
    if isinstance(labels, dict):
        labels.pop(HASH_LABEL, None)
    return template


def same_template(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Templates equal but for the pod-template-hash label (Kubernetes' EqualIgnoreHash)."""
    return _without_hash(a) == _without_hash(b)


def _template(obj: dict[str, Any]) -> dict[str, Any]:
    return (obj.get("spec") or {}).get("template") or {}


def _by_age(rss: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(
        rss, key=lambda rs: (parse_time(meta(rs).get("creationTimestamp")), meta(rs)["name"])
    )


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)


def _set_condition(status: dict[str, Any], kind: str, state: str, reason: str, msg: str) -> None:
    """Kubernetes' SetDeploymentCondition: same status and reason is no change; the
    transition time moves only when the status does."""
    current = _condition(status, kind)
    if current is not None and current["status"] == state and current.get("reason") == reason:
        return
    now = now_rfc3339()
    cond = {
        "type": kind,
        "status": state,
        "lastUpdateTime": now,
        "lastTransitionTime": now,
        "reason": reason,
        "message": msg,
    }
    if current is not None and current["status"] == state:
        cond["lastTransitionTime"] = current.get("lastTransitionTime", now)
    others = [c for c in status.get("conditions") or [] if c.get("type") != kind]
    status["conditions"] = [*others, cond]


def _complete(d: dict[str, Any], status: dict[str, Any]) -> bool:
    replicas = _replicas(d)
    return (
        status.get("updatedReplicas") == replicas
        and status.get("replicas") == replicas
        and status.get("availableReplicas") == replicas
        and int(status.get("observedGeneration") or 0) >= int(meta(d).get("generation") or 0)
    )


def _progressed(old: dict[str, Any], new: dict[str, Any]) -> bool:
    def n(s: dict[str, Any], f: str) -> int:
        return int(s.get(f) or 0)

    return (
        n(new, "updatedReplicas") > n(old, "updatedReplicas")
        or n(new, "replicas") - n(new, "updatedReplicas")
        < n(old, "replicas") - n(old, "updatedReplicas")
        or n(new, "readyReplicas") > n(old, "readyReplicas")
        or n(new, "availableReplicas") > n(old, "availableReplicas")
    )


class DeploymentController(Controller[Key]):
    name = "deployment-controller"

    def __init__(
        self,
        client: Client,
        informers: Informers,
        *,
        workers: int = 2,
        resync: float | None = 300.0,
    ) -> None:
        super().__init__(client, informers, workers=workers, resync=resync)
        self.deployments = informers(DEPLOYMENTS)
        self.replicasets = informers(REPLICASETS)
        self.deployment_index = informers.index(DEPLOYMENTS)
        self.rs_index = informers.index(REPLICASETS)
        self.deployments.on_event(self._on_deployment)
        self.replicasets.on_event(self._on_replicaset)

    def keys(self) -> Iterable[Key]:
        return [_key(d) for d in self.deployments.items()]

    async def _on_deployment(
        self, etype: str, d: dict[str, Any], old: dict[str, Any] | None
    ) -> None:
        self.enqueue(_key(d))

    async def _on_replicaset(
        self, etype: str, rs: dict[str, Any], old: dict[str, Any] | None
    ) -> None:
        for key in owner_keys(DEPLOYMENTS, self.deployment_index, etype, rs, old):
            self.enqueue(key)

    async def reconcile(self, key: Key) -> float | None:
        ns, name = key
        d = self.deployments.get(name, ns)
        if d is None:
            return None
        try:
            return await self._sync(d)
        except NotFoundError:
            try:  # gone meanwhile (the cache lags)? then there is nothing left to do
                await self.client.get(DEPLOYMENTS, name, ns)
            except NotFoundError:
                return None
            raise

    async def _sync(self, d: dict[str, Any]) -> float | None:
        ns = meta(d)["namespace"]
        selector = (d.get("spec") or {}).get("selector")
        rss = await claim(
            self.client,
            REPLICASETS,
            d,
            DEPLOYMENTS,
            self.rs_index.items(ns),
            lambda rs: selector_matches(selector, meta(rs).get("labels")),
        )
        if being_deleted(d):
            new, olds, _ = await self._new_and_old(d, rss, create=False)
            return await self._sync_status(d, new, olds, progress=False)
        if (d.get("spec") or {}).get("paused"):
            return await self._paused(d, rss)
        strategy = ((d.get("spec") or {}).get("strategy") or {}).get("type", "RollingUpdate")
        if strategy == "Recreate":
            return await self._recreate(d, rss)
        return await self._rolling(d, rss)

    # --- the replica sets of one deployment ---------------------------------------------

    async def _new_and_old(
        self, d: dict[str, Any], rss: list[dict[str, Any]], *, create: bool, replicas: int = 0
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]], str]:
        """The replica set of the current template (made when ``create``, with ``replicas``),
        the others, and the name of the one made now ("" if none); the new one's revision is
        brought above every old one's."""
        template = _template(d)
        new = next((rs for rs in _by_age(rss) if same_template(_template(rs), template)), None)
        olds = [rs for rs in rss if new is None or meta(rs)["uid"] != meta(new)["uid"]]
        revision = max((_revision(rs) for rs in olds), default=0) + 1
        created = ""
        if new is not None:
            if _revision(new) < revision and not being_deleted(d):
                m = meta(new)
                patch = {"metadata": {"annotations": {REVISION: str(revision)}}}
                new = await self.client.patch(REPLICASETS, m["name"], patch, m["namespace"])
        elif create:
            new = await self._create(d, revision, replicas)
            created = meta(new)["name"]
        if new is not None and not being_deleted(d):
            await self._set_revision(d, _revision(new))
        return new, olds, created

    async def _create(self, d: dict[str, Any], revision: int, replicas: int) -> dict[str, Any]:
        m, spec = meta(d), d.get("spec") or {}
        collisions = (d.get("status") or {}).get("collisionCount")
        template = copy.deepcopy(_template(d))
        pod_hash = pod_template_hash(template, collisions)
        template.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = pod_hash
        selector = copy.deepcopy(spec.get("selector") or {})
        selector.setdefault("matchLabels", {})[HASH_LABEL] = pod_hash
        annotations = {
            k: v for k, v in (m.get("annotations") or {}).items() if k not in _NOT_COPIED
        }
        surge, _ = surge_and_unavailable(d)
        annotations |= {
            REVISION: str(revision),
            DESIRED_REPLICAS: str(_replicas(d)),
            MAX_REPLICAS: str(_replicas(d) + surge),
        }
        name = f"{m['name']}-{pod_hash}"
        rs = {
            "apiVersion": REPLICASETS.api_version,
            "kind": REPLICASETS.kind,
            "metadata": {
                "name": name,
                "namespace": m["namespace"],
                "labels": dict(template["metadata"]["labels"]),
                "annotations": annotations,
                "ownerReferences": [owner_reference(d, DEPLOYMENTS)],
            },
            "spec": {
                "replicas": replicas,
                "minReadySeconds": int(spec.get("minReadySeconds") or 0),
                "selector": selector,
                "template": template,
            },
        }
        try:
            created = await self.client.create(REPLICASETS, rs, m["namespace"])
        except ConflictError:
            # Ours already (made by an earlier pass the cache has not shown yet)? Use it.
            existing = await self.client.get(REPLICASETS, name, m["namespace"])
            ref = controller_ref(existing)
            ours = ref is not None and ref.get("uid") == m["uid"]
            if ours and same_template(_template(existing), _template(d)):
                return existing
            # A hash collision with someone else's replica set: the next hash must differ.
            count = int(collisions or 0) + 1
            await self.client.patch(
                DEPLOYMENTS,
                m["name"],
                {"status": {"collisionCount": count}},
                m["namespace"],
                subresource="status",
            )
            raise
        return created

    async def _set_revision(self, d: dict[str, Any], revision: int) -> None:
        m = meta(d)
        if (m.get("annotations") or {}).get(REVISION) == str(revision):
            return
        patch = {"metadata": {"annotations": {REVISION: str(revision)}}}
        await self.client.patch(DEPLOYMENTS, m["name"], patch, m["namespace"])

    async def _scale(self, d: dict[str, Any], rs: dict[str, Any], replicas: int) -> dict[str, Any]:
        if _replicas(rs) == replicas:
            return rs
        m = meta(rs)
        surge, _ = surge_and_unavailable(d)
        patch = {
            # The cached replica set decided the count: refuse to write over a newer one.
            "metadata": {
                "resourceVersion": m["resourceVersion"],
                "annotations": {
                    DESIRED_REPLICAS: str(_replicas(d)),
                    MAX_REPLICAS: str(_replicas(d) + surge),
                },
            },
            "spec": {"replicas": replicas},
        }
        return await self.client.patch(REPLICASETS, m["name"], patch, m["namespace"])

    async def _cleanup(self, d: dict[str, Any], olds: list[dict[str, Any]]) -> None:
        """Delete the oldest empty replica sets beyond ``revisionHistoryLimit``."""
        limit = (d.get("spec") or {}).get("revisionHistoryLimit")
        if limit is None:
            return
        alive = [rs for rs in olds if not being_deleted(rs)]
        excess = len(alive) - int(limit)
        if excess <= 0:
            return
        alive.sort(key=lambda rs: (_revision(rs), parse_time(meta(rs).get("creationTimestamp"))))
        for rs in alive[:excess]:
            if (
                _replicas(rs) != 0
                or _status_int(rs, "replicas") != 0
                or int(meta(rs).get("generation") or 0) > _status_int(rs, "observedGeneration")
            ):
                continue
            m = meta(rs)
            with contextlib.suppress(NotFoundError):
                await self.client.delete(
                    REPLICASETS, m["name"], m["namespace"], preconditions={"uid": m["uid"]}
                )

    # --- strategies ---------------------------------------------------------------------

    async def _rolling(self, d: dict[str, Any], rss: list[dict[str, Any]]) -> float | None:
        surge, unavailable = surge_and_unavailable(d)
        wanted = _replicas(d)
        # Created at what the surge allows next to the old replica sets' pods.
        old_total = sum(
            _replicas(rs) for rs in rss if not same_template(_template(rs), _template(d))
        )
        first = max(0, min(wanted + surge - old_total, wanted))
        new, olds, created = await self._new_and_old(d, rss, create=True, replicas=first)
        assert new is not None
        if _replicas(new) != wanted:
            if _replicas(new) > wanted:
                count = wanted
            else:
                total = sum(_replicas(rs) for rs in [*olds, new])
                room = max(0, wanted + surge - total)
                count = _replicas(new) + min(room, wanted - _replicas(new))
            if count != _replicas(new):
                new = await self._scale(d, new, count)
                return await self._sync_status(d, new, olds, created=created)
        olds = await self._scale_down_olds(d, new, olds, unavailable)
        await self._cleanup(d, olds)
        return await self._sync_status(d, new, olds, created=created)

    async def _scale_down_olds(
        self, d: dict[str, Any], new: dict[str, Any], olds: list[dict[str, Any]], unavailable: int
    ) -> list[dict[str, Any]]:
        """Kubernetes' reconcileOldReplicaSets: first drop old pods that are not available,
        then available ones, never going below ``replicas - maxUnavailable`` available."""
        if sum(_replicas(rs) for rs in olds) == 0:
            return olds
        min_available = _replicas(d) - unavailable
        all_pods = sum(_replicas(rs) for rs in [*olds, new])
        new_unavailable = _replicas(new) - _status_int(new, "availableReplicas")
        budget = all_pods - min_available - new_unavailable
        if budget <= 0:
            return olds
        olds = _by_age(olds)
        for i, rs in enumerate(olds):
            unhealthy = _replicas(rs) - _status_int(rs, "availableReplicas")
            if budget <= 0:
                break
            if _replicas(rs) == 0 or unhealthy <= 0:
                continue
            cut = min(budget, unhealthy)
            olds[i] = await self._scale(d, rs, _replicas(rs) - cut)
            budget -= cut
        available = sum(_status_int(rs, "availableReplicas") for rs in [*olds, new])
        excess = available - min_available
        for i, rs in enumerate(olds):
            if excess <= 0:
                break
            if _replicas(rs) == 0:
                continue
            cut = min(_replicas(rs), excess)
            olds[i] = await self._scale(d, rs, _replicas(rs) - cut)
            excess -= cut
        return olds

    async def _recreate(self, d: dict[str, Any], rss: list[dict[str, Any]]) -> float | None:
        new, olds, _ = await self._new_and_old(d, rss, create=False)
        if any(_replicas(rs) > 0 for rs in olds):
            olds = [await self._scale(d, rs, 0) for rs in olds]
            return await self._sync_status(d, new, olds)
        # Wait until the old pods are gone (the old replica sets say so, for this generation).
        if any(
            _status_int(rs, "replicas") > 0
            or _status_int(rs, "observedGeneration") < int(meta(rs).get("generation") or 0)
            for rs in olds
        ):
            return await self._sync_status(d, new, olds)
        created = ""
        if new is None:
            new, olds, created = await self._new_and_old(d, rss, create=True, replicas=_replicas(d))
        assert new is not None
        new = await self._scale(d, new, _replicas(d))
        await self._cleanup(d, olds)
        return await self._sync_status(d, new, olds, created=created)

    async def _paused(self, d: dict[str, Any], rss: list[dict[str, Any]]) -> float | None:
        """Nothing rolls out; only a lone active replica set follows ``replicas`` (kubectl
        scale works on a paused deployment, as in Kubernetes)."""
        new, olds, _ = await self._new_and_old(d, rss, create=False)
        everything = [*([new] if new is not None else []), *olds]
        active = [rs for rs in everything if _replicas(rs) > 0]
        target = active[0] if len(active) == 1 else (new if not active else None)
        if target is not None and _replicas(target) != _replicas(d):
            scaled = await self._scale(d, target, _replicas(d))
            if new is not None and meta(scaled)["uid"] == meta(new)["uid"]:
                new = scaled
            else:
                olds = [scaled if meta(rs)["uid"] == meta(scaled)["uid"] else rs for rs in olds]
        await self._cleanup(d, olds)
        return await self._sync_status(d, new, olds, progress=False)

    # --- status -------------------------------------------------------------------------

    async def _sync_status(
        self,
        d: dict[str, Any],
        new: dict[str, Any] | None,
        olds: list[dict[str, Any]],
        *,
        created: str = "",
        progress: bool = True,
    ) -> float | None:
        """Write the status computed from the replica sets; seconds until the progress
        deadline needs checking, if it does."""
        everything = [*olds, *([new] if new is not None else [])]
        old_status = d.get("status") or {}
        _, unavailable = surge_and_unavailable(d)
        available = sum(_status_int(rs, "availableReplicas") for rs in everything)
        status: dict[str, Any] = {
            "observedGeneration": int(meta(d).get("generation") or 0),
            "replicas": sum(_status_int(rs, "replicas") for rs in everything),
            "updatedReplicas": _status_int(new, "replicas"),
            "readyReplicas": sum(_status_int(rs, "readyReplicas") for rs in everything),
            "availableReplicas": available,
            "unavailableReplicas": max(0, sum(_replicas(rs) for rs in everything) - available),
            "conditions": copy.deepcopy(old_status.get("conditions") or []),
        }
        if old_status.get("collisionCount") is not None:
            status["collisionCount"] = old_status["collisionCount"]
        if available >= _replicas(d) - unavailable:
            _set_condition(
                status,
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
            )
        else:
            _set_condition(
                status,
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
            )
        after = None
        deadline = (d.get("spec") or {}).get("progressDeadlineSeconds")
        if deadline is None:
            status["conditions"] = [c for c in status["conditions"] if c["type"] != "Progressing"]
        elif not progress:
            self._pause_conditions(d, status)
        else:
            after = self._progress_conditions(d, new, status, created, int(deadline))
        if any(old_status.get(k) != v for k, v in status.items()):
            m = meta(d)
            await self.client.patch(
                DEPLOYMENTS, m["name"], {"status": status}, m["namespace"], subresource="status"
            )
        return after

    def _pause_conditions(self, d: dict[str, Any], status: dict[str, Any]) -> None:
        if being_deleted(d):
            return
        current = _condition(status, "Progressing")
        paused = (d.get("spec") or {}).get("paused")
        if paused and (current is None or current.get("reason") != PAUSED):
            _set_condition(status, "Progressing", "Unknown", PAUSED, "Deployment is paused")

    def _progress_conditions(
        self,
        d: dict[str, Any],
        new: dict[str, Any] | None,
        status: dict[str, Any],
        created: str,
        deadline: int,
    ) -> float | None:
        """Kubernetes' syncRolloutStatus for the Progressing condition."""
        old_status = d.get("status") or {}
        current = _condition(status, "Progressing")
        rs_name = meta(new)["name"] if new is not None else ""
        if created:
            _set_condition(
                status,
                "Progressing",
                "True",
                NEW_RS_CREATED,
                f'Created new replica set "{created}"',
            )
        elif current is not None and current.get("reason") == PAUSED:
            _set_condition(status, "Progressing", "Unknown", RESUMED, "Deployment is resumed")
        elif current is None and new is not None:
            _set_condition(
                status, "Progressing", "True", FOUND_NEW_RS, f'Found new replica set "{rs_name}"'
            )
        current = _condition(status, "Progressing")
        if current is None:
            return None
        if status["replicas"] == status["updatedReplicas"] and (
            current.get("reason") == NEW_RS_AVAILABLE
        ):
            return None
        now = time.time()
        if _complete(d, status):
            _set_condition(
                status,
                "Progressing",
                "True",
                NEW_RS_AVAILABLE,
                f'ReplicaSet "{rs_name}" has successfully progressed.',
            )
            return None
        if _progressed(old_status, status):
            msg = f'ReplicaSet "{rs_name}" is progressing.'
            cond = {
                "type": "Progressing",
                "status": "True",
                "lastUpdateTime": now_rfc3339(),
                "lastTransitionTime": current.get("lastTransitionTime")
                if current["status"] == "True"
                else now_rfc3339(),
                "reason": RS_UPDATED,
                "message": msg,
            }
            others = [c for c in status["conditions"] if c["type"] != "Progressing"]
            status["conditions"] = [*others, cond]
            return float(deadline)
        if current.get("reason") == TIMED_OUT:
            return None
        left = parse_time(current.get("lastUpdateTime")) + deadline - now
        if left <= 0:
            _set_condition(
                status,
                "Progressing",
                "False",
                TIMED_OUT,
                f'ReplicaSet "{rs_name}" has timed out progressing.',
            )
            return None
        return left + 1.0


def _key(obj: dict[str, Any]) -> Key:
    return (meta(obj).get("namespace", ""), meta(obj).get("name", ""))
