"""CRD manifests that ship inside the package (``deploy/crds/`` holds the same files for real
clusters; a test keeps them equal)."""

from __future__ import annotations

from importlib import resources
from typing import Any

DEVICES = "devices.yaml"  # devices.kubeedge.io/v1beta1 DeviceModel, Device
RULES = "rules.yaml"  # rules.kubeedge.io/v1 RuleEndpoint, Rule


def load_crds(name: str, package: str | None = None) -> list[dict[str, Any]]:
    """The CustomResourceDefinitions in the packaged manifest ``name`` (``DEVICES``, ...);
    ``package`` names another package holding manifests (higher layers ship their own)."""
    import yaml  # only the cloud reads manifests: edge nodes need not load a YAML parser

    text = resources.files(package or __package__).joinpath(name).read_text(encoding="utf-8")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's: ~8x faster at start
    return [doc for doc in yaml.load_all(text, Loader=loader) if doc]
