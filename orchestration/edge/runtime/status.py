"""What the runtime knows about each container, and the PodStatus kubelet would compute
from it (phase, conditions, container statuses)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from .backoff import Backoff
from .downward import HOST_IP, POD_IP
from .probing import Prober
from .processes import ExitInfo, ProcessHandle, RunInfo
from .quantities import parse_quantity

CREATING: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}
POD_INITIALIZING: dict[str, Any] = {"waiting": {"reason": "PodInitializing"}}


def rfc3339(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@dataclass
class ContainerRecord:
    """One container of a pod across its runs. Everything but ``proc`` and ``prober`` is
    persisted, so a restarted runtime continues with the same restart counts and back-off."""

    name: str
    init: bool
    image: str = ""
    state: dict[str, Any] = field(default_factory=lambda: dict(CREATING))
    last_state: dict[str, Any] = field(default_factory=dict)
    restart_count: int = 0
    ran: bool = False  # started at least once (so the next start is a restart)
    started: bool = False  # the startup probe passed (or there is none) in the current run
    succeeded: bool = False  # init containers: completed with 0
    spec_hash: str = ""
    backoff: Backoff = field(default_factory=Backoff)
    finished_at: float = 0.0
    run: RunInfo | None = None
    active: bool = False  # ``run`` has not been seen to end
    force_restart: bool = False  # its spec changed: restart whatever the policy says
    kill_reason: str | None = None  # a probe failed: stop it, the policy decides what next
    proc: ProcessHandle | None = None
    prober: Prober | None = None

    @property
    def exit_code(self) -> int | None:
        term = self.state.get("terminated") or self.last_state.get("terminated")
        return None if term is None else int(term.get("exitCode", 0))

    @property
    def ready(self) -> bool:
        if self.init:
            return self.succeeded
        if self.proc is None or "running" not in self.state or not self.started:
            return False
        if self.prober is not None and "readinessProbe" in self.prober.probes:
            return self.prober.ready
        return True

    def terminate(self, info: ExitInfo, container_id: str | None, message: str, now: float) -> None:
        """The run ended: ``state.terminated`` as kubelet reports it."""
        started = info.started_at if info.started_at is not None else info.finished_at
        term: dict[str, Any] = {
            "exitCode": info.exit_code,
            "reason": info.reason or ("Completed" if info.exit_code == 0 else "Error"),
            "startedAt": rfc3339(started),
            "finishedAt": rfc3339(info.finished_at),
        }
        if info.signal:
            term["signal"] = int(info.signal)
        if message:
            term["message"] = message
        if container_id:
            term["containerID"] = container_id
        self.state = {"terminated": term}
        self.finished_at = now
        self.started = False
        if self.init and info.exit_code == 0:
            self.succeeded = True

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "init": self.init,
            "image": self.image,
            "state": self.state,
            "lastState": self.last_state,
            "restartCount": self.restart_count,
            "ran": self.ran,
            "started": self.started,
            "succeeded": self.succeeded,
            "specHash": self.spec_hash,
            "backoff": self.backoff.to_json(),
            "finishedAt": self.finished_at,
            "run": self.run.to_json() if self.run else None,
            "active": self.active or self.proc is not None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ContainerRecord:
        run = data.get("run")
        return cls(
            name=str(data["name"]),
            init=bool(data.get("init")),
            image=str(data.get("image", "")),
            state=dict(data.get("state") or CREATING),
            last_state=dict(data.get("lastState") or {}),
            restart_count=int(data.get("restartCount", 0)),
            ran=bool(data.get("ran")),
            started=bool(data.get("started")),
            succeeded=bool(data.get("succeeded")),
            spec_hash=str(data.get("specHash", "")),
            backoff=Backoff.from_json(data.get("backoff")),
            finished_at=float(data.get("finishedAt", 0.0)),
            run=RunInfo.from_json(run) if isinstance(run, dict) else None,
            active=bool(data.get("active")),
        )

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "state": self.state,
            "lastState": self.last_state,
            "ready": self.ready,
            "restartCount": self.restart_count,
            "image": self.image,
            "imageID": f"process://{self.image}",
            "started": self.proc is not None and "running" in self.state and self.started,
        }
        cid = (
            (self.state.get("running") or {}).get("containerID")
            or (self.state.get("terminated") or {}).get("containerID")
            or (self.last_state.get("terminated") or {}).get("containerID")
        )
        if cid:
            out["containerID"] = cid
        return out


def pod_phase(
    policy: str, inits: list[ContainerRecord], apps: list[ContainerRecord], terminal: bool
) -> str:
    """kubelet's getPhase."""
    pending_init = failed_init = 0
    for r in inits:
        if r.succeeded:
            continue
        code = r.exit_code
        if code is not None and code != 0 and r.proc is None:
            failed_init += 1
        else:
            pending_init += 1
    if failed_init and policy == "Never":
        return "Failed"
    if pending_init or failed_init:
        return "Pending"
    running = waiting = stopped = succeeded = 0
    for r in apps:
        if "running" in r.state and r.proc is not None:
            running += 1
        elif "terminated" in r.state or (r.last_state.get("terminated") and r.ran):
            stopped += 1
            succeeded += r.exit_code == 0
        else:
            waiting += 1
    if waiting:
        return "Pending"
    if running:
        return "Running"
    if stopped:
        if terminal:
            return "Succeeded" if stopped == succeeded else "Failed"
        if policy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        if policy == "Never":
            return "Failed"
        return "Running"
    return "Pending"


def qos_class(pod: dict[str, Any]) -> str:
    """Guaranteed when every container limits CPU and memory to what it requests (requests
    default to limits), BestEffort when none asks for anything, else Burstable."""
    containers = [c for c in _items(_map(pod.get("spec")).get("containers")) if _map(c)]
    guaranteed, anything = bool(containers), False
    for c in containers:
        resources = _map(c.get("resources"))
        limits = _map(resources.get("limits"))
        requests = {**limits, **_map(resources.get("requests"))}
        anything = anything or any(_quantity(v) for v in requests.values())
        for r in ("cpu", "memory"):
            if _quantity(limits.get(r)) == 0 or _quantity(limits.get(r)) != _quantity(
                requests.get(r)
            ):
                guaranteed = False
    if guaranteed:
        return "Guaranteed"
    return "Burstable" if anything else "BestEffort"


def _map(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _quantity(value: Any) -> Fraction:
    try:
        return parse_quantity(value)
    except ValueError:
        return Fraction(0)


def base_status(pod: dict[str, Any], start_time: float) -> dict[str, Any]:
    return {
        "hostIP": HOST_IP,
        "hostIPs": [{"ip": HOST_IP}],
        "podIP": POD_IP,
        "podIPs": [{"ip": POD_IP}],
        "startTime": rfc3339(start_time),
        "qosClass": qos_class(pod),
    }


def pod_status(
    pod: dict[str, Any],
    records: list[ContainerRecord],
    policy: str,
    terminal: bool,
    start_time: float,
    transitions: dict[str, tuple[str, float]],
    now: float,
) -> dict[str, Any]:
    """The PodStatus; ``transitions`` (condition type -> (status, since)) is updated."""
    inits = [r for r in records if r.init]
    apps = [r for r in records if not r.init]
    phase = pod_phase(policy, inits, apps, terminal)
    incomplete = [r.name for r in inits if not r.succeeded]
    unready = [r.name for r in apps if not r.ready]
    completed = phase in ("Succeeded", "Failed")
    ready = not unready and bool(apps) and not completed
    not_ready = "PodCompleted" if completed else "ContainersNotReady"
    unready_msg = "" if completed else f"containers with unready status: [{' '.join(unready)}]"
    conditions = []
    for kind, ok, reason, message in (
        (
            "Initialized",
            not incomplete,
            "ContainersNotInitialized",
            f"containers with incomplete status: [{' '.join(incomplete)}]",
        ),
        ("Ready", ready, not_ready, unready_msg),
        ("ContainersReady", ready, not_ready, unready_msg),
        ("PodScheduled", True, "", ""),
    ):
        value = "True" if ok else "False"
        previous = transitions.get(kind)
        if previous is None or previous[0] != value:
            transitions[kind] = previous = (value, now)
        cond: dict[str, Any] = {
            "type": kind,
            "status": value,
            "lastProbeTime": None,
            "lastTransitionTime": rfc3339(previous[1]),
        }
        if not ok:
            cond["reason"] = reason
            if message:
                cond["message"] = message
        conditions.append(cond)
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        **base_status(pod, start_time),
        "containerStatuses": [r.status() for r in apps],
    }
    if inits:
        status["initContainerStatuses"] = [r.status() for r in inits]
    return status
