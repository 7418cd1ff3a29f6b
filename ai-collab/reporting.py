"""Status reports from a worker to its node's local controller (LC).

:class:`Reporter` posts Sedna's worker message to ``POST {LC_SERVER}/sedna/workers/{name}/info``
(reference ``sedna.md`` §1.2): ``name``, ``namespace``, ``ownerName``, ``ownerKind``,
``kind``, ``status``, ``ownerInfo`` and ``results``. It posts only when ``ownerInfo`` changed
since the last post the LC accepted, either when asked (:meth:`Reporter.report`) or every
``period`` seconds from a background thread (:meth:`Reporter.start`); :meth:`Reporter.stop`
ends the thread and reports one last time, so a short-lived worker's final counts arrive.
A failed post is logged and retried at the next period; it never reaches the worker's
inference path.
"""

from __future__ import annotations

import http.client
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from .context import DEFAULT_LC_PERIOD, WorkerConfig

__all__ = ["Reporter"]

log = logging.getLogger(__name__)

OwnerInfo = Callable[[], Mapping[str, Any]]


class Reporter:
    """Reports ``owner_info()`` for worker ``worker_name`` of ``owner_kind``/``owner_name``."""

    def __init__(
        self,
        lc_server: str,
        *,
        worker_name: str,
        owner_name: str,
        owner_kind: str,
        owner_info: OwnerInfo,
        namespace: str = "default",
        kind: str = "inference",
        status: str = "running",
        period: float = DEFAULT_LC_PERIOD,
        timeout: float = 5.0,
    ) -> None:
        url = urlsplit(lc_server if "://" in lc_server else f"http://{lc_server}")
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"LC_SERVER={lc_server!r} is not an http(s) URL")
        if not worker_name:
            raise ValueError("a worker name is needed to report to the LC (WORKER_NAME)")
        if not period > 0:
            raise ValueError(f"LC_PERIOD must be > 0 seconds, got {period}")
        self._url = url
        self.path = f"{url.path.rstrip('/')}/sedna/workers/{quote(worker_name, safe='')}/info"
        self.worker_name = worker_name
        self.owner_name = owner_name
        self.owner_kind = owner_kind
        self.namespace = namespace
        self.kind = kind
        self.status = status
        self.period = period
        self.timeout = timeout
        self._owner_info = owner_info
        # The baseline: what there is at start is not news (Sedna skipped idle periods).
        self._last: Mapping[str, Any] | None = dict(owner_info())
        self._lock = threading.Lock()  # one post at a time, from the thread or a caller
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.posted = 0  # reports the LC accepted

    @classmethod
    def for_worker(
        cls, config: WorkerConfig, *, kind: str, owner_info: OwnerInfo, **options: Any
    ) -> Reporter:
        """A reporter from a worker's configuration (``LC_SERVER``, ``WORKER_NAME``,
        ``SERVICE_NAME``, ``NAMESPACE`` and, when it has one, ``LC_PERIOD``); ``kind`` is the
        owner's kind (``jointinferenceservice``...)."""
        if not config.lc_server:
            raise ValueError("LC_SERVER is not set: there is no local controller to report to")
        period = getattr(config, "lc_period", DEFAULT_LC_PERIOD)
        return cls(
            config.lc_server,
            worker_name=config.worker_name or "",
            owner_name=config.service_name or "",
            owner_kind=kind,
            owner_info=owner_info,
            namespace=config.namespace,
            period=options.pop("period", period),
            **options,
        )

    def message(self, info: Mapping[str, Any]) -> dict[str, Any]:
        """The body posted to the LC."""
        return {
            "name": self.worker_name,
            "namespace": self.namespace,
            "ownerName": self.owner_name,
            "ownerKind": self.owner_kind,
            "kind": self.kind,
            "status": self.status,
            "ownerInfo": dict(info),
            "results": [],
        }

    def report(self, *, force: bool = False) -> bool:
        """Posts ``owner_info()`` if it changed since the last accepted post (or ``force``);
        True if the LC accepted a post. Errors are logged, not raised."""
        with self._lock:
            info = dict(self._owner_info())
            if not force and info == self._last:
                return False
            try:
                self._post(self.message(info))
            except (OSError, http.client.HTTPException, _Refused) as exc:
                log.warning("report to the local controller at %s failed: %s", self._where(), exc)
                return False
            self._last = info
            self.posted += 1
            return True

    def _post(self, body: dict[str, Any]) -> None:
        payload = orjson.dumps(body)
        conn_type = (
            http.client.HTTPSConnection
            if self._url.scheme == "https"
            else http.client.HTTPConnection
        )
        conn = conn_type(self._url.hostname or "", self._url.port, timeout=self.timeout)
        try:
            conn.request("POST", self.path, payload, {"Content-Type": "application/json"})
            response = conn.getresponse()
            reply = response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise _Refused(f"HTTP {response.status}: {reply[:200]!r}")

    def _where(self) -> str:
        return f"{self._url.scheme}://{self._url.netloc}{self.path}"

    # ---------------------------------------------------------------------------- thread

    def start(self) -> None:
        """Reports every ``period`` seconds from a daemon thread until :meth:`stop`."""
        if self._thread is not None:
            raise RuntimeError("the reporter is already started")
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="orbiter-lc-reporter", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self.period):  # the period itself, not a synchronisation
            try:
                self.report()
            except Exception:  # owner_info() failing must not end the reporting
                log.exception("building the report for the local controller failed")

    def stop(self, *, flush: bool = True) -> None:
        """Ends the thread (waiting for a post in flight), then reports what changed since
        the last post if ``flush``. Safe to call twice, or without :meth:`start`."""
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        if flush:
            self.report()

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Refused(Exception):
    """The LC answered with an error status."""
