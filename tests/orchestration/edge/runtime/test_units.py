"""The runtime's pure parts: expansion, quantities, back-off, image names, phases."""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from typing import Any

import pytest
from orbiter.orchestration.edge.runtime import BackoffPolicy, ImageSpec
from orbiter.orchestration.edge.runtime.backoff import Backoff, go_duration
from orbiter.orchestration.edge.runtime.environment import expand
from orbiter.orchestration.edge.runtime.images import image_key
from orbiter.orchestration.edge.runtime.launching import command_line
from orbiter.orchestration.edge.runtime.quantities import parse_quantity
from orbiter.orchestration.edge.runtime.status import ContainerRecord, pod_phase


@pytest.mark.parametrize(
    ("text", "expanded"),
    [
        ("$(A)", "a"),
        ("x$(A)y$(B)z", "xaybz"),
        ("$$(A)", "$(A)"),
        ("$$$(A)", "$a"),
        ("$(MISSING)", "$(MISSING)"),
        ("$(A", "$(A"),
        ("$()", "$()"),
        ("$A $", "$A $"),
        ("100$", "100$"),
    ],
)
def test_expand_follows_kubernetes(text: str, expanded: str) -> None:
    assert expand(text, {"A": "a", "B": "b"}) == expanded


@pytest.mark.parametrize(
    ("value", "exact"),
    [
        ("128Mi", Fraction(128 * 2**20)),
        ("500m", Fraction(1, 2)),
        ("1.5G", Fraction(1_500_000_000)),
        ("2", Fraction(2)),
        (3, Fraction(3)),
        ("1e3", Fraction(1000)),
        (".5Ki", Fraction(512)),
    ],
)
def test_quantities(value: object, exact: Fraction) -> None:
    assert parse_quantity(value) == exact


@pytest.mark.parametrize("value", ["lots", "1.2.3", "", "5 Mi", True, None, "1Mb"])
def test_bad_quantities(value: object) -> None:
    with pytest.raises(ValueError):
        parse_quantity(value)


def test_backoff_doubles_caps_and_resets() -> None:
    policy = BackoffPolicy(initial=10, maximum=40, reset_after=600)
    b = Backoff()
    assert b.restart_at(policy, finished_at=100, now=100) == 100  # the first restart: at once
    b.restarted(policy, 100)
    delays = []
    now = 100.0
    for _ in range(4):
        at = b.restart_at(policy, finished_at=now, now=now)
        delays.append(at - now)
        now = at
        b.restarted(policy, now)
    assert delays == [10, 20, 40, 40]
    # ten quiet minutes later the slate is clean
    assert b.restart_at(policy, finished_at=now + 700, now=now + 700) == now + 700
    b.restarted(policy, now + 700)
    assert b.delay == 10
    assert [go_duration(s) for s in (0.05, 10, 160, 300)] == ["50ms", "10s", "2m40s", "5m0s"]


def test_image_names() -> None:
    images = {"python": ImageSpec(), "registry.local/tools": ImageSpec()}
    assert image_key(images, "python") == "python"
    assert image_key(images, "python:3.11") == "python"
    assert image_key(images, "python@sha256:abc") == "python"
    assert image_key(images, "registry.local/tools:1") == "registry.local/tools"
    assert image_key(images, "nginx") is None


def test_command_and_args_override_the_image() -> None:
    image = ImageSpec(command=("entry",), args=("default",))
    env = {"X": "x"}
    assert command_line({}, "c", image, env) == ["entry", "default"]
    assert command_line({"args": ["$(X)"]}, "c", image, env) == ["entry", "x"]
    assert command_line({"command": ["run"]}, "c", image, env) == ["run"]
    assert command_line({"command": ["run"], "args": ["a"]}, "c", image, env) == ["run", "a"]


def test_phase_follows_kubelet() -> None:
    def rec(state: Mapping[str, Any], *, init: bool = False, ran: bool = True) -> ContainerRecord:
        return ContainerRecord("c", init, state=dict(state), ran=ran)

    waiting = {"waiting": {"reason": "ContainerCreating"}}
    ok = {"terminated": {"exitCode": 0}}
    failed = {"terminated": {"exitCode": 1}}
    assert pod_phase("Always", [], [rec(waiting, ran=False)], False) == "Pending"
    assert pod_phase("Always", [], [rec(failed)], False) == "Running"
    assert pod_phase("OnFailure", [], [rec(failed)], False) == "Running"
    assert pod_phase("OnFailure", [], [rec(ok)], False) == "Succeeded"
    assert pod_phase("Never", [], [rec(failed)], False) == "Failed"
    assert (
        pod_phase("Never", [rec(failed, init=True)], [rec(waiting, ran=False)], False) == "Failed"
    )
    assert pod_phase("OnFailure", [rec(failed, init=True)], [rec(waiting)], False) == "Pending"
    assert pod_phase("Always", [], [rec(ok), rec(failed)], True) == "Failed"
