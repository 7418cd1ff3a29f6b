"""What the API serves: one ResourceType per (group, version, plural)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ALL_VERBS = (
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
)


@dataclass(frozen=True, slots=True)
class ResourceType:
    group: str  # "" for the core group
    version: str
    kind: str
    plural: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: frozenset[str] = frozenset()  # "status", "binding", "scale"
    verbs: tuple[str, ...] = ALL_VERBS
    # Served from a CustomResourceDefinition: merge patch only (strategic merge gets 415),
    # objects checked against ``schema`` (the version's openAPIV3Schema).
    custom: bool = False
    schema: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    printer_columns: tuple[dict[str, Any], ...] = field(default=(), hash=False, compare=False)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def gv_path(self) -> str:
        """The group-version's URL path without a leading slash: ``api/v1``, ``apis/g/v``."""
        return f"apis/{self.group}/{self.version}" if self.group else f"api/{self.version}"

    @property
    def group_resource(self) -> str:
        """``plural.group`` as Kubernetes writes it in messages (``pods``, ``deployments.apps``)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


def _core(kind: str, plural: str, namespaced: bool = True, **kw: Any) -> ResourceType:
    return ResourceType("", "v1", kind, plural, kind.lower(), namespaced, **kw)


BUILTIN_RESOURCES: tuple[ResourceType, ...] = (
    _core(
        "Namespace", "namespaces", False, short_names=("ns",), subresources=frozenset({"status"})
    ),
    _core("Node", "nodes", False, short_names=("no",), subresources=frozenset({"status"})),
    _core(
        "Pod",
        "pods",
        short_names=("po",),
        categories=("all",),
        subresources=frozenset({"status", "binding", "log"}),
    ),
    _core("ConfigMap", "configmaps", short_names=("cm",)),
    _core("Secret", "secrets"),
    _core(
        "Service",
        "services",
        short_names=("svc",),
        categories=("all",),
        subresources=frozenset({"status"}),
    ),
    _core("Event", "events", short_names=("ev",)),
    _core("ServiceAccount", "serviceaccounts", short_names=("sa",)),
    ResourceType("coordination.k8s.io", "v1", "Lease", "leases", "lease", True),
    ResourceType(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        "deployment",
        True,
        short_names=("deploy",),
        categories=("all",),
        subresources=frozenset({"status", "scale"}),
    ),
    ResourceType(
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        "replicaset",
        True,
        short_names=("rs",),
        categories=("all",),
        subresources=frozenset({"status", "scale"}),
    ),
    ResourceType(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        "customresourcedefinition",
        False,
        short_names=("crd", "crds"),
        subresources=frozenset({"status"}),
    ),
)
