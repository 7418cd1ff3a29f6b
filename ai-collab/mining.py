"""Hard-example mining (HEM): Sedna's filters with Sedna's formulas, names and defaults.

A filter is called with one inference result and answers ``True`` for a hard example.
Invalid input answers ``False`` (as in Sedna), and a filter never raises on malformed data.

Name (alias), when an example is hard, and defaults:

- ``Threshold`` (``ThresholdFilter``), detection: the mean box score < ``threshold`` (0.5);
  boxes are ``[x1, y1, x2, y2, score, label]``, each with more than 4 fields;
- ``CrossEntropy`` (``CrossEntropyFilter``), classification: 1 + sum(p ln p) / ln K <
  ``threshold_cross_entropy`` (0.5), for K class probabilities each in [0, 1]; 0 ln 0 = 0;
- ``IBT`` (``IBTFilter``), detection: #(box score <= ``threshold_box``) / #boxes >=
  1 - ``threshold_img`` (0.5 and 0.5); every score in [0, 1];
- ``Random`` (``RandomFilter``): with probability ``random_ratio`` (0.3); ``seed`` (an
  Orbiter addition) makes the draws reproducible;
- ``CloudOnly`` / ``EdgeOnly`` (``CloudOnlyFilter`` / ``EdgeOnlyFilter``): always / never.

Where Orbiter differs from Sedna, on purpose:

- parameters arrive from the CRD as ``[{key, value}]`` strings and are **parsed to numbers**
  (Sedna's Random compared the raw string); a non-numeric value, or a name the filter does
  not take, is a :class:`ParameterError` naming it (Sedna swallowed unknown names);
- CrossEntropy with K = 1 is "not hard": one class carries no uncertainty, and ln 1 = 0
  would divide by zero (Sedna raised). A zero probability contributes 0 (Sedna's ``log(0)``
  raised). A single-row batch ``(1, K)`` is read as its row;
- IBT compares with a 1e-9 tolerance, so decimal thresholds behave as written
  (1 - 0.7 is 0.30000000000000004 in binary floating point: 3 low boxes of 10 are hard).

Build one by name with :func:`hem_from_spec` or from ``HEM_NAME``/``HEM_PARAMETERS`` with
:func:`hem_from_env`.
"""

from __future__ import annotations

import json
import math
import numbers
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Self, TypeAlias

import numpy as np

from .context import Context
from .registry import ClassType, Registry, registry

__all__ = [
    "IBT",
    "CloudOnly",
    "CrossEntropy",
    "EdgeOnly",
    "HardExampleFilter",
    "HemFilter",
    "ParameterError",
    "Random",
    "Threshold",
    "hem_from_env",
    "hem_from_spec",
    "parse_parameters",
]

_TOLERANCE = 1e-9

# What JointInference calls: any callable from an inference result to "is it hard?".
HemFilter: TypeAlias = Callable[[Any], bool]


class ParameterError(ValueError):
    """A HEM parameter is unknown or malformed; names the filter, the parameter and value."""

    def __init__(self, message: str, parameter: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.value = value


def _number(filter_name: str, parameter: str, value: Any) -> float:
    """A finite float from a number or its string form (how the CRD carries it)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real | str):
        raise ParameterError(
            f"{filter_name}: parameter {parameter}={value!r} is not a number", parameter, value
        )
    try:
        number = float(value)
    except ValueError:
        raise ParameterError(
            f"{filter_name}: parameter {parameter}={value!r} is not a number", parameter, value
        ) from None
    if not math.isfinite(number):
        raise ParameterError(
            f"{filter_name}: parameter {parameter}={value!r} is not a finite number",
            parameter,
            value,
        )
    return number


def _integer(filter_name: str, parameter: str, value: Any) -> int:
    number = _number(filter_name, parameter, value)
    if not number.is_integer():
        raise ParameterError(
            f"{filter_name}: parameter {parameter}={value!r} is not an integer", parameter, value
        )
    return int(number)


def _fraction(filter_name: str, parameter: str, value: Any) -> float:
    number = _number(filter_name, parameter, value)
    if not 0.0 <= number <= 1.0:
        raise ParameterError(
            f"{filter_name}: parameter {parameter}={value!r} is not in [0, 1]", parameter, value
        )
    return number


def _box_scores(infer_result: Any) -> list[float] | None:
    """The score (5th field) of each box, or None when the input is not a list of boxes."""
    boxes = list(infer_result)
    if not boxes or not all(len(box) > 4 for box in boxes):
        return None
    return [float(box[4]) for box in boxes]


class HardExampleFilter(ABC):
    """A hard-example filter; ``PARAMETERS`` are the names it takes from the CRD."""

    NAME: ClassVar[str]
    PARAMETERS: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def __call__(self, infer_result: Any = None) -> bool:
        """True for a hard example; False for an easy one or invalid input."""

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, Any]) -> Self:
        """Built from CRD parameters (strings or numbers); ``ParameterError`` for a name
        this filter does not take or a value that does not parse."""
        unknown = sorted(set(parameters) - set(cls.PARAMETERS))
        if unknown:
            takes = ", ".join(cls.PARAMETERS) or "no parameters"
            raise ParameterError(
                f"{cls.NAME}: unknown parameter {', '.join(map(repr, unknown))} (it takes {takes})",
                unknown[0],
                parameters[unknown[0]],
            )
        return cls(**parameters)

    def __repr__(self) -> str:
        args = ", ".join(f"{p}={getattr(self, p)!r}" for p in self.PARAMETERS)
        return f"{self.NAME}({args})"


@registry.register(ClassType.HEM, alias="ThresholdFilter")
class Threshold(HardExampleFilter):
    """Detection: hard when the mean score of the boxes is below ``threshold``."""

    NAME = "Threshold"
    PARAMETERS = ("threshold",)

    def __init__(self, threshold: float | str = 0.5) -> None:
        self.threshold = _number(self.NAME, "threshold", threshold)

    def __call__(self, infer_result: Any = None) -> bool:
        try:
            scores = _box_scores(infer_result)
            return scores is not None and math.fsum(scores) / len(scores) < self.threshold
        except Exception:  # malformed input of any kind is "not hard", never an error
            return False


@registry.register(ClassType.HEM, alias="CrossEntropyFilter")
class CrossEntropy(HardExampleFilter):
    """Classification: hard when 1 - normalised entropy < ``threshold_cross_entropy``."""

    NAME = "CrossEntropy"
    PARAMETERS = ("threshold_cross_entropy",)

    def __init__(self, threshold_cross_entropy: float | str = 0.5) -> None:
        self.threshold_cross_entropy = _number(
            self.NAME, "threshold_cross_entropy", threshold_cross_entropy
        )

    @staticmethod
    def confidence(infer_result: Any) -> float | None:
        """1 + Σ pᵢ ln pᵢ / ln K (1: certain, 0: uniform); None for invalid input or K = 1."""
        try:
            p = np.asarray(infer_result, dtype=np.float64)
        except Exception:
            return None
        if p.ndim == 2 and p.shape[0] == 1:
            p = p[0]
        if p.ndim != 1 or p.size < 2 or not bool(np.all((p >= 0.0) & (p <= 1.0))):
            return None
        nonzero = p[p > 0.0]
        return 1.0 + float(np.sum(nonzero * np.log(nonzero))) / math.log(p.size)

    def __call__(self, infer_result: Any = None) -> bool:
        confidence = self.confidence(infer_result)
        return confidence is not None and confidence < self.threshold_cross_entropy


@registry.register(ClassType.HEM, alias="IBTFilter")
class IBT(HardExampleFilter):
    """Detection ("image-box threshold"): hard when at least a 1 - ``threshold_img`` share
    of the boxes score ``threshold_box`` or less."""

    NAME = "IBT"
    PARAMETERS = ("threshold_img", "threshold_box")

    def __init__(self, threshold_img: float | str = 0.5, threshold_box: float | str = 0.5) -> None:
        self.threshold_img = _number(self.NAME, "threshold_img", threshold_img)
        self.threshold_box = _number(self.NAME, "threshold_box", threshold_box)

    def __call__(self, infer_result: Any = None) -> bool:
        try:
            scores = _box_scores(infer_result)
        except Exception:
            return False
        if scores is None or not all(0.0 <= s <= 1.0 for s in scores):
            return False
        low = sum(1 for s in scores if s <= self.threshold_box)
        return low / len(scores) >= 1.0 - self.threshold_img - _TOLERANCE


@registry.register(ClassType.HEM, alias="RandomFilter")
class Random(HardExampleFilter):
    """Hard with probability ``random_ratio``; ``seed`` (an Orbiter addition) makes the
    draws reproducible."""

    NAME = "Random"
    PARAMETERS = ("random_ratio", "seed")

    def __init__(self, random_ratio: float | str = 0.3, seed: int | str | None = None) -> None:
        self.random_ratio = _fraction(self.NAME, "random_ratio", random_ratio)
        self.seed = None if seed is None else _integer(self.NAME, "seed", seed)
        self._rng = random.Random(self.seed)

    def __call__(self, infer_result: Any = None) -> bool:
        return self._rng.random() < self.random_ratio


@registry.register(ClassType.HEM, alias="CloudOnlyFilter")
class CloudOnly(HardExampleFilter):
    """Every example is hard: everything goes to the cloud."""

    NAME = "CloudOnly"

    def __call__(self, infer_result: Any = None) -> bool:
        return True


@registry.register(ClassType.HEM, alias="EdgeOnlyFilter")
class EdgeOnly(HardExampleFilter):
    """No example is hard: everything stays on the edge."""

    NAME = "EdgeOnly"

    def __call__(self, infer_result: Any = None) -> bool:
        return False


def parse_parameters(
    parameters: Iterable[Mapping[str, Any]] | Mapping[str, Any] | str | None,
    what: str = "HEM_PARAMETERS",
) -> dict[str, Any]:
    """CRD parameters as a dict: a ``[{key, value}]`` list (or its JSON text, as in
    ``HEM_PARAMETERS``), or a mapping already. ``ValueError`` naming ``what`` when the
    shape is wrong or a key is given twice. Values are left as given: filters parse them."""
    if parameters is None:
        return {}
    if isinstance(parameters, str):
        if not parameters.strip():
            return {}
        try:
            parameters = json.loads(parameters)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{what} is not JSON: {exc}") from None
        if parameters is None:
            return {}
    if isinstance(parameters, Mapping):
        return dict(parameters)
    if not isinstance(parameters, list | tuple):
        raise ValueError(f"{what} must be a list of {{key, value}}, got {parameters!r:.200}")
    out: dict[str, Any] = {}
    for index, item in enumerate(parameters):
        if not isinstance(item, Mapping) or not isinstance(item.get("key"), str):
            raise ValueError(f"{what}[{index}]: expected {{key, value}}, got {item!r:.200}")
        key = item["key"]
        if key in out:
            raise ValueError(f"{what}[{index}]: parameter {key!r} is given twice")
        if "value" not in item:
            raise ValueError(f"{what}[{index}]: parameter {key!r} has no value")
        out[key] = item["value"]
    return out


def hem_from_spec(
    name: str,
    parameters: Iterable[Mapping[str, Any]] | Mapping[str, Any] | str | None = None,
    *,
    algorithms: Registry = registry,
    **overrides: Any,
) -> HemFilter:
    """The filter registered as ``name`` (or an alias), built from CRD ``parameters`` with
    code-level ``overrides`` applied on top (Sedna's precedence). Unknown names are a
    ``ValueError`` listing the known filters. A filter of one's own registered under
    ``ClassType.HEM`` gets the parameters as keyword arguments, unparsed."""
    cls = algorithms.get_cls(ClassType.HEM, name)
    merged = parse_parameters(parameters) | overrides
    if isinstance(cls, type) and issubclass(cls, HardExampleFilter):
        return cls.from_parameters(merged)
    built: HemFilter = cls(**merged)
    return built


def hem_from_env(environ: Mapping[str, str] | None = None, **overrides: Any) -> HemFilter | None:
    """The filter named by ``HEM_NAME`` with ``HEM_PARAMETERS``; None when ``HEM_NAME`` is
    unset (no mining, as in Sedna)."""
    ctx = Context(environ)
    name = ctx.get_parameters("HEM_NAME")
    if name is None:
        return None
    return hem_from_spec(name, ctx.get_parameters("HEM_PARAMETERS"), **overrides)
