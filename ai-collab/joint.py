"""Joint inference: a small model on the edge answers, and hard examples go to the big model
in the cloud, which answers them instead (Sedna's ``JointInference``, reference ``sedna.md``
§3.4)::

    from orbiter.collab import JointInference, OnnxEstimator, hem_from_spec

    with JointInference(OnnxEstimator("edge.onnx"), hem_from_spec("CrossEntropy")) as ji:
        is_hard, final, edge, cloud = ji.inference(x, post_process="softmax")

Modes (``MINING_MODE``):

- ``inference-then-mining`` (default): the edge predicts; the filter judges the
  post-processed edge result; a hard example is sent to the cloud, whose result becomes the
  final one. If the cloud fails or misses the deadline, the edge result is the answer and
  the fallback is counted.
- ``mining-then-inference``: the filter judges the raw input (a filter is mandatory); hard
  inputs go to the cloud only (``edge_result`` None), easy ones to the edge only. If the
  cloud fails, the edge answers after all (an answer is mandatory) and the fallback is
  counted.

``post_process`` (a callable, or a name registered as ``ClassType.CALLBACK``, such as
``"softmax"``) is applied to the edge's and to the cloud's raw output alike, so the final,
edge and cloud results have one form (Sedna's cloud applied the same callback server-side).

Counting (:class:`JointInferenceStats`): each answered call is one inference; each hard
example is counted once, whatever the cloud does (Sedna counted a hard example as a second
inference, so its ratio read h/(n+h)); ``upload_ratio`` = cloud calls / inferences. A call
whose edge model raises is not counted: it was not answered.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NamedTuple, Self

from .cloud import CloudClient, CloudDeadlineExceeded, CloudModel
from .context import JointInferenceConfig
from .estimators import call_accepting, instantiate
from .mining import HemFilter, hem_from_spec
from .registry import ClassType, Registry, registry
from .reporting import Reporter

__all__ = ["InferenceResult", "JointInference", "JointInferenceStats", "MiningMode"]

log = logging.getLogger(__name__)


class MiningMode(StrEnum):
    INFERENCE_THEN_MINING = "inference-then-mining"
    MINING_THEN_INFERENCE = "mining-then-inference"


class InferenceResult(NamedTuple):
    """What :meth:`JointInference.inference` returns (a tuple, in Sedna's order)."""

    is_hard_example: bool
    final_result: Any
    edge_result: Any
    cloud_result: Any


def _iso(timestamp: float) -> str:
    return (
        datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


@dataclass(frozen=True)
class JointInferenceStats:
    """Counters since ``start_time`` (epoch seconds); a snapshot, never updated in place."""

    start_time: float
    update_time: float  # of the last counted inference (start_time before any)
    inferences: int = 0  # answered calls
    hard_examples: int = 0  # judged hard, each counted once
    cloud_calls: int = 0  # hard examples sent to the cloud
    fallbacks: int = 0  # cloud calls that failed or missed the deadline: the edge answered
    deadline_misses: int = 0  # the part of fallbacks due to the deadline

    @property
    def upload_ratio(self) -> float:
        """Examples sent to the cloud per inference (0 before any inference)."""
        return self.cloud_calls / self.inferences if self.inferences else 0.0

    def owner_info(self) -> dict[str, Any]:
        """The ``ownerInfo`` Sedna's local controller expects, plus Orbiter's
        ``cloudCallNumber`` and ``fallbackNumber`` (timestamps in RFC 3339, UTC)."""
        return {
            "startTime": _iso(self.start_time),
            "updateTime": _iso(self.update_time),
            "inferenceNumber": self.inferences,
            "hardExampleNumber": self.hard_examples,
            "uploadCloudRatio": self.upload_ratio,
            "cloudCallNumber": self.cloud_calls,
            "fallbackNumber": self.fallbacks,
        }


def _callback(post_process: Callable[[Any], Any] | str | None, algorithms: Registry) -> Any:
    if post_process is None or callable(post_process):
        return post_process
    return algorithms.get_cls(ClassType.CALLBACK, post_process)


class JointInference:
    """Edge estimator + hard-example filter + cloud big model.

    ``estimator``: a class (created with the constructor arguments it accepts out of
    ``model_url`` and ``estimator_kwargs``) or an instance with ``predict``; when a model
    URL is known (``model_url``, else ``MODEL_URL``) and the estimator has ``load``, it is
    loaded now, as in Sedna. ``hard_example_mining``: a filter (any ``result -> bool``), a
    registered name, Sedna's ``{"method": name, "param": {...}}``, or None for
    ``HEM_NAME``/``HEM_PARAMETERS`` (unset: no mining, every example easy). ``cloud``:
    anything with ``infer(data, timeout=)`` (default: a :class:`CloudClient` for
    ``BIG_MODEL_IP``:``BIG_MODEL_PORT``, model ``BIG_MODEL_NAME``). ``deadline``: seconds a
    cloud call may take (default ``BIG_MODEL_DEADLINE``, 10). ``report``: post statistics to
    ``LC_SERVER`` every ``LC_PERIOD`` seconds from a background thread (None: when
    ``LC_SERVER`` is set). ``clock``: monotonic seconds (tests replace it).

    Use it as a context manager, or call :meth:`close`: it stops the reporter (after a last
    report) and closes the cloud connection.
    """

    def __init__(
        self,
        estimator: Any,
        hard_example_mining: HemFilter | str | Mapping[str, Any] | None = None,
        *,
        cloud: CloudModel | None = None,
        mining_mode: MiningMode | str | None = None,
        deadline: float | None = None,
        model_url: str | None = None,
        config: JointInferenceConfig | None = None,
        report: bool | None = None,
        estimator_kwargs: Mapping[str, Any] | None = None,
        algorithms: Registry = registry,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config if config is not None else JointInferenceConfig.from_env()
        mode = mining_mode if mining_mode is not None else self.config.mining_mode
        try:
            self.mining_mode = MiningMode(mode)
        except ValueError:
            modes = ", ".join(m.value for m in MiningMode)
            raise ValueError(f"mining mode {mode!r} is not one of {modes}") from None
        self.deadline = self.config.deadline if deadline is None else deadline
        if not self.deadline > 0:
            raise ValueError(f"deadline must be > 0 seconds, got {self.deadline}")
        self._algorithms = algorithms
        self._clock = clock
        url = model_url if model_url is not None else self.config.model_url
        self.estimator = instantiate(estimator, model_url=url, **(estimator_kwargs or {}))
        if url is not None and hasattr(self.estimator, "load"):
            self.estimator.load(url)
        self.hem = self._filter(hard_example_mining)
        if self.hem is None and self.mining_mode is MiningMode.MINING_THEN_INFERENCE:
            raise ValueError("mining-then-inference needs a hard-example filter (set HEM_NAME)")
        self.cloud: CloudModel = (
            cloud if cloud is not None else CloudClient.from_config(self.config)
        )
        now = time.time()
        self._stats = JointInferenceStats(start_time=now, update_time=now)
        self._lock = threading.Lock()
        self._cloud_down = False  # for logging state changes, not every failure
        self.reporter: Reporter | None = None
        if report or (report is None and self.config.lc_server):
            self.reporter = Reporter.for_worker(
                self.config, kind="jointinferenceservice", owner_info=self._owner_info
            )
            self.reporter.start()

    def _filter(self, spec: HemFilter | str | Mapping[str, Any] | None) -> HemFilter | None:
        if spec is None:
            if self.config.hem_name is None:
                return None
            return hem_from_spec(
                self.config.hem_name, self.config.hem_parameters, algorithms=self._algorithms
            )
        if isinstance(spec, str):
            return hem_from_spec(spec, algorithms=self._algorithms)
        if isinstance(spec, Mapping):
            return hem_from_spec(
                spec["method"], spec.get("param") or {}, algorithms=self._algorithms
            )
        return spec

    @property
    def stats(self) -> JointInferenceStats:
        """The counters now (a consistent snapshot)."""
        with self._lock:
            return self._stats

    def _owner_info(self) -> dict[str, Any]:
        return self.stats.owner_info()

    # --------------------------------------------------------------------------- serving

    def inference(
        self,
        data: Any,
        post_process: Callable[[Any], Any] | str | None = None,
        **kwargs: Any,
    ) -> InferenceResult:
        """``(is_hard_example, final_result, edge_result, cloud_result)`` for ``data``;
        ``kwargs`` go to the estimator's ``predict`` (those it accepts)."""
        callback = _callback(post_process, self._algorithms)
        if self.mining_mode is MiningMode.INFERENCE_THEN_MINING:
            edge = self._edge(data, callback, kwargs)
            if not self._is_hard(edge):
                self._count(hard=False)
                return InferenceResult(False, edge, edge, None)
            ok, cloud, late = self._ask_cloud(data, callback)
            self._count(hard=True, fallback=not ok, late=late)
            return InferenceResult(True, cloud if ok else edge, edge, cloud)
        if not self._is_hard(data):
            edge = self._edge(data, callback, kwargs)
            self._count(hard=False)
            return InferenceResult(False, edge, edge, None)
        ok, cloud, late = self._ask_cloud(data, callback)
        if ok:
            self._count(hard=True)
            return InferenceResult(True, cloud, None, cloud)
        edge = self._edge(data, callback, kwargs)
        self._count(hard=True, fallback=True, late=late)
        return InferenceResult(True, edge, edge, None)

    def _edge(self, data: Any, callback: Any, kwargs: dict[str, Any]) -> Any:
        result = call_accepting(self.estimator.predict, data, **kwargs)
        return callback(result) if callback is not None else result

    def _is_hard(self, result: Any) -> bool:
        if self.hem is None:
            return False
        try:
            return bool(self.hem(result))
        except Exception:  # a filter of one's own failing must not cost the answer
            log.exception("hard-example filter %r failed; treating the example as easy", self.hem)
            return False

    def _ask_cloud(self, data: Any, callback: Any) -> tuple[bool, Any, bool]:
        """(answered, cloud result or None, missed the deadline)."""
        started = self._clock()
        try:
            result = self.cloud.infer(data, timeout=self.deadline)
            if self._clock() - started > self.deadline:
                raise CloudDeadlineExceeded(f"the cloud answered after {self.deadline} s")
            if callback is not None:
                result = callback(result)
        except Exception as exc:  # any failure of the cloud path: the edge answers instead
            late = isinstance(exc, CloudDeadlineExceeded)
            if not self._cloud_down:
                log.warning("cloud inference failed, the edge answers instead: %s", exc)
            else:
                log.debug("cloud inference failed: %s", exc)
            self._cloud_down = True
            return False, None, late
        if self._cloud_down:
            log.info("cloud inference answers again")
            self._cloud_down = False
        return True, result, False

    def _count(self, *, hard: bool, fallback: bool = False, late: bool = False) -> None:
        with self._lock:
            s = self._stats
            self._stats = replace(
                s,
                update_time=time.time(),
                inferences=s.inferences + 1,
                hard_examples=s.hard_examples + hard,
                cloud_calls=s.cloud_calls + hard,
                fallbacks=s.fallbacks + fallback,
                deadline_misses=s.deadline_misses + late,
            )

    # -------------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Stops the reporter (it reports what changed one last time) and closes the cloud
        client. Safe to call twice."""
        reporter, self.reporter = self.reporter, None
        if reporter is not None:
            reporter.stop()
        close = getattr(self.cloud, "close", None)
        if callable(close):
            close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
