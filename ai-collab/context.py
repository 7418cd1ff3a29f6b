"""Worker configuration from environment variables, as Sedna's global manager injects them.

:class:`Context` reads a parameter as Sedna's ``Context.get_parameters`` does: ``name`` first,
then ``NAME.upper()``. :class:`WorkerConfig` and :class:`JointInferenceConfig` are the typed,
validated view a worker uses; a malformed value is a ``ValueError`` naming the variable.

Sedna's variables (reference ``sedna.md`` §1.5) keep their names and defaults. Orbiter adds:

- ``BIG_MODEL_NAME``: the Open Inference Protocol model name of the big model (default:
  ``SERVICE_NAME``, as Sedna's big-model URL was ``/<service_name>/predict``);
- ``BIG_MODEL_DEADLINE``: seconds a cloud request may take, reconnection included, before
  the edge answers instead (default 10; Sedna had no deadline, only 5 retries 3 s apart).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

__all__ = [
    "DEFAULT_BIG_MODEL_PORT",
    "DEFAULT_DEADLINE",
    "DEFAULT_LC_PERIOD",
    "MINING_MODES",
    "Context",
    "JointInferenceConfig",
    "WorkerConfig",
]

DEFAULT_BIG_MODEL_PORT = 5000
DEFAULT_LC_PERIOD = 30.0
DEFAULT_DEADLINE = 10.0
MINING_MODES = ("inference-then-mining", "mining-then-inference")


class Context:
    """Parameters from ``environ`` (default: ``os.environ``, read at each call)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = environ

    @property
    def environ(self) -> Mapping[str, str]:
        return os.environ if self._environ is None else self._environ

    def get_parameters(self, name: str, default: str | None = None) -> str | None:
        """``name``, else ``NAME.upper()``, else ``default``. An empty value counts as
        unset: Kubernetes renders an absent optional field as ``""``."""
        env = self.environ
        for key in (name, name.upper()):
            value = env.get(key)
            if value:
                return value
        return default

    def get_str(self, name: str) -> str | None:
        return self.get_parameters(name)

    def get_float(
        self, name: str, default: float, *, positive: bool = False, minimum: float | None = None
    ) -> float:
        """A finite number; ``ValueError`` naming the variable otherwise."""
        raw = self.get_parameters(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{name.upper()}={raw!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"{name.upper()}={raw!r} is not a finite number")
        if positive and value <= 0:
            raise ValueError(f"{name.upper()}={raw!r} must be > 0")
        if minimum is not None and value < minimum:
            raise ValueError(f"{name.upper()}={raw!r} must be >= {minimum}")
        return value

    def get_int(self, name: str, default: int, *, lo: int = 0, hi: int | None = None) -> int:
        """An integer in [lo, hi]; ``ValueError`` naming the variable otherwise."""
        raw = self.get_parameters(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"{name.upper()}={raw!r} is not an integer") from None
        if value < lo or (hi is not None and value > hi):
            bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
            raise ValueError(f"{name.upper()}={raw!r} is out of range {bound}")
        return value


@dataclass(frozen=True)
class WorkerConfig:
    """What every worker the global manager creates is told."""

    worker_name: str | None = None  # WORKER_NAME
    service_name: str | None = None  # SERVICE_NAME, else JOB_NAME
    namespace: str = "default"  # NAMESPACE
    lc_server: str | None = None  # LC_SERVER; None: nothing to report to
    model_url: str | None = None  # MODEL_URL

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        return cls(**_worker_fields(Context(environ)))


def _worker_fields(ctx: Context) -> dict[str, Any]:
    return {
        "worker_name": ctx.get_str("WORKER_NAME"),
        "service_name": ctx.get_str("SERVICE_NAME") or ctx.get_str("JOB_NAME"),
        "namespace": ctx.get_parameters("NAMESPACE") or "default",
        "lc_server": ctx.get_str("LC_SERVER"),
        "model_url": ctx.get_str("MODEL_URL"),
    }


@dataclass(frozen=True)
class JointInferenceConfig(WorkerConfig):
    """The edge ("little model") worker of a JointInferenceService."""

    big_model_ip: str = "127.0.0.1"  # BIG_MODEL_IP (Sedna: the host's own IP)
    big_model_port: int = DEFAULT_BIG_MODEL_PORT  # BIG_MODEL_PORT
    big_model_name: str | None = None  # BIG_MODEL_NAME, else SERVICE_NAME
    deadline: float = DEFAULT_DEADLINE  # BIG_MODEL_DEADLINE, seconds
    hem_name: str | None = None  # HEM_NAME; None: no mining (every example easy)
    hem_parameters: str | None = None  # HEM_PARAMETERS: JSON [{key, value}] (see mining)
    mining_mode: str = MINING_MODES[0]  # MINING_MODE
    lc_period: float = DEFAULT_LC_PERIOD  # LC_PERIOD, seconds

    def __post_init__(self) -> None:
        if self.mining_mode not in MINING_MODES:
            raise ValueError(
                f"MINING_MODE={self.mining_mode!r} is not one of {', '.join(MINING_MODES)}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        ctx = Context(environ)
        worker = _worker_fields(ctx)
        return cls(
            **worker,
            big_model_ip=ctx.get_parameters("BIG_MODEL_IP", "127.0.0.1") or "127.0.0.1",
            big_model_port=ctx.get_int("BIG_MODEL_PORT", DEFAULT_BIG_MODEL_PORT, lo=1, hi=65535),
            big_model_name=ctx.get_str("BIG_MODEL_NAME") or worker["service_name"],
            deadline=ctx.get_float("BIG_MODEL_DEADLINE", DEFAULT_DEADLINE, positive=True),
            hem_name=ctx.get_str("HEM_NAME"),
            hem_parameters=ctx.get_str("HEM_PARAMETERS"),
            mining_mode=ctx.get_parameters("MINING_MODE", MINING_MODES[0]) or MINING_MODES[0],
            lc_period=ctx.get_float("LC_PERIOD", DEFAULT_LC_PERIOD, positive=True),
        )
