"""The CRD manifests packaged for the cloud are the ones deploy/crds/ gives real clusters."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from orbiter.orchestration.apis import DEVICES, RULES, load_crds

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("name", [DEVICES, RULES])
def test_packaged_crds_equal_deploy_crds(name: str) -> None:
    deployed = [d for d in yaml.safe_load_all((REPO / "deploy" / "crds" / name).read_text()) if d]
    assert load_crds(name) == deployed
    assert {crd["kind"] for crd in deployed} == {"CustomResourceDefinition"}


def test_device_crds_name_kubeedge_kinds() -> None:
    names = {crd["metadata"]["name"]: crd for crd in load_crds(DEVICES)}
    assert set(names) == {"devices.devices.kubeedge.io", "devicemodels.devices.kubeedge.io"}
    [version] = names["devices.devices.kubeedge.io"]["spec"]["versions"]
    assert version["name"] == "v1beta1" and version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[:4] == ["Node", "Model", "State", "Last-Report"]
