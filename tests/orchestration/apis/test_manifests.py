"""The CRD manifests packaged for the cloud are the ones deploy/crds/ gives real clusters."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from orbiter.collab.apis import SEDNA_CRDS, load_sedna_crds
from orbiter.orchestration.apis import DEVICES, RULES, load_crds
from orbiter.satellite.apis import load_satellite_crds

REPO = Path(__file__).resolve().parents[3]

PACKAGED: dict[str, Callable[[], list[dict[str, Any]]]] = {
    DEVICES: lambda: load_crds(DEVICES),
    RULES: lambda: load_crds(RULES),
    SEDNA_CRDS: load_sedna_crds,  # orbiter.collab's own package data
    "satellite.yaml": load_satellite_crds,  # orbiter.satellite's
}


@pytest.mark.parametrize("name", list(PACKAGED))
def test_packaged_crds_equal_deploy_crds(name: str) -> None:
    deployed = [d for d in yaml.safe_load_all((REPO / "deploy" / "crds" / name).read_text()) if d]
    assert PACKAGED[name]() == deployed
    assert {crd["kind"] for crd in deployed} == {"CustomResourceDefinition"}


def test_device_crds_name_kubeedge_kinds() -> None:
    names = {crd["metadata"]["name"]: crd for crd in load_crds(DEVICES)}
    assert set(names) == {"devices.devices.kubeedge.io", "devicemodels.devices.kubeedge.io"}
    [version] = names["devices.devices.kubeedge.io"]["spec"]["versions"]
    assert version["name"] == "v1beta1" and version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[:4] == ["Node", "Model", "State", "Last-Report"]
