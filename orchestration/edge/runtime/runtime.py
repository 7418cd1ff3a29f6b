"""``ProcessRuntime``: Edged's container runtime, with every container a supervised local
process.

Adoption across EdgeCore restarts. Each container runs under its own wrapper process
(``wrapper.py``) in a session of its own, so EdgeCore exiting takes no pod with it. The
wrapper stays the container's parent and writes its exit status to a file; the runtime
persists, per pod, the spec, restart counts, container states, back-off and every run's
wrapper pid with its /proc start time. ``close()`` stops supervising and leaves the
processes running. A new runtime on the same root, on ``start()``, re-reads that state and
adopts each wrapper still alive (a pidfd on it; same pids, nothing restarted), learning of
its container's exit from the pidfd and the exit file; runs that ended while no runtime was
watching are recorded with their exit codes and restarted as the restart policy says, with
the ConfigMaps and Secrets they were last started with (the edge's live resolver takes over
at its next ``sync_pod``). Run EdgeCore under systemd with ``KillMode=process``, or a
restart of the service kills the pods with it.
"""

from __future__ import annotations

import asyncio
import copy
import fcntl
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, Literal, overload

from .backoff import BackoffPolicy
from .containers import WorkerContext
from .images import ImageSpec, default_images, install_shims
from .logs import follow_log, read_log
from .pods import PodWorker
from .sources import Resolver

log = logging.getLogger(__name__)

StatusCallback = Callable[[str, dict[str, Any]], None]
_UID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ProcessRuntime:
    """Runs the pods bound to this node as local processes under ``root``.

    ``images`` maps image names to runtime environments (default: ``python``, the
    interpreter EdgeCore runs in); ``clock`` is the wall clock of statuses and back-off;
    ``backoff`` the crash back-off (tests use milliseconds); ``resync_period`` how often a
    container that could not be configured is tried again.
    """

    def __init__(
        self,
        root: Path | str,
        *,
        images: Mapping[str, ImageSpec] | None = None,
        clock: Callable[[], float] = time.time,
        backoff: BackoffPolicy | None = None,
        resync_period: float = 10.0,
    ) -> None:
        self.root = Path(root).absolute()
        self._images = dict(images) if images is not None else default_images()
        self._shims: dict[str, Path | None] = {}
        self._callbacks: list[StatusCallback] = []
        self._workers: dict[str, PodWorker] = {}
        self._kills: dict[str, asyncio.Task[None]] = {}
        self._started = False
        self._closed = False
        self._lock: int | None = None
        self._ctx = WorkerContext(
            images=self._images,
            shim_dir=lambda key: self._shims.get(key),
            clock=clock,
            backoff=backoff or BackoffPolicy(),
            resync=resync_period,
            notify=self._notify,
        )

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Prepare the root and adopt the pods a previous runtime left here. RuntimeError
        when another runtime (in this or another process) is running on the same root."""
        if self._started:
            return
        pods = self.root / "pods"
        pods.mkdir(parents=True, exist_ok=True)
        pods.chmod(0o700)  # resolved Secrets and secret volumes live in there
        self._lock = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:  # two runtimes supervising the same pods would restart them twice
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            self._lock = None
            raise RuntimeError(f"another runtime is running on {self.root}") from None
        for key, image in self._images.items():
            self._shims[key] = install_shims(self.root / "images", key, image)
        self._started = True
        for pod_dir in sorted(p for p in pods.iterdir() if p.is_dir()):
            try:
                worker = PodWorker.load(self._ctx, pod_dir)
            except Exception:  # one unreadable pod must not keep the node from starting
                log.exception("cannot load the pod state in %s; leaving it alone", pod_dir)
                continue
            if worker is None or worker.uid != pod_dir.name:
                continue
            self._workers[worker.uid] = worker
            worker.adopt()
            if worker.killing is not None:  # kill_pod was interrupted: finish it
                self._kill_task(worker.uid, worker.killing)
                continue
            worker.run()
            log.info("adopted pod %s (%s)", worker.uid, _pod_name(worker.pod))

    async def close(self) -> None:
        """Stop supervising; every pod process keeps running, to be adopted by the next
        runtime on this root (edge autonomy)."""
        if self._closed:
            return
        self._closed = True
        for task in self._kills.values():
            task.cancel()
        await asyncio.gather(*self._kills.values(), return_exceptions=True)
        await asyncio.gather(*(w.close() for w in self._workers.values()))
        self._workers.clear()
        if self._lock is not None:
            os.close(self._lock)  # releases the flock
            self._lock = None

    async def shutdown_all(self, grace: float | None = None) -> None:
        """Stop every pod (each with its own grace period unless ``grace`` is given), forget
        them, and close."""
        if not self._closed:
            await asyncio.gather(*(self.kill_pod(uid, grace) for uid in list(self._workers)))
        await self.close()

    # --- pods ---------------------------------------------------------------------------

    async def sync_pod(self, pod: dict[str, Any], resolve: Resolver) -> None:
        """Make this pod's processes match its spec. Returns once the pod's worker has the
        update; the worker applies it (watch ``on_status_change``). Bad input never raises:
        it shows as container waiting reasons."""
        self._check_open()
        try:
            meta = pod.get("metadata") if isinstance(pod, dict) else None
            uid = meta.get("uid") if isinstance(meta, dict) else None
            if not isinstance(uid, str) or not _UID.match(uid):
                log.warning("ignoring a pod without a usable metadata.uid: %r", uid)
                return
            if uid in self._kills:
                return
            worker = self._workers.get(uid)
            if worker is None:
                worker = PodWorker(self._ctx, copy.deepcopy(pod), self.root / "pods" / uid)
                self._workers[uid] = worker
                worker.update(pod, resolve)
                worker.run()
            else:
                worker.update(pod, resolve)
        except Exception:  # never out of sync_pod: the edge's message loop calls it
            log.exception("sync_pod failed for %r", _pod_name(pod))

    async def kill_pod(self, uid: str, grace_period: float | None = None) -> None:
        """Stop the pod's containers (SIGTERM, SIGKILL after ``grace_period``, default the
        pod's ``terminationGracePeriodSeconds``), report the final status, and forget the
        pod and its files. Unknown pods are ignored."""
        self._check_open()
        if uid not in self._workers:
            return
        await asyncio.shield(self._kill_task(uid, grace_period))

    def _kill_task(self, uid: str, grace: float | None) -> asyncio.Task[None]:
        task = self._kills.get(uid)
        if task is None:
            task = self._kills[uid] = asyncio.create_task(self._kill(uid, grace))
        return task

    async def _kill(self, uid: str, grace: float | None) -> None:
        worker = self._workers[uid]
        try:
            await worker.kill(grace)
            self._workers.pop(uid, None)
            worker.remove_files()
        finally:
            self._kills.pop(uid, None)

    def pod_status(self, uid: str) -> dict[str, Any]:
        """The pod's PodStatus as kubelet would report it; KeyError for unknown pods."""
        return copy.deepcopy(self._workers[uid].status())

    def running_pods(self) -> dict[str, dict[str, Any]]:
        """The pods this runtime supervises (uid -> pod as last synced)."""
        return {uid: copy.deepcopy(w.pod) for uid, w in self._workers.items()}

    def on_status_change(self, callback: StatusCallback) -> Callable[[], None]:
        """Call ``callback(uid, status)`` whenever a pod's status changes (from the event
        loop; it must not block). Returns a function that unsubscribes."""
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    def _notify(self, uid: str, status: dict[str, Any]) -> None:
        for callback in list(self._callbacks):
            try:
                callback(uid, copy.deepcopy(status))
            except Exception:
                log.exception("status callback failed")

    def _check_open(self) -> None:
        if not self._started or self._closed:
            raise RuntimeError("the runtime is not running: call start() (and not close())")

    # --- logs ---------------------------------------------------------------------------

    @overload
    def logs(
        self, uid: str, container: str, follow: Literal[False] = False, previous: bool = False
    ) -> bytes: ...

    @overload
    def logs(
        self, uid: str, container: str, follow: Literal[True], previous: bool = False
    ) -> AsyncIterator[bytes]: ...

    def logs(
        self, uid: str, container: str, follow: bool = False, previous: bool = False
    ) -> bytes | AsyncIterator[bytes]:
        """A container's log (``previous``: of the run before the current one), or with
        ``follow`` an async iterator of chunks until the run ends. KeyError when the pod,
        the container or the previous run does not exist."""
        worker = self._workers[uid]
        rec = worker.records.get(container)
        if rec is None:
            raise KeyError(f'container "{container}" is not valid for pod {_pod_name(worker.pod)}')
        if not rec.ran:
            raise KeyError(
                f'container "{container}" in pod {_pod_name(worker.pod)} is waiting to start'
            )
        attempt = rec.restart_count - 1 if previous else rec.restart_count
        if attempt < 0:
            raise KeyError(f'previous terminated container "{container}" not found')
        path = worker.dir / "logs" / container / f"{attempt}.log"
        if not follow:
            return read_log(path)

        def running() -> bool:
            return (
                not previous
                and rec.restart_count == attempt
                and rec.proc is not None
                and self._workers.get(uid) is worker
            )

        return follow_log(path, running)


def _pod_name(pod: Any) -> str:
    meta = pod.get("metadata") if isinstance(pod, dict) else None
    if not isinstance(meta, dict):
        return "?"
    return f"{meta.get('namespace')}/{meta.get('name')}"
