"""The satellite placement advisor: the planner's choice for a JointInferenceService's edge
worker on a satellite Node, from hand-built API objects (each outcome: raw, split, on-board
with and without hard-example mining, skip; not consulted; refused input), and end to end in
a cloud where the global manager asks it before placing the edge worker."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from orbiter.collab.apis import JOINT_INFERENCE_SERVICES, MODELS
from orbiter.orchestration.client import DEPLOYMENTS, NODES, PODS, Client, LocalClient
from orbiter.satellite.advising import (
    DEADLINE_SECONDS,
    FRAME_BYTES,
    FRAMES_PER_DAY,
    MAX_JOBS,
    MAX_LIST,
    NOT_CONSULTED,
    PROFILE_ANNOTATION,
    ProfileError,
    advise,
    link_budget,
    model_profile,
    node_profile,
    satellite_advisor,
)
from orbiter.satellite.apis import CONTACT_PLANS, GROUND_STATIONS, SATELLITE_PROFILES

from orbiter.testing import Cloud

from ..converging import until

NODE = "sat-1"
NS = "default"
T0 = 1_800_000_000.0  # a fixed Unix time for the hand-built plans
GIB = 2**30
PASS_DOWN = (480 - 60) * 0.99 * 50e6 / 8  # one 8-min pass: bytes after acquisition and FER


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def obj(kind: str, name: str, spec: dict[str, Any], **annotations: str) -> dict[str, Any]:
    group = "sedna.io" if kind in ("Model", "JointInferenceService") else "satellite.orbiter.io"
    return {
        "apiVersion": f"{group}/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "annotations": annotations},
        "spec": spec,
    }


STATION = obj(
    "GroundStation",
    "beijing",
    {"latitude": 40, "longitude": 116.3, "rateDown": 50_000_000, "rateUp": 1_000_000},
)
PROFILE = obj(
    "SatelliteProfile",
    NODE,
    {
        "memoryBytes": 8 * GIB,
        "flopsPerSecond": 1.35e10,
        "devices": [{"name": "pi4b", "idleWatts": 2.1, "busyWatts": 4.8}],
        "power": {"harvestWatts": 23, "baselineWatts": 11.5, "eclipseFraction": 0.36},
        "link": {"acquisitionSeconds": 60, "frameErrorRate": 0.01},
    },
)


def plan(start: float) -> dict[str, Any]:
    """Six 8-minute passes over Beijing, four hours apart: one day's budget."""
    windows = [
        {
            "start": rfc3339(start + i * 4 * 3600),
            "end": rfc3339(start + i * 4 * 3600 + 480),
            "station": "beijing",
        }
        for i in range(6)
    ]
    return obj("ContactPlan", f"{NODE}-passes", {"nodeName": NODE, "windows": windows})


def profile_json(memory: int = 300_000_000) -> str:
    """A model with one cut (4 GFLOP, 200 KB activations) and an early exit there."""
    return json.dumps(
        {
            "modelBytes": 90_000_000,
            "groundAccuracy": 0.93,
            "cuts": [
                {
                    "index": 1,
                    "flops": 4e9,
                    "activationBytes": 200_000,
                    "memoryBytes": memory,
                    "paramBytes": 20_000_000,
                }
            ],
            "exits": [
                {
                    "name": "early",
                    "cut": 1,
                    "accuracy": 0.8,
                    "thresholds": [{"threshold": 0.6, "hardFraction": 0.1, "easyAccuracy": 0.9}],
                }
            ],
        }
    )


def model(name: str, profile: str | None) -> dict[str, Any]:
    notes = {} if profile is None else {PROFILE_ANNOTATION: profile}
    return obj("Model", name, {"url": f"/models/{name}.onnx", "format": "onnx"}, **notes)


def service(
    name: str, frames: float, frame_bytes: int = 786_432, edge_model: str = "little"
) -> dict[str, Any]:
    def template(node: str) -> dict[str, Any]:
        container = {"name": "w", "image": "python", "command": ["python", "-c", "pass"]}
        return {"spec": {"nodeName": node, "containers": [container]}}

    hem = {"name": "IBT", "parameters": [{"key": "threshold_img", "value": "0.9"}]}
    spec = {
        "edgeWorker": {
            "model": {"name": edge_model},
            "hardExampleMining": hem,
            "template": template(NODE),
        },
        "cloudWorker": {"model": {"name": "big"}, "template": template("ground-1")},
    }
    notes = {FRAMES_PER_DAY: f"{frames:g}", FRAME_BYTES: str(frame_bytes), DEADLINE_SECONDS: "1"}
    found = obj("JointInferenceService", name, spec, **notes)
    found["metadata"]["namespace"] = NS
    return found


def ask(svc: dict[str, Any], little: dict[str, Any] | None = None, **kw: Any) -> Any:
    objects: dict[str, Any] = {
        "profile": PROFILE,
        "plans": [plan(T0)],
        "stations": [STATION],
        "model": little if little is not None else model("little", profile_json()),
    }
    return advise(svc, NODE, **(objects | kw))


# --- the inputs ---------------------------------------------------------------------------------


def test_the_budgets_come_from_the_profile_and_the_contact_plan() -> None:
    node = node_profile(NODE, PROFILE["spec"])
    assert node is not None
    # 23 W only while sunlit (64 % of the day) against an 11.5 W bus: 77.3 Wh/day to compute
    assert node.energy_budget_wh_per_day == pytest.approx(23 * 24 * 0.64 - 11.5 * 24)
    assert (node.memory_bytes, node.compute_power_w, node.idle_power_w) == (8 * GIB, 4.8, 2.1)
    budget = link_budget(NODE, [plan(T0)], [STATION], PROFILE["spec"]["link"])
    assert budget is not None
    assert budget.downlink_bytes_per_day == pytest.approx(6 * PASS_DOWN)  # 15.6 GB/day
    assert budget.uplink_bytes_per_day == pytest.approx(6 * PASS_DOWN / 50)
    # two days of the same passes: the same daily budget; another node's plan counts nothing
    twice = [plan(T0), {**plan(T0 + 86_400), "metadata": {"name": "next-day"}}]
    again = link_budget(NODE, twice, [STATION], PROFILE["spec"]["link"])
    assert again is not None
    assert again.downlink_bytes_per_day == pytest.approx(6 * PASS_DOWN)
    assert link_budget("sat-2", [plan(T0)], [STATION]) is None


def test_an_orbit_plan_is_budgeted_from_the_windows_its_controller_published() -> None:
    given = plan(T0)
    orbit = obj(
        "ContactPlan",
        f"{NODE}-orbit",
        {"nodeName": NODE, "orbit": {"elements": {}}, "stations": ["beijing"]},
    )
    assert link_budget(NODE, [orbit], [STATION], PROFILE["spec"]["link"]) is None  # not yet
    orbit["status"] = {"windows": given["spec"]["windows"]}
    from_orbit = link_budget(NODE, [orbit], [STATION], PROFILE["spec"]["link"])
    from_data = link_budget(NODE, [given], [STATION], PROFILE["spec"]["link"])
    assert from_orbit is not None and from_orbit == from_data


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda p: p["cuts"][0].pop("flops"), "cuts[0].flops: required"),
        (lambda p: p["cuts"][0].update(flops="4e9"), "cuts[0].flops: must be a number"),
        (lambda p: p["exits"][0]["thresholds"][0].update(hardFraction=2), "hard_fraction"),
        (lambda p: p["exits"][0].update(cut=7), "'early' names unknown cut"),
        (lambda p: p.update(extra=1), "unknown field 'extra'"),
    ],
)
def test_a_bad_model_profile_is_refused_naming_the_field(change: Any, field: str) -> None:
    raw = json.loads(profile_json())
    change(raw)
    with pytest.raises(ProfileError, match=field.replace("[", r"\[").replace("]", r"\]")):
        model_profile("little", json.dumps(raw))
    advice = ask(service("demo", 2880), model("little", json.dumps(raw)))
    assert not advice.allowed
    assert f"Model little annotation {PROFILE_ANNOTATION}" in advice.reason
    assert field.split(":")[0] in advice.reason


# --- the outcomes ------------------------------------------------------------------------------


def test_few_frames_go_down_raw_to_the_most_accurate_ground_model() -> None:
    advice = ask(service("demo", 2880))  # 2880 x 768 KB = 2.3 GB of a 15.6 GB/day downlink
    assert advice.allowed and advice.option == "raw"
    assert advice.env == {
        "PLACEMENT_OPTION": "raw",
        "HEM_NAME": "CloudOnly",
        "HEM_PARAMETERS": "[]",
        "MINING_MODE": "mining-then-inference",
    }
    assert advice.reason.startswith("the ground model is the most accurate (0.930)")


def test_the_jobs_of_one_node_share_its_downlink() -> None:
    # Alone, each fits the 15.6 GB/day downlink raw (12,000 x 768 KB = 9.4 GB)...
    first, second = service("first", 12_000), service("second", 12_000)
    assert ask(first).option == "raw" and ask(second).option == "raw"
    # ...together they do not: planned at once, they cannot both send every frame down.
    little = model("little", profile_json())
    a = ask(first, neighbours=[(second, little)])
    b = ask(second, neighbours=[(first, little)])
    assert a.allowed and b.allowed
    assert (a.option, b.option) == ("raw", "split@1")  # one plan, whichever asks
    # A neighbour without a profile does not count (its own look reports it).
    assert ask(first, neighbours=[(second, model("little", None))]).option == "raw"


def test_too_many_frames_for_the_downlink_are_split_at_the_cut() -> None:
    advice = ask(service("demo", 40_000))  # raw 31.5 GB/day; activations 8 GB/day fit
    assert (advice.allowed, advice.option) == (True, "split@1")
    assert advice.env["PLACEMENT_OPTION"] == "split" and advice.env["CUT_POINT"] == "1"
    assert advice.env["HEM_NAME"] == "CloudOnly"
    # as accurate as raw, so the planner names nothing better it had to give up
    assert advice.reason == "accuracy 0.930"


def test_more_frames_run_on_board_and_mine_hard_examples_with_the_specs_filter() -> None:
    advice = ask(service("demo", 100_000))  # activations 20 GB/day: only 10 % of frames go down
    assert (advice.allowed, advice.option) == (True, "onboard(early, HEM<0.6)")
    env = advice.env
    assert (env["PLACEMENT_OPTION"], env["EXIT_NAME"], env["CUT_POINT"]) == (
        "onboard",
        "early",
        "1",
    )
    assert (env["HEM_THRESHOLD"], env["HEM_NAME"]) == ("0.6", "IBT")
    # the spec's other IBT parameter is kept, its box threshold is the planner's
    assert json.loads(env["HEM_PARAMETERS"]) == [
        {"key": "threshold_img", "value": "0.9"},
        {"key": "threshold_box", "value": "0.6"},
    ]
    assert advice.reason.startswith("accuracy 0.903")  # 0.9 x 0.9 + 0.1 x 0.93


def test_big_frames_stay_on_board_with_no_offload() -> None:
    advice = ask(service("demo", 100_000, frame_bytes=8_000_000))  # hard examples: 80 GB/day
    assert (advice.allowed, advice.option) == (True, "onboard(early, no offload)")
    assert advice.env["HEM_NAME"] == "EdgeOnly" and "HEM_THRESHOLD" not in advice.env


def test_a_model_larger_than_the_memory_is_refused_naming_memory() -> None:
    advice = ask(service("demo", 100_000), model("little", profile_json(memory=16 * GIB)))
    assert not advice.allowed and advice.option == "skip"
    assert "split@1 needs 17.2 GB of memory, sat-1 has 8.6 GB" in advice.reason
    assert advice.env == {}


def test_without_a_satellite_or_without_profiles_the_planner_is_not_consulted() -> None:
    svc = service("demo", 100_000)
    assert ask(svc, profile=None) is None  # not a satellite: no opinion
    unprofiled = ask(svc, model("little", None))
    assert unprofiled.allowed and unprofiled.reason.startswith(NOT_CONSULTED)
    assert PROFILE_ANNOTATION in unprofiled.reason and unprofiled.env == {}
    del svc["metadata"]["annotations"][FRAMES_PER_DAY]
    assert ask(svc).allowed and FRAMES_PER_DAY in ask(svc).reason
    no_plan = ask(service("demo", 100_000), plans=[])
    assert no_plan.allowed and "no ContactPlan windows for sat-1" in no_plan.reason
    bad = service("demo", 100_000)
    bad["metadata"]["annotations"][DEADLINE_SECONDS] = "soon"
    refused = ask(bad)
    assert not refused.allowed and f"annotation {DEADLINE_SECONDS}: not a number" in refused.reason


# --- in a cloud ---------------------------------------------------------------------------------


async def _worker_pods(client: Client, name: str) -> list[dict[str, Any]]:
    selector = f"jointinferenceservice.sedna.io/name={name}"
    return list((await client.list(PODS, NS, label_selector=selector))["items"])


def _env(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}


async def _condition(client: Client, name: str) -> dict[str, Any]:
    ji = await client.get(JOINT_INFERENCE_SERVICES, name, NS)
    return dict(((ji.get("status") or {}).get("conditions") or [{}])[-1])


async def test_the_global_manager_places_the_edge_worker_as_the_planner_says(
    tmp_path: Path,
) -> None:
    cloud = Cloud(tmp_path, port=0, hub_port=0, join_port=0, router_port=0)
    async with cloud, LocalClient(cloud.server.api) as client:
        # the advisor alone, through the API: not for the cloud worker, not for other nodes
        assert await satellite_advisor(client, service("x", 1), NODE, "edge") is None
        allocatable = {"cpu": "4", "memory": "8Gi", "pods": "110"}
        for node in (NODE, "ground-1"):
            body = {"metadata": {"name": node}, "status": {"allocatable": allocatable}}
            await client.create(NODES, body)
        await client.create(GROUND_STATIONS, STATION)
        await client.create(CONTACT_PLANS, plan(float(int(time.time()))))
        await client.create(SATELLITE_PROFILES, PROFILE)
        assert await satellite_advisor(client, service("x", 1), NODE, "cloud") is None
        for m in (model("little", profile_json()), model("huge", profile_json(16 * GIB))):
            await client.create(MODELS, m, NS)
        await client.create(MODELS, model("big", None), NS)
        await client.create(JOINT_INFERENCE_SERVICES, service("demo", 100_000), NS)
        await client.create(
            JOINT_INFERENCE_SERVICES, service("heavy", 100_000, edge_model="huge"), NS
        )

        async def edge_pod() -> dict[str, Any] | None:
            pods = await _worker_pods(client, "demo")
            edge = [p for p in pods if p["spec"].get("nodeName") == NODE]
            return edge[0] if edge else None

        pod = await until(edge_pod, "the planned edge worker's pod", 20)
        env = _env(pod)
        assert env["PLACEMENT_OPTION"] == "onboard" and env["HEM_THRESHOLD"] == "0.6"
        assert (env["HEM_NAME"], env["EXIT_NAME"], env["CUT_POINT"]) == ("IBT", "early", "1")

        async def placed() -> dict[str, Any] | None:
            now = await _condition(client, "demo")
            return now if "edge worker on sat-1" in now.get("message", "") else None

        shown = await until(placed, "the placement in the service's condition", 20)
        assert "edge worker on sat-1: onboard(early, HEM<0.6): accuracy 0.903" in shown["message"]

        async def refused() -> dict[str, Any] | None:
            now = await _condition(client, "heavy")
            return now if now.get("reason") == "Unschedulable" else None

        heavy = await until(refused, "the too-big model refused", 20)
        assert heavy["type"] == "Failed"
        assert heavy["message"].startswith("node sat-1 refuses the edge worker: nothing else fits")
        assert "17.2 GB of memory, sat-1 has 8.6 GB" in heavy["message"]
        assert await _worker_pods(client, "heavy") == []
        deployments = (await client.list(DEPLOYMENTS, NS))["items"]
        assert not [d for d in deployments if d["metadata"]["name"].startswith("heavy-")]


def _with_link(**link: Any) -> dict[str, Any]:
    spec = {**PROFILE["spec"], "link": {**PROFILE["spec"]["link"], **link}}
    return {**PROFILE, "spec": spec}


def test_link_values_out_of_range_are_refused_naming_them_and_all_aborts_mean_no_bytes() -> None:
    advice = ask(service("demo", 2880), profile=_with_link(frameErrorRate=1))
    assert not advice.allowed and "frameErrorRate must be in [0, 1)" in advice.reason
    # Every pass aborts: windows but no downlink, so nothing goes down raw (a zero budget,
    # not "no ContactPlan windows").
    advice = ask(service("demo", 2880), profile=_with_link(abortProbability=1))
    assert NOT_CONSULTED not in advice.reason and advice.option != "raw"


def test_the_planners_input_is_bounded() -> None:
    raw = json.loads(profile_json())
    raw["cuts"] = raw["cuts"] * (MAX_LIST + 1)
    with pytest.raises(ProfileError, match=f"cuts: at most {MAX_LIST} entries"):
        model_profile("little", json.dumps(raw))
    little = model("little", profile_json())
    crowd = [(service(f"s{i:02}", 100), little) for i in range(MAX_JOBS)]
    advice = ask(service("demo", 100), neighbours=crowd)
    assert advice.allowed and f"more than the {MAX_JOBS} planned at once" in advice.reason
