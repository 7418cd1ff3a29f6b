"""The objects a JointInferenceService's workers are made of, as Sedna's GM makes them.

- Deployment ``<name>-deployment-cloud`` (1 replica) from ``cloudWorker.template`` and
  ``<name>-deployment-edge`` (1 replica) from ``edgeWorker.template``;
- Service ``<name>-cloud`` selecting the cloud worker, one port named ``tcp-0`` (EdgeMesh
  needs the name) on ``BIG_MODEL_BIND_PORT`` from the cloud template, else 5000.

Each carries the labels ``jointinferenceservice.sedna.io/{name,uid,worker-type}`` (the pod
templates too: the Deployments and the Service select on them) and a controller reference to
the service, so deleting the service deletes them (garbage collection).

Environment (Sedna's names) added to every container of a worker:

- all: ``NAMESPACE``, ``SERVICE_NAME``, ``WORKER_NAME`` (the pod's own name, through the
  downward API: unique per replica, where Sedna put one random name in the template),
  ``LC_SERVER`` (the local controller: for a template pinned to a node by ``nodeName``, the
  URL that node's LC announced, its annotation :data:`LC_SERVER_ANNOTATION`; else, e.g.
  placed by ``nodeSelector``, the controller's default ``http://localhost:9100``);
- cloud: ``MODEL_URL`` (the cloud Model's ``spec.url``), ``BIG_MODEL_BIND_PORT``,
  ``BIG_MODEL_NAME`` (the Model's name: the edge asks for it under that name);
- edge: ``MODEL_URL`` (the edge Model's), ``BIG_MODEL_IP``, ``BIG_MODEL_PORT``,
  ``BIG_MODEL_NAME`` (the cloud Model's name, under which the cloud worker serves it),
  ``HEM_NAME``, ``HEM_PARAMETERS`` (the spec's ``[{key, value}]`` list as JSON).
- a placement advisor's variables (see ``advice``), e.g. ``PLACEMENT_OPTION``: they replace
  ours of the same name (a satellite node may turn ``HEM_NAME`` into ``CloudOnly``).

A variable the template already sets keeps the user's value (ours is not added): users can
override anything, e.g. point ``BIG_MODEL_IP`` at a gateway.

Each object records a hash of what this module made (annotation
``jointinferenceservice.sedna.io/spec-hash``): the controller rewrites it only when the hash
differs, so fields the API server defaults never look like drift, and a ``kubectl scale``
stays until the service's spec changes.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import orjson
from orbiter.orchestration.client import DEPLOYMENTS
from orbiter.orchestration.cloud.controlling import SERVICES, owner_reference

from ..apis import JOINT_INFERENCE_SERVICES

__all__ = [
    "CLOUD",
    "DEFAULT_LC_SERVER",
    "DEFAULT_PORT",
    "EDGE",
    "LC_SERVER_ANNOTATION",
    "NAME_LABEL",
    "PORT_NAME",
    "SPEC_HASH",
    "UID_LABEL",
    "WORKER_TYPE_LABEL",
    "bind_port",
    "cloud_service",
    "deployment",
    "deployment_name",
    "lc_server_of",
    "pinned_node",
    "service_name",
    "worker_labels",
    "worker_spec",
]

CLOUD, EDGE = "cloud", "edge"
PREFIX = "jointinferenceservice.sedna.io"
NAME_LABEL, UID_LABEL, WORKER_TYPE_LABEL = (
    f"{PREFIX}/name",
    f"{PREFIX}/uid",
    f"{PREFIX}/worker-type",
)
SPEC_HASH = f"{PREFIX}/spec-hash"
DEFAULT_PORT = 5000
PORT_NAME = "tcp-0"
DEFAULT_LC_SERVER = "http://localhost:9100"
LC_SERVER_ANNOTATION = "sedna.io/lc-server"  # on a Node: where its local controller listens


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    m = obj.get("metadata")
    return m if isinstance(m, dict) else {}


def worker_spec(service: dict[str, Any], kind: str) -> dict[str, Any]:
    """``spec.edgeWorker`` or ``spec.cloudWorker``."""
    found = (service.get("spec") or {}).get(f"{kind}Worker")
    return found if isinstance(found, dict) else {}


def deployment_name(service: str, kind: str) -> str:
    return f"{service}-deployment-{kind}"


def service_name(service: str) -> str:
    return f"{service}-cloud"


def worker_labels(service: dict[str, Any], kind: str) -> dict[str, str]:
    m = _meta(service)
    return {NAME_LABEL: m["name"], UID_LABEL: m["uid"], WORKER_TYPE_LABEL: kind}


def _containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    found = (template.get("spec") or {}).get("containers")
    return [c for c in found if isinstance(c, dict)] if isinstance(found, list) else []


def _env_value(template: dict[str, Any], name: str) -> str | None:
    """The literal value the first container setting ``name`` gives it."""
    for container in _containers(template):
        for entry in container.get("env") or []:
            if isinstance(entry, dict) and entry.get("name") == name and "value" in entry:
                return str(entry["value"])
    return None


def bind_port(service: dict[str, Any]) -> int:
    """The cloud worker's port: ``BIG_MODEL_BIND_PORT`` from its template, else 5000;
    ValueError if that is not a port number."""
    template = worker_spec(service, CLOUD).get("template") or {}
    value = _env_value(template, "BIG_MODEL_BIND_PORT")
    if value is None:
        return DEFAULT_PORT
    try:
        port = int(value)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise ValueError(
            f"cloudWorker.template: BIG_MODEL_BIND_PORT={value!r} is not a port number"
        )
    return port


def pinned_node(service: dict[str, Any], kind: str) -> str | None:
    """The node ``kind``'s template names in ``spec.nodeName``, if any."""
    template = worker_spec(service, kind).get("template") or {}
    node = (template.get("spec") or {}).get("nodeName")
    return node if isinstance(node, str) and node else None


def lc_server_of(node: dict[str, Any] | None, default: str) -> str:
    """The LC URL a node announced (annotation), else ``default``."""
    found = (_meta(node or {}).get("annotations") or {}).get(LC_SERVER_ANNOTATION)
    return found if isinstance(found, str) and found else default


def _hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(spec, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def _merge_env(container: dict[str, Any], ours: list[dict[str, Any]]) -> None:
    env = [e for e in container.get("env") or [] if isinstance(e, dict)]
    taken = {e.get("name") for e in env}
    container["env"] = env + [e for e in ours if e["name"] not in taken]


def _env(service: dict[str, Any], lc_server: str) -> list[dict[str, Any]]:
    m = _meta(service)
    return [
        {"name": "NAMESPACE", "value": m["namespace"]},
        {"name": "SERVICE_NAME", "value": m["name"]},
        {"name": "WORKER_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "LC_SERVER", "value": lc_server},
    ]


def deployment(
    service: dict[str, Any],
    kind: str,
    *,
    model: dict[str, Any],
    lc_server: str,
    big_model_ip: str = "",
    cloud_model: str = "",
    extra_env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The Deployment of ``kind``'s worker running ``model`` (a Model object); the edge one
    also needs the cloud worker's address (``big_model_ip``) and ``cloud_model``'s name.
    ``extra_env`` (a placement advisor's) replaces ours of the same name; the template's
    own values still win over both."""
    m = _meta(service)
    labels = worker_labels(service, kind)
    port = str(bind_port(service))
    spec = worker_spec(service, kind)
    env = _env(service, lc_server)
    env.append({"name": "MODEL_URL", "value": str((model.get("spec") or {}).get("url", ""))})
    if kind == CLOUD:
        # The name it serves the model under: the edge asks for the same one.
        served = str((model.get("metadata") or {}).get("name", ""))
        env += [
            {"name": "BIG_MODEL_BIND_PORT", "value": port},
            {"name": "BIG_MODEL_NAME", "value": served},
        ]
    else:
        hem = spec.get("hardExampleMining") or {}
        parameters = hem.get("parameters") or []
        env += [
            {"name": "BIG_MODEL_IP", "value": big_model_ip},
            {"name": "BIG_MODEL_PORT", "value": port},
            {"name": "BIG_MODEL_NAME", "value": cloud_model},
            {"name": "HEM_NAME", "value": str(hem.get("name", ""))},
            {"name": "HEM_PARAMETERS", "value": json.dumps(parameters, separators=(",", ":"))},
        ]
    if extra_env:
        env = [e for e in env if e["name"] not in extra_env]
        env += [{"name": k, "value": str(v)} for k, v in sorted(extra_env.items())]
    template = copy.deepcopy(spec.get("template") or {})
    template_meta = template.setdefault("metadata", {})
    template_meta["labels"] = {**(template_meta.get("labels") or {}), **labels}
    for container in _containers(template):
        _merge_env(container, env)
    body = {
        "replicas": 1,
        "selector": {"matchLabels": dict(labels)},
        "template": template,
    }
    return {
        "apiVersion": DEPLOYMENTS.api_version,
        "kind": DEPLOYMENTS.kind,
        "metadata": {
            "name": deployment_name(m["name"], kind),
            "namespace": m["namespace"],
            "labels": dict(labels),
            "annotations": {SPEC_HASH: _hash(body)},
            "ownerReferences": [owner_reference(service, JOINT_INFERENCE_SERVICES)],
        },
        "spec": body,
    }


def cloud_service(service: dict[str, Any]) -> dict[str, Any]:
    """The Service in front of the cloud worker."""
    m = _meta(service)
    labels = worker_labels(service, CLOUD)
    port = bind_port(service)
    body = {
        "selector": dict(labels),
        "ports": [{"name": PORT_NAME, "protocol": "TCP", "port": port, "targetPort": port}],
    }
    return {
        "apiVersion": SERVICES.api_version,
        "kind": SERVICES.kind,
        "metadata": {
            "name": service_name(m["name"]),
            "namespace": m["namespace"],
            "labels": dict(labels),
            "annotations": {SPEC_HASH: _hash(body)},
            "ownerReferences": [owner_reference(service, JOINT_INFERENCE_SERVICES)],
        },
        "spec": body,
    }
