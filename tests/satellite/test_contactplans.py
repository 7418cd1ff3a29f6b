"""Contact plans in the API, through real kubectl against a cloud as ``orbiter cloud`` runs it:
the satellite.orbiter.io kinds are served with their printer columns, ``kubectl get
contactplans`` shows each node's next pass, the plan's Node carries the generic
contact-window annotations, and a bad plan is reported with the window index and field."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from orbiter.satellite import controllers
from orbiter.satellite.controllers import ACQUISITION_ANNOTATION, WINDOWS_ANNOTATION

from orbiter.testing import CloudThread

pytestmark = [pytest.mark.kubectl]

KUBECTL = "/usr/bin/kubectl"
T = TypeVar("T")


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kubectl:
    def __init__(self, kubeconfig: Path, cache_dir: Path) -> None:
        self.base = [KUBECTL, "--kubeconfig", str(kubeconfig), "--cache-dir", str(cache_dir)]

    def __call__(self, *args: str, stdin: str | None = None) -> str:
        proc = subprocess.run(
            [*self.base, *args], input=stdin, capture_output=True, text=True, timeout=60
        )
        if proc.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)}: {proc.stdout}{proc.stderr}", pytrace=False)
        return proc.stdout

    def table(self, *args: str) -> list[list[str]]:
        return [line.split() for line in self("get", *args).splitlines()]

    def json(self, *args: str) -> Any:
        return json.loads(self("get", *args, "-o", "json"))

    def until(self, check: Callable[[], T | None], what: str, within: float = 30.0) -> T:
        """The first truthy ``check()``: each try runs kubectl, which paces the polling."""
        deadline = time.monotonic() + within
        while True:
            result = check()
            if result:
                return result
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {within}s waiting for {what}", pytrace=False)


@pytest.fixture
def kubectl(tmp_path: Path) -> Iterator[Kubectl]:
    if not Path(KUBECTL).exists():
        pytest.fail(f"{KUBECTL} is not installed", pytrace=False)
    with CloudThread(tmp_path / "cloud") as cloud:  # the default kinds and controllers
        yield Kubectl(cloud.kubeconfig, tmp_path / "kube-cache")


def manifest(*docs: dict[str, Any]) -> str:
    return "\n---\n".join(yaml.safe_dump(d) for d in docs)


def satellite(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    meta = {"name": name}
    api = "satellite.orbiter.io/v1alpha1"
    return {"apiVersion": api, "kind": kind, "metadata": meta, "spec": spec}


STATION = satellite(
    "GroundStation",
    "beijing",
    {
        "latitude": 40.0,
        "longitude": 116.3,
        "altitude": 50,
        "rateDown": 50_000_000,
        "rateUp": 1_000_000,
    },
)
PROFILE = satellite(
    "SatelliteProfile",
    "sat-1",
    {
        "memoryBytes": 8 * 2**30,
        "flopsPerSecond": 1.35e10,
        "devices": [{"name": "pi4b", "idleWatts": 2.1, "busyWatts": 4.8}],
        "power": {"batteryWh": 230, "socFloor": 0.3, "harvestWatts": 14.6, "baselineWatts": 12},
        "link": {"acquisitionSeconds": 60, "frameErrorRate": 0.003, "abortProbability": 0.02},
    },
)
NODE = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "sat-1"}}


def window(start: float, minutes: float, station: str = "beijing") -> dict[str, Any]:
    return {"start": rfc3339(start), "end": rfc3339(start + minutes * 60), "station": station}


def test_contactplans_show_the_next_pass_and_annotate_the_node(kubectl: Kubectl) -> None:
    now = float(int(time.time()))
    past, soon, later = now - 7200, now + 3600, now + 4 * 3600
    plan = satellite(
        "ContactPlan",
        "sat-1",
        {
            "nodeName": "sat-1",
            "windows": [window(later, 6), window(past, 8), window(soon, 8)],  # any order
        },
    )
    kubectl("apply", "-f", "-", stdin=manifest(STATION, PROFILE, NODE, plan))

    def shown() -> list[str] | None:
        rows = kubectl.table("contactplans")
        return rows[1] if len(rows) == 2 and len(rows[1]) == 7 else None  # every column set

    row = kubectl.until(shown, "the plan's next pass in kubectl get contactplans")
    assert kubectl.table("contactplans")[0] == [
        "NAME", "NODE", "NEXT-PASS", "END", "STATION", "PASSES/DAY", "AGE",
    ]  # fmt: skip
    # The past window is over: the next pass is the soon one, not the first listed.
    assert row[:6] == ["sat-1", "sat-1", rfc3339(soon), rfc3339(soon + 480), "beijing", "3"]
    status = kubectl.json("cplan", "sat-1")["status"]
    assert status["windowsComputed"] == 3
    assert status["longestGapSeconds"] == round(soon - (past + 480))
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Valid"]["status"] == "True"
    assert conditions["NodeAnnotated"]["message"] == "2 windows on Node sat-1"

    # The Node carries the upcoming windows in Unix seconds, nothing satellite-specific.
    annotations = kubectl.json("node", "sat-1")["metadata"]["annotations"]
    assert json.loads(annotations[WINDOWS_ANNOTATION]) == [
        [soon, soon + 480],
        [later, later + 360],
    ]
    assert annotations[ACQUISITION_ANNOTATION] == "60"

    # The other kinds, by their short names, with their columns.
    gs, satp = kubectl.table("gs"), kubectl.table("satp")
    assert gs[0] == ["NAME", "LAT", "LON", "MASK", "AGE"]
    assert gs[1][:4] == ["beijing", "40", "116.3", "5"]
    assert satp[0] == ["NAME", "MEMORY", "BATTERY", "FLOOR", "AGE"]
    assert satp[1][:4] == ["sat-1", str(8 * 2**30), "230", "0.3"]
    assert kubectl("get", "gs,satp,cplan", "-o", "name").split() == [
        "groundstation.satellite.orbiter.io/beijing",
        "satelliteprofile.satellite.orbiter.io/sat-1",
        "contactplan.satellite.orbiter.io/sat-1",
    ]

    # Deleting the plan takes the windows off the node.
    kubectl("delete", "cplan", "sat-1")
    kubectl.until(
        lambda: (
            WINDOWS_ANNOTATION
            not in (kubectl.json("node", "sat-1")["metadata"].get("annotations") or {})
        ),
        "the windows gone from the node",
    )


def test_a_bad_plan_names_the_window_and_field(kubectl: Kubectl) -> None:
    now = float(int(time.time()))
    bad = satellite(
        "ContactPlan",
        "bad",
        {
            "nodeName": "sat-1",
            "windows": [
                {"start": "tomorrow", "end": rfc3339(now + 600)},
                window(now + 3600, -5),  # ends before it starts
                window(now + 7200, 8, station="nowhere"),
                window(now + 9000, 8),  # fine
            ],
        },
    )
    kubectl("apply", "-f", "-", stdin=manifest(STATION, NODE, bad))

    def invalid() -> dict[str, Any] | None:
        conditions = kubectl.json("cplan", "bad").get("status", {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "Valid"), None)

    valid = kubectl.until(invalid, "the Valid condition of the bad plan")
    assert (valid["status"], valid["reason"]) == ("False", "InvalidWindow")
    problems = valid["message"].split("; ")
    assert [p.split(":")[0] for p in problems] == [
        "spec.windows[0].start",
        "spec.windows[1].end",
        "spec.windows[2].station",
    ]
    assert "'tomorrow'" in problems[0] and "'nowhere'" in problems[2]
    # Nothing was written on the node, and no next pass is claimed.
    node = kubectl.json("node", "sat-1")
    assert WINDOWS_ANNOTATION not in (node["metadata"].get("annotations") or {})
    assert "nextPass" not in kubectl.json("cplan", "bad")["status"]
    assert kubectl.table("cplan")[1][:3] == ["bad", "sat-1", "0"]  # blank pass, 0 passes/day


ORBIT_PLAN = satellite(
    "ContactPlan",
    "sat-1",
    {
        "nodeName": "sat-1",
        "orbit": {
            "elements": {
                "altitudeKm": 500,  # sun-synchronous: no inclination given
                "raanDeg": 30,
                "meanAnomalyDeg": 0,
                "epoch": "2026-03-01T00:00:00Z",
            }
        },
        "stations": ["beijing"],
        "horizonHours": 48,
    },
)


def test_an_orbit_plan_is_computed_from_its_stations(kubectl: Kubectl) -> None:
    kubectl("apply", "-f", "-", stdin=manifest(STATION, NODE, ORBIT_PLAN))

    def computed() -> dict[str, Any] | None:
        status = kubectl.json("cplan", "sat-1").get("status") or {}
        return status if status.get("nextPass") else None

    status = kubectl.until(computed, "the orbit plan's computed windows", within=60)
    # satellite.md §3.4: one mid-latitude station sees a 500 km SSO about 4 times a day,
    # in two clusters (morning and evening), passes of a few minutes.
    assert 3 <= status["passesPerDay"] <= 5
    assert status["windowsComputed"] == round(status["passesPerDay"] * 2)  # over 48 h
    assert status["longestGapSeconds"] > 6 * 3600
    # ...published as data, rates included, for the placement planner's downlink budget.
    assert len(status["windows"]) == status["windowsComputed"]
    assert {w["station"] for w in status["windows"]} == {"beijing"}
    assert all(w["rateDown"] == 50_000_000 for w in status["windows"])
    conditions = {c["type"]: c for c in status["conditions"]}
    assert (conditions["Computed"]["status"], conditions["Computed"]["reason"]) == (
        "True",
        "Computed",
    )
    windows = json.loads(
        kubectl.json("node", "sat-1")["metadata"]["annotations"][WINDOWS_ANNOTATION]
    )
    assert 1 <= len(windows) <= status["windowsComputed"]
    # (The first may be a pass already in progress, clipped at the start of the horizon.)
    assert 0 < windows[0][1] - windows[0][0] <= 15 * 60
    assert all(60 <= end - start <= 15 * 60 for start, end in windows[1:])
    assert rfc3339(windows[0][0]) <= status["nextPass"]["start"] < rfc3339(windows[0][1])


def test_without_orbit_support_an_orbit_plan_says_so(
    kubectl: Kubectl, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(controllers, "_orbit_module", lambda: None)
    kubectl("apply", "-f", "-", stdin=manifest(STATION, NODE, ORBIT_PLAN))

    def computed() -> dict[str, Any] | None:
        conditions = kubectl.json("cplan", "sat-1").get("status", {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "Computed"), None)

    cond = kubectl.until(computed, "the Computed condition")
    assert (cond["status"], cond["reason"]) == ("False", "OrbitSupportMissing")
    assert kubectl.json("cplan", "sat-1")["status"]["windowsComputed"] == 0


def test_the_example_plan_applies_and_computes_its_passes(kubectl: Kubectl) -> None:
    example = Path(__file__).resolve().parents[2] / "deploy/examples/satellite/contactplan.yaml"
    kubectl("apply", "-f", str(example))

    def computed() -> dict[str, Any] | None:
        status = kubectl.json("cplan", "sat-1").get("status") or {}
        return status if status.get("nextPass") else None

    status = kubectl.until(computed, "the example plan's next pass", within=60)
    # Beijing + Kashgar at 5 degrees: about 7.6 passes a day (satellite.md §3.4).
    assert 6 <= status["passesPerDay"] <= 9
    assert [row[0] for row in kubectl.table("gs")[1:]] == ["beijing", "kashgar"]
    assert kubectl.table("satp")[1][0] == "sat-1"
