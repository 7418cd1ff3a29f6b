"""Starting, probing and stopping a pod's containers, and recording how their runs end.

``ContainerOps`` is the half of the pod worker (``pods.py``) that deals with one container at
a time; the worker owns the loop that decides which container to start or stop, and when.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backoff import BackoffPolicy, go_duration
from .configuring import ConfigError, as_dict, container_path
from .images import ImageSpec, image_key
from .launching import prepare_launch
from .logs import prune_runs
from .probing import Probe, Prober, ProbeTarget, parse_probes
from .processes import ExitInfo, ProcessHandle, read_json, spawn, write_json
from .sources import ObjectSource, Resolver
from .status import ContainerRecord, rfc3339
from .volumes import Volume

log = logging.getLogger(__name__)

DEFAULT_GRACE = 30.0
_LOG_TAIL = 2048  # FallbackToLogsOnError: kubelet's cap on the message taken from the log
_REPORT_WAIT = 0.5  # an adopted run that has not reported its container yet: look again


@dataclass(frozen=True)
class WorkerContext:
    """What every pod worker shares with the runtime."""

    images: Mapping[str, ImageSpec]
    shim_dir: Callable[[str], Path | None]
    clock: Callable[[], float]
    backoff: BackoffPolicy
    resync: float
    notify: Callable[[str, dict[str, Any]], None]


def spec_hash(container: dict[str, Any]) -> str:
    raw = json.dumps(container, sort_keys=True, default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def grace_of(pod: dict[str, Any]) -> float:
    spec = pod.get("spec") if isinstance(pod.get("spec"), dict) else {}
    value = (spec or {}).get("terminationGracePeriodSeconds")
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return DEFAULT_GRACE
    return float(value)


class ContainerOps:
    """Per-container operations of a pod worker (state it shares is declared here)."""

    ctx: WorkerContext
    pod: dict[str, Any]
    uid: str
    dir: Path
    records: dict[str, ContainerRecord]
    volumes: dict[str, Volume]
    volume_error: str | None
    _resolve: Resolver
    _wake: asyncio.Event
    _closing: set[asyncio.Task[Any]]

    def _commit(self) -> None:
        raise NotImplementedError

    def _save(self) -> None:
        raise NotImplementedError

    def _wake_at(self, at: float) -> None:
        raise NotImplementedError

    def _remember(self, source: ObjectSource) -> None:
        raise NotImplementedError

    def _specs(self) -> dict[str, dict[str, Any]]:
        raise NotImplementedError

    # --- starting -----------------------------------------------------------------------

    async def _start_when_due(self, rec: ContainerRecord, spec: dict[str, Any]) -> None:
        """Start now, or wait out the crash back-off as ``CrashLoopBackOff``."""
        now = self.ctx.clock()
        if "terminated" in rec.state:
            rec.last_state = rec.state
        if rec.ran and not rec.force_restart:
            at = rec.backoff.restart_at(self.ctx.backoff, rec.finished_at, now)
            if at > now:
                meta = self.pod.get("metadata") or {}
                pod = f"{meta.get('name')}_{meta.get('namespace')}({self.uid})"
                delay = go_duration(rec.backoff.delay)
                rec.state = {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": f"back-off {delay} restarting failed container={rec.name} "
                        f"pod={pod}",
                    }
                }
                self._wake_at(at)
                return
            rec.backoff.restarted(self.ctx.backoff, now)
        await self._start(rec, spec)

    def _waiting(self, rec: ContainerRecord, reason: str, message: str) -> None:
        rec.state = {"waiting": {"reason": reason, "message": message}}
        self._wake_at(self.ctx.clock() + self.ctx.resync)  # kubelet retries on its next sync

    async def _start(self, rec: ContainerRecord, spec: dict[str, Any]) -> None:
        key = image_key(self.ctx.images, rec.image)
        if key is None:
            known = ", ".join(sorted(self.ctx.images)) or "none"
            self._waiting(
                rec,
                "ErrImageNeverPull",
                f'Container image "{rec.image}" is not present with pull policy of Never '
                f"(this node's process runtime has images: {known})",
            )
            return
        path = container_path(self.pod, rec.name)
        meta = as_dict(self.pod.get("metadata"), "metadata")
        source = ObjectSource(self._resolve, str(meta.get("namespace") or "default"))
        try:
            if self.volume_error is not None:
                raise ConfigError(self.volume_error)
            if spec.get("restartPolicy") is not None and rec.init:
                raise ConfigError(
                    f"{path}.restartPolicy: restartable init containers (sidecars) "
                    "are not supported by the process runtime"
                )
            probes = {} if rec.init else parse_probes(spec, path)
            image = self.ctx.images[key]
            launch = await prepare_launch(
                self.pod, rec.name, path, spec, image, self.ctx.shim_dir(key),
                source, self.volumes, self.dir,
            )  # fmt: skip
        except ConfigError as exc:
            self._remember(source)
            self._waiting(rec, "CreateContainerConfigError", str(exc))
            return
        except OSError as exc:
            self._waiting(rec, "CreateContainerConfigError", f"{exc.strerror}: {exc.filename}")
            return
        self._remember(source)
        if rec.ran:
            rec.restart_count += 1
        rec.ran, rec.force_restart, rec.kill_reason, rec.started = True, False, None, False
        rec.spec_hash = spec_hash(spec)
        attempt = rec.restart_count
        prune_runs(self.dir, rec.name, attempt)
        log_path = self.dir / "logs" / rec.name / f"{attempt}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        run_dir = self.dir / "run" / rec.name / str(attempt)

        def spawned(handle: ProcessHandle) -> None:
            rec.proc, rec.run, rec.active = handle, handle.run, True
            rec.state = {"waiting": {"reason": "ContainerCreating"}}
            self._watch(rec, handle)
            self._save()

        run_dir.mkdir(parents=True, exist_ok=True)
        if any(p.handler == "exec" for p in probes.values()):
            # exec probes run in the container's env, also for a runtime that adopts it
            write_json(run_dir / "probe.json", {"env": launch.env, "cwd": launch.cwd}, mode=0o600)
        try:
            handle = await spawn(run_dir, attempt, launch, log_path, spawned)
        except OSError as exc:  # no wrapper at all (out of processes, interpreter gone)
            self._waiting(rec, "RunContainerError", f"starting the container's wrapper: {exc}")
            return
        self._mark_running(rec, handle, spec, probes)
        self._commit()

    def _mark_running(
        self,
        rec: ContainerRecord,
        handle: ProcessHandle,
        spec: dict[str, Any],
        probes: Mapping[str, Probe] | None = None,
    ) -> None:
        """Once the wrapper reported the container: Running, and probed."""
        c = handle.container
        if handle.exited.done() or rec.proc is not handle:
            return  # it did not start: the exit callback records why
        if c is None:
            self._wake_at(self.ctx.clock() + _REPORT_WAIT)
            return
        rec.state = {
            "running": {
                "startedAt": rfc3339(c.get("startedAt")),
                "containerID": f"process://{c['pid']}",
            }
        }
        if rec.init:
            rec.started = True
            return
        if probes is None:
            try:
                probes = parse_probes(spec, container_path(self.pod, rec.name))
            except ConfigError:
                probes = {}
        if not rec.started:
            rec.started = "startupProbe" not in probes
        if not probes or rec.prober is not None:
            return
        saved = read_json(handle.dir / "probe.json") or {}
        target = ProbeTarget(saved.get("env") or {}, saved.get("cwd") or str(self.dir))
        running_for = max(self.ctx.clock() - float(c.get("startedAt") or 0.0), 0.0)

        def notify(event: str, message: str) -> None:
            self._probed(rec, handle, event, message)

        rec.prober = Prober(probes, target, running_for, rec.started, notify)

    def _probed(
        self, rec: ContainerRecord, handle: ProcessHandle, event: str, message: str
    ) -> None:
        if rec.proc is not handle:
            return
        if event == "started":
            rec.started = True
        elif event in ("liveness", "startup"):
            log.info("pod %s container %s: %s", self.uid, rec.name, message)
            rec.kill_reason = message
            self._wake.set()
        self._commit()

    # --- stopping and exits -------------------------------------------------------------

    async def _stop(self, rec: ContainerRecord, grace: float) -> None:
        handle = rec.proc
        if handle is None:
            return
        info = await handle.stop(grace)
        self._record_exit(rec, handle, info)

    async def _stop_all(self, grace: float) -> None:
        recs = [r for r in self.records.values() if r.proc is not None]
        await asyncio.gather(*(self._stop(r, grace) for r in recs))

    def _watch(self, rec: ContainerRecord, handle: ProcessHandle) -> None:
        def exited(fut: asyncio.Future[ExitInfo]) -> None:
            if fut.cancelled() or rec.proc is not handle:
                return  # detached, or already recorded by ``_stop``
            self._record_exit(rec, handle, fut.result())
            self._commit()
            self._wake.set()

        handle.exited.add_done_callback(exited)

    def _record_exit(
        self, rec: ContainerRecord, handle: ProcessHandle | None, info: ExitInfo
    ) -> None:
        if handle is not None and rec.proc is not handle:
            return
        rec.proc = None
        rec.active = False
        self._drop_prober(rec)
        c = read_json(Path(rec.run.dir) / "container.json") if rec.run else None
        message = info.message
        policy = (self._specs().get(rec.name) or {}).get("terminationMessagePolicy")
        if not message and info.exit_code != 0 and policy == "FallbackToLogsOnError":
            message = self._log_tail(rec)
        cid = f"process://{c.get('pid')}" if c else None
        rec.terminate(info, cid, message, self.ctx.clock())

    def _log_tail(self, rec: ContainerRecord) -> str:
        path = self.dir / "logs" / rec.name / f"{rec.restart_count}.log"
        try:
            return path.read_bytes()[-_LOG_TAIL:].decode(errors="replace")
        except OSError:
            return ""

    def _drop_prober(self, rec: ContainerRecord) -> None:
        prober, rec.prober = rec.prober, None
        if prober is not None:
            task = asyncio.ensure_future(prober.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
