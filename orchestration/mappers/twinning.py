"""A device's twin loop (mapper-framework's ``device/``; kubeedge.md §5.6).

One task per device, with its driver:

* every property is read each ``collectCycle`` ms and reported (ReportDeviceStatus: the value
  read and the desired value applied) each ``reportCycle`` ms, both 1000 ms when 0; properties
  without ``reportToCloud`` are read but not reported, as in KubeEdge;
* the desired value of a ReadWrite property is written once at start and again whenever it
  changes (a write that fails is tried again next cycle);
* after each round of reads the driver's state is asked, and a change (the device stops
  answering: "offline"; answers again: "online") is reported at once (ReportDeviceStates).

Values travel as text, typed by the model: INT "42", FLOAT "21.5", BOOLEAN "true".
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .driving import OFFLINE, Driver

__all__ = ["DEFAULT_CYCLE_MS", "DeviceTwin", "Reporter", "parse_value", "value_text"]

log = logging.getLogger(__name__)

DEFAULT_CYCLE_MS = 1000


class Reporter(Protocol):
    """Where a twin's values and states go: EdgeCore's DeviceManagerService."""

    async def report_status(
        self, namespace: str, name: str, twins: Sequence[Mapping[str, Any]]
    ) -> None: ...

    async def report_state(self, namespace: str, name: str, state: str) -> None: ...


def parse_value(kind: str, text: str) -> Any:
    """A desired value (text) as the Python value of the model's type; ValueError if it is
    not one."""
    kind = kind.upper()
    if kind == "INT":
        try:
            return int(text)
        except ValueError:
            number = float(text)  # "12.0" is an int too
            if not number.is_integer():
                raise ValueError(f"{text!r} is not an integer") from None
            return int(number)
    if kind in ("FLOAT", "DOUBLE"):
        number = float(text)
        if not math.isfinite(number):
            raise ValueError(f"{text!r} is not a finite number")
        return number
    if kind == "BOOLEAN":
        lowered = text.strip().lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise ValueError(f"{text!r} is not a boolean")
    return text


def value_text(value: Any) -> str:
    """A value read from a device as twin text (Go's strconv spellings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    if isinstance(value, int | str):
        return str(value)
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return json.dumps(value, separators=(",", ":"))


@dataclass
class _Property:
    name: str
    visitor: dict[str, Any]
    writable: bool
    collect: float  # seconds
    report: float
    report_to_cloud: bool
    desired: dict[str, Any]  # {"value", "metadata"} from the Device
    applied: dict[str, Any] | None = None  # the desired value last written
    reported: dict[str, Any] | None = None  # the value last read, None while reads fail
    next_collect: float = 0.0
    next_report: float = 0.0

    @property
    def kind(self) -> str:
        return str(self.visitor["type"])

    def twin(self) -> dict[str, Any]:
        # observedDesired: what the device has been set to; a property nothing is written to
        # (read-only, or no desired value) has observed its desired value as it is.
        observed = self.applied if self.writable and self.desired["value"] else self.desired
        return {
            "propertyName": self.name,
            "reported": self.reported or {"value": "", "metadata": {}},
            "observedDesired": observed or {"value": "", "metadata": {}},
        }


class DeviceTwin:
    """Runs one device: ``start()``, ``update(device)`` with new desired values, ``stop()``."""

    def __init__(
        self,
        device: Mapping[str, Any],
        model: Mapping[str, Any] | None,
        driver: Driver,
        reporter: Reporter,
    ) -> None:
        self.device = copy.deepcopy(dict(device))
        self.namespace = device["metadata"]["namespace"]
        self.name = device["metadata"]["name"]
        self._driver = driver
        self._reporter = reporter
        self._properties = _properties(self.device, model)
        self._state: str | None = None  # as last reported to EdgeCore
        self._failing: set[str] = set()  # what failed last time: logged once per streak
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def state(self) -> str | None:
        return self._state

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"twin {self.namespace}/{self.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await self._driver.close()
        except Exception:
            log.exception("device %s/%s: closing its driver failed", self.namespace, self.name)

    def update(self, device: Mapping[str, Any]) -> None:
        """Takes the device's new desired values; the loop writes the changed ones now."""
        self.device = copy.deepcopy(dict(device))
        for prop in (self.device.get("spec") or {}).get("properties") or []:
            known = self._properties.get(prop.get("name"))
            if known is not None:
                known.desired = _desired(prop)
        self._wake.set()

    def snapshot(self) -> dict[str, Any]:
        """The device with ``status.twins``: its latest values, as GetDevice answers."""
        device = copy.deepcopy(self.device)
        twins = [p.twin() for p in self._properties.values() if p.reported is not None]
        device["status"] = {"twins": twins}
        return device

    async def _loop(self) -> None:
        try:
            await self._run()
        except Exception:  # a bug, not the device: drivers' errors are handled in _run
            log.exception("device %s/%s: twin loop stopped", self.namespace, self.name)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await self._driver.connect()
        except Exception as exc:  # the state check below reports it; reads try again
            log.warning("device %s/%s: cannot connect: %s", self.namespace, self.name, exc)
        idle = DEFAULT_CYCLE_MS / 1000  # state checks of a device without properties
        next_state = loop.time()
        while True:
            await self._apply_desired()
            now = loop.time()
            collected = False
            for prop in self._properties.values():
                if prop.next_collect <= now:
                    await self._collect(prop)
                    prop.next_collect = _next(prop.next_collect, prop.collect, now)
                    collected = True
            if collected or next_state <= now:
                await self._check_state()
                next_state = now + idle
            now = loop.time()
            due = [p for p in self._properties.values() if p.next_report <= now]
            if due:
                await self._report(due)
                for prop in due:
                    prop.next_report = _next(prop.next_report, prop.report, now)
            wake = min(
                [next_state]
                + [min(p.next_collect, p.next_report) for p in self._properties.values()]
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, wake - loop.time())):
                    await self._wake.wait()
            self._wake.clear()

    async def _apply_desired(self) -> None:
        for prop in self._properties.values():
            wanted = prop.desired
            if not prop.writable or not wanted["value"] or wanted == prop.applied:
                continue
            try:
                value = parse_value(prop.kind, wanted["value"])
            except ValueError as exc:
                log.warning("device %s/%s: %s: %s", self.namespace, self.name, prop.name, exc)
                prop.applied = wanted  # nothing to write until it changes
                continue
            try:
                await self._driver.write(prop.visitor, value)
            except Exception as exc:
                self._failed(f"writing {prop.name}", exc)
                continue
            self._succeeded(f"writing {prop.name}")
            prop.applied = wanted
            prop.next_collect = 0.0  # read it back at once

    async def _collect(self, prop: _Property) -> None:
        try:
            value = await self._driver.read(prop.visitor)
        except Exception as exc:
            self._failed(f"reading {prop.name}", exc)
            prop.reported = None  # not reported while stale
            return
        self._succeeded(f"reading {prop.name}")
        metadata = {"timestamp": str(int(time.time() * 1000))}
        if prop.kind:
            metadata["type"] = prop.kind.lower()
        prop.reported = {"value": value_text(value), "metadata": metadata}

    async def _check_state(self) -> None:
        try:
            state = await self._driver.state()
        except Exception as exc:
            self._failed("asking its state", exc)
            state = OFFLINE
        if state == self._state:
            return
        try:
            await self._reporter.report_state(self.namespace, self.name, state)
        except Exception as exc:  # tried again after the next round of reads
            self._failed("reporting its state", exc)
            return
        self._succeeded("reporting its state")
        log.info("device %s/%s is %s", self.namespace, self.name, state)
        self._state = state

    async def _report(self, due: list[_Property]) -> None:
        twins = [p.twin() for p in due if p.report_to_cloud and p.reported is not None]
        if not twins:
            return
        try:
            await self._reporter.report_status(self.namespace, self.name, twins)
        except Exception as exc:
            self._failed("reporting", exc)
            return
        self._succeeded("reporting")

    def _failed(self, doing: str, exc: BaseException) -> None:
        # A device or EdgeCore that is down fails every cycle: one line per streak.
        if doing not in self._failing:
            self._failing.add(doing)
            log.warning("device %s/%s: %s failed: %s", self.namespace, self.name, doing, exc)

    def _succeeded(self, doing: str) -> None:
        if doing in self._failing:
            self._failing.discard(doing)
            log.info("device %s/%s: %s works again", self.namespace, self.name, doing)


def _properties(device: Mapping[str, Any], model: Mapping[str, Any] | None) -> dict[str, _Property]:
    model_props = {
        p.get("name"): p for p in ((model or {}).get("spec") or {}).get("properties") or []
    }
    out = {}
    for prop in (device.get("spec") or {}).get("properties") or []:
        name = prop["name"]
        described = model_props.get(name) or {}
        visitors = prop.get("visitors") or {}
        access = described.get("accessMode", "")
        out[name] = _Property(
            name=name,
            visitor={
                "propertyName": name,
                "type": str(described.get("type", "")).upper(),
                "accessMode": access,
                "protocolName": visitors.get("protocolName", ""),
                "configData": dict(visitors.get("configData") or {}),
            },
            writable=access == "ReadWrite",
            collect=(prop.get("collectCycle") or DEFAULT_CYCLE_MS) / 1000,
            report=(prop.get("reportCycle") or DEFAULT_CYCLE_MS) / 1000,
            report_to_cloud=bool(prop.get("reportToCloud")),
            desired=_desired(prop),
        )
    return out


def _next(previous: float, cycle: float, now: float) -> float:
    """The next tick: on the cycle's grid, or a cycle from now after falling behind."""
    following = previous + cycle
    return following if following > now else now + cycle


def _desired(prop: Mapping[str, Any]) -> dict[str, Any]:
    desired = prop.get("desired") or {}
    return {"value": desired.get("value", ""), "metadata": dict(desired.get("metadata") or {})}
