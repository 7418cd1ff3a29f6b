"""One pod's worker: makes the pod's processes match its spec and keeps them supervised.

All decisions happen in one task per pod (``_reconcile``, woken by process exits, probe
results, spec updates and back-off timers), as kubelet's pod workers do; callbacks only
record what happened and wake it. State is persisted on every change so that a new runtime
can adopt the pod (see ``runtime.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from .configuring import ConfigError, pod_containers
from .containers import ContainerOps, WorkerContext, grace_of, spec_hash
from .processes import adopt, collect_exit, read_json, write_json
from .sources import ObjectSource, Resolver, snapshot_resolver
from .status import POD_INITIALIZING, ContainerRecord, pod_phase, pod_status
from .volumes import Volume, set_up_volumes

log = logging.getLogger(__name__)


class PodWorker(ContainerOps):
    def __init__(self, ctx: WorkerContext, pod: dict[str, Any], pod_dir: Path) -> None:
        self.ctx = ctx
        self.pod = pod
        self.uid = str(pod["metadata"]["uid"])
        self.dir = pod_dir
        self.records: dict[str, ContainerRecord] = {}
        self.volumes: dict[str, Volume] = {}
        self.volume_error: str | None = None
        self.start_time = ctx.clock()
        self.terminal = False
        self.killing: float | None = None  # kill_pod began, with this grace (persisted)
        self._transitions: dict[str, tuple[str, float]] = {}
        self._resolve: Resolver = snapshot_resolver({})
        self._seen: dict[str, dict[str, Any] | None] = {}
        self._volumes_stale = True
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._closing: set[asyncio.Task[Any]] = set()
        self._last_status: dict[str, Any] | None = None
        self._last_saved = ""

    # --- lifecycle ----------------------------------------------------------------------

    def update(self, pod: dict[str, Any], resolve: Resolver) -> None:
        self.pod = copy.deepcopy(pod)
        self._resolve = resolve
        self._volumes_stale = True
        self._sync_records()
        self._commit()
        self._wake.set()

    def run(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"pod-{self.uid}")

    async def close(self) -> None:
        """Stop supervising; the processes keep running (edge autonomy)."""
        await self._stop_loop()
        for rec in self.records.values():
            self._drop_prober(rec)
            if rec.proc is not None:
                rec.active = True
                rec.proc.detach()
                rec.proc = None
        await self._drain()
        self._save()

    async def kill(self, grace: float | None) -> None:
        """Stop every container (SIGTERM, SIGKILL after the grace period) for good."""
        self.killing = grace_of(self.pod) if grace is None else max(grace, 0.0)
        self._save()
        await self._stop_loop()
        await self._stop_all(self.killing)
        self.terminal = True
        self._commit()
        await self._drain()

    def remove_files(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    async def _stop_loop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _drain(self) -> None:
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # --- persistence and adoption -------------------------------------------------------

    def _save(self) -> None:
        state = {
            "version": 1,
            "pod": self.pod,
            "startTime": self.start_time,
            "terminal": self.terminal,
            "killing": self.killing,
            "transitions": self._transitions,
            "containers": [r.to_json() for r in self.records.values()],
        }
        raw = json.dumps(state, sort_keys=True, default=str)
        if raw != self._last_saved:
            self.dir.mkdir(parents=True, exist_ok=True)
            write_json(self.dir / "state.json", state)
            self._last_saved = raw

    def _remember(self, source: ObjectSource) -> None:
        """Keep what the resolver said (owner-only: it holds Secrets), so a restarted
        runtime can restart containers before the edge hands it a resolver again."""
        changed = {k: v for k, v in source.seen.items() if self._seen.get(k, 0) != v}
        if changed:
            self._seen.update(changed)
            self.dir.mkdir(parents=True, exist_ok=True)
            write_json(self.dir / "resolved.json", self._seen, mode=0o600)

    @classmethod
    def load(cls, ctx: WorkerContext, pod_dir: Path) -> PodWorker | None:
        state = read_json(pod_dir / "state.json")
        if state is None or not isinstance(state.get("pod"), dict):
            return None
        worker = cls(ctx, state["pod"], pod_dir)
        worker.start_time = float(state.get("startTime") or ctx.clock())
        worker.terminal = bool(state.get("terminal"))
        killing = state.get("killing")
        worker.killing = float(killing) if isinstance(killing, int | float) else None
        worker._transitions = {
            k: (str(v[0]), float(v[1])) for k, v in (state.get("transitions") or {}).items()
        }
        for data in state.get("containers") or []:
            rec = ContainerRecord.from_json(data)
            worker.records[rec.name] = rec
        worker._seen = read_json(pod_dir / "resolved.json") or {}
        worker._resolve = snapshot_resolver(worker._seen)
        worker._last_saved = json.dumps(state, sort_keys=True, default=str)
        worker._sync_records()
        return worker

    def adopt(self) -> None:
        """Re-attach to the runs a previous runtime left (same pids, no restart); record how
        the others ended, so that the restart policy takes its course."""
        specs = self._specs()
        for rec in self.records.values():
            if not (rec.active and rec.run):
                continue
            handle = adopt(rec.run)
            if handle is None:
                self._record_exit(rec, None, collect_exit(Path(rec.run.dir)))
                continue
            rec.proc = handle
            self._watch(rec, handle)
            self._mark_running(rec, handle, specs.get(rec.name) or {})
        self._commit()

    # --- records ------------------------------------------------------------------------

    def _specs(self) -> dict[str, dict[str, Any]]:
        inits, apps, _ = pod_containers(self.pod)
        return dict(inits + apps)

    def _sync_records(self) -> None:
        inits, apps, problems = pod_containers(self.pod)
        for p in problems:
            log.warning("pod %s: %s", self.uid, p)
        for names, init in ((inits, True), (apps, False)):
            for name, spec in names:
                rec = self.records.get(name)
                if rec is None:
                    rec = self.records[name] = ContainerRecord(name, init)
                    if not init and inits:
                        rec.state = dict(POD_INITIALIZING)
                image = spec.get("image")
                rec.image = image if isinstance(image, str) else ""
        # spec order first; containers gone from the spec are stopped by the loop
        order = [n for n, _ in inits + apps]
        rest = {n: r for n, r in self.records.items() if n not in order}
        self.records = {n: self.records[n] for n in order} | rest

    # --- the loop -----------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._reconcile()
            except Exception:  # a bug must not end the supervision of the pod
                log.exception("pod %s: reconcile failed", self.uid)
                self._wake_at(self.ctx.clock() + self.ctx.resync)
            self._commit()
            await self._wake.wait()

    def _wake_at(self, at: float) -> None:
        if self._timer is not None and self._timer_at <= at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        delay = max(at - self.ctx.clock(), 0.0)
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._wake.set()

    def _policy(self) -> str:
        spec = self.pod.get("spec") if isinstance(self.pod.get("spec"), dict) else {}
        policy = (spec or {}).get("restartPolicy", "Always")
        return policy if policy in ("Always", "OnFailure", "Never") else "Always"

    def _deletion_grace(self) -> float | None:
        """The grace period when the pod is being deleted (``deletionTimestamp``), else None."""
        meta = self.pod.get("metadata") if isinstance(self.pod.get("metadata"), dict) else {}
        if not (meta or {}).get("deletionTimestamp"):
            return None
        grace = (meta or {}).get("deletionGracePeriodSeconds")
        if isinstance(grace, int | float) and not isinstance(grace, bool) and grace >= 0:
            return float(grace)
        return grace_of(self.pod)

    def _liveness_grace(self, spec: dict[str, Any]) -> float:
        for kind in ("livenessProbe", "startupProbe"):
            probe = spec.get(kind)
            value = probe.get("terminationGracePeriodSeconds") if isinstance(probe, dict) else None
            if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
                return float(value)
        return grace_of(self.pod)

    async def _reconcile(self) -> None:
        specs = self._specs()
        for name in [n for n in self.records if n not in specs]:
            await self._stop(self.records[name], grace_of(self.pod))
            del self.records[name]
        deletion = self._deletion_grace()
        if deletion is not None:
            await self._stop_all(deletion)
            self.terminal = True
            return
        if self.terminal:
            return
        if self._volumes_stale:
            await self._refresh_volumes()
        for rec in list(self.records.values()):
            spec = specs[rec.name]
            if rec.proc is None:
                continue
            if rec.kill_reason is not None:
                await self._stop(rec, self._liveness_grace(spec))
            elif not rec.init and rec.spec_hash and rec.spec_hash != spec_hash(spec):
                log.info("pod %s: container %s changed; restarting it", self.uid, rec.name)
                rec.force_restart = True  # kubelet restarts it whatever the policy
                await self._stop(rec, grace_of(self.pod))
            elif "running" not in rec.state:
                self._mark_running(rec, rec.proc, spec)  # adopted before it reported
        policy = self._policy()
        inits, apps, _ = pod_containers(self.pod)
        for name, spec in inits:
            rec = self.records[name]
            if rec.succeeded:
                continue
            if rec.proc is None:
                if rec.ran and policy == "Never":
                    self.terminal = True
                    return
                await self._start_when_due(rec, spec)
            return  # one init container at a time, in order
        for name, spec in apps:
            rec = self.records[name]
            if rec.proc is not None:
                continue
            done = policy == "Never" or (policy == "OnFailure" and rec.exit_code == 0)
            if rec.ran and done and not rec.force_restart:
                continue
            await self._start_when_due(rec, spec)
        if policy != "Always" and self._phase() in ("Succeeded", "Failed"):
            self.terminal = True

    async def _refresh_volumes(self) -> None:
        meta = self.pod.get("metadata") if isinstance(self.pod.get("metadata"), dict) else {}
        source = ObjectSource(self._resolve, str((meta or {}).get("namespace") or "default"))
        try:
            self.volumes = await set_up_volumes(self.pod, self.dir, source)
            self.volume_error = None
        except ConfigError as exc:
            self.volume_error = str(exc)
        self._remember(source)
        self._volumes_stale = False

    # --- status -------------------------------------------------------------------------

    def _phase(self) -> str:
        inits = [r for r in self.records.values() if r.init]
        apps = [r for r in self.records.values() if not r.init]
        return pod_phase(self._policy(), inits, apps, self.terminal)

    def status(self) -> dict[str, Any]:
        return pod_status(
            self.pod,
            list(self.records.values()),
            self._policy(),
            self.terminal,
            self.start_time,
            self._transitions,
            self.ctx.clock(),
        )

    def _commit(self) -> None:
        """Persist, and tell the edge when the status changed."""
        status = self.status()
        self._save()
        if status != self._last_status:
            self._last_status = copy.deepcopy(status)
            self.ctx.notify(self.uid, status)
