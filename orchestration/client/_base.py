"""One async client interface for controllers, whatever API server is behind it."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

PatchType = Literal["merge", "json", "strategic", "apply"]


@dataclass(frozen=True, slots=True)
class Resource:
    """A served resource: ``Resource("apps", "v1", "deployments", "Deployment")``."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


PODS = Resource("", "v1", "pods", "Pod")
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
NODES = Resource("", "v1", "nodes", "Node", namespaced=False)
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
SECRETS = Resource("", "v1", "secrets", "Secret")
SERVICEACCOUNTS = Resource("", "v1", "serviceaccounts", "ServiceAccount")
EVENTS = Resource("", "v1", "events", "Event")
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")
REPLICASETS = Resource("apps", "v1", "replicasets", "ReplicaSet")
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
CRDS = Resource(
    "apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False
)
# KubeEdge's device API (CRDs the cloud installs at start).
DEVICES = Resource("devices.kubeedge.io", "v1beta1", "devices", "Device")
DEVICEMODELS = Resource("devices.kubeedge.io", "v1beta1", "devicemodels", "DeviceModel")
# KubeEdge's router rules.
RULES = Resource("rules.kubeedge.io", "v1", "rules", "Rule")
RULEENDPOINTS = Resource("rules.kubeedge.io", "v1", "ruleendpoints", "RuleEndpoint")


class ClientError(Exception):
    """An API refusal: ``status`` is the HTTP code, ``reason`` the Status reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFoundError(ClientError):
    pass


class ConflictError(ClientError):
    """409: a stale resourceVersion (reason Conflict) or an existing name (AlreadyExists)."""


class ExpiredError(ClientError):
    """410: the requested resourceVersion was compacted; relist."""


def client_error(status: int, reason: str, message: str) -> ClientError:
    cls = {404: NotFoundError, 409: ConflictError, 410: ExpiredError}.get(status, ClientError)
    return cls(status, reason, message)


def request_namespace(
    res: Resource, namespace: str | None, obj: dict[str, Any] | None = None
) -> str:
    """The namespace a single-object request addresses ("" when cluster-scoped); a write
    without one falls back to the object's ``metadata.namespace``."""
    if not res.namespaced:
        return ""
    if namespace is None and obj is not None:
        namespace = (obj.get("metadata") or {}).get("namespace")
    if not namespace:
        raise ValueError(f"a namespace is required for {res.plural}")
    return namespace


def object_name(obj: dict[str, Any]) -> str:
    name = (obj.get("metadata") or {}).get("name")
    if not name:
        raise ValueError("the object has no metadata.name")
    return str(name)


class Client(abc.ABC):
    """CRUD, patch and watch on any resource. Objects are plain JSON dicts.

    ``namespace`` is required for namespaced resources (except in ``list``/``watch``, where
    None means all namespaces) and ignored for cluster-scoped ones.
    """

    @abc.abstractmethod
    async def get(
        self, res: Resource, name: str, namespace: str | None = None
    ) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def list(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str = "",
        field_selector: str = "",
        limit: int = 0,
        continue_token: str = "",
    ) -> dict[str, Any]:
        """The List object: ``items`` and ``metadata.resourceVersion`` / ``continue``."""

    @abc.abstractmethod
    def watch(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        resource_version: str = "",
        label_selector: str = "",
        field_selector: str = "",
        timeout_seconds: int | None = None,
        allow_bookmarks: bool = True,
    ) -> AsyncIterator[dict[str, Any]]:
        """Watch events ``{"type": ADDED|MODIFIED|DELETED|BOOKMARK, "object": {...}}``.

        Raises ExpiredError when ``resource_version`` has been compacted (HTTP 410 or an
        ERROR event carrying 410). Ends at ``timeout_seconds`` or when the server ends it.
        """

    @abc.abstractmethod
    async def create(
        self,
        res: Resource,
        obj: dict[str, Any],
        namespace: str | None = None,
        *,
        subresource: str = "",
    ) -> dict[str, Any]:
        """POST ``obj``; with ``subresource="binding"``, POST a Binding (its metadata.name
        the pod's) to ``pods/{name}/binding`` (the answer is then a Status)."""

    @abc.abstractmethod
    async def replace(
        self,
        res: Resource,
        obj: dict[str, Any],
        namespace: str | None = None,
        *,
        subresource: str = "",
    ) -> dict[str, Any]:
        """PUT ``obj`` (its metadata.name and resourceVersion); ``subresource="status"``."""

    @abc.abstractmethod
    async def patch(
        self,
        res: Resource,
        name: str,
        patch: Any,
        namespace: str | None = None,
        *,
        patch_type: PatchType = "merge",
        subresource: str = "",
        field_manager: str = "",
    ) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def delete(
        self,
        res: Resource,
        name: str,
        namespace: str | None = None,
        *,
        propagation_policy: str | None = None,
        preconditions: dict[str, str] | None = None,
    ) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
