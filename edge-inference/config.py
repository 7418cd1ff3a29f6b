"""A model's ``config.pbtxt``, Triton's protobuf text format: a tolerant parser of the text
format and the subset of Triton's ModelConfig we honour — ``name``, ``platform``/``backend``,
``max_batch_size``, ``input``/``output``, ``version_policy``, ``dynamic_batching`` and
``default_model_filename``. Fields we do not use (``instance_group``, ``optimization``...)
are parsed and ignored, so a config written for Triton works here unchanged."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ConfigError
from .tensors import datatype_from_config

__all__ = ["ModelConfig", "TensorConfig", "VersionPolicy", "parse_config", "parse_text_format"]

PLATFORMS = {"onnxruntime_onnx"}
BACKENDS = {"onnxruntime"}


@dataclass(frozen=True)
class VersionPolicy:
    """Which of the versions present are served (Triton's default: the latest one)."""

    kind: Literal["latest", "all", "specific"] = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: Iterable[int]) -> list[int]:
        present = sorted(set(available))
        if self.kind == "all":
            return present
        if self.kind == "specific":
            return [v for v in present if v in self.versions]
        return present[-self.num_versions :]


@dataclass(frozen=True)
class TensorConfig:
    """An ``input``/``output`` entry; ``dims`` exclude the batch dim when max_batch_size > 0."""

    name: str
    datatype: str | None = None
    dims: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ModelConfig:
    """What a model's config says; ``max_batch_size`` None: decided from the ONNX graph."""

    name: str | None = None
    max_batch_size: int | None = None
    inputs: tuple[TensorConfig, ...] = ()
    outputs: tuple[TensorConfig, ...] = ()
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    max_queue_delay: float = 0.0  # seconds a batch may wait for more requests
    preferred_batch_sizes: tuple[int, ...] = ()
    model_filename: str = "model.onnx"


# ---------------------------------------------------------------------------- text format

_TOKEN = re.compile(
    r"""(?P<space>[ \t\r\f\v]+|\#[^\n]*)
      |(?P<newline>\n)
      |(?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
      |(?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)[fF]?)
      |(?P<ident>[A-Za-z_][\w.]*)
      |(?P<punct>[{}\[\]:,;<>])""",
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "0": "\0"}


def _tokens(text: str) -> list[tuple[str, str, int]]:
    tokens: list[tuple[str, str, int]] = []
    line, pos = 1, 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ConfigError(f"line {line}: unexpected character {text[pos]!r}")
        kind = match.lastgroup or ""
        if kind == "newline":
            line += 1
        elif kind != "space":
            tokens.append((kind, match.group(), line))
        pos = match.end()
    tokens.append(("end", "", line))
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.at = 0

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.at]

    def take(self, *expected: str) -> tuple[str, str, int]:
        token = self.tokens[self.at]
        if expected and token[1] not in expected:
            got = token[1] or "end of file"
            raise ConfigError(f"line {token[2]}: expected {' or '.join(expected)}, got {got!r}")
        self.at += 1
        return token

    def message(self, closing: str | None) -> dict[str, list[Any]]:
        fields: dict[str, list[Any]] = {}
        while True:
            kind, text, line = self.peek()
            if closing is not None and text == closing:
                self.at += 1
                return fields
            if kind == "end":
                if closing is None:
                    return fields
                raise ConfigError(f"line {line}: expected {closing!r}, got end of file")
            if kind != "ident":
                raise ConfigError(f"line {line}: expected a field name, got {text!r}")
            self.at += 1
            colon = self.peek()[1] == ":"
            if colon:
                self.at += 1
            values = self.value(text, colon)
            fields.setdefault(text, []).extend(values)
            if self.peek()[1] in (",", ";"):
                self.at += 1

    def value(self, name: str, colon: bool) -> list[Any]:
        kind, text, line = self.peek()
        if text in ("{", "<"):
            self.at += 1
            return [self.message("}" if text == "{" else ">")]
        if text == "[":
            self.at += 1
            items: list[Any] = []
            if self.peek()[1] == "]":
                self.at += 1
                return items
            while True:
                items.extend(self.value(name, True))
                if self.take(",", "]")[1] == "]":
                    return items
        if not colon:
            raise ConfigError(f"line {line}: expected ':' or '{{' after {name!r}, got {text!r}")
        self.at += 1
        if kind == "string":
            return [_unquote(text)]
        if kind == "number":
            return [_number(text)]
        if kind == "ident":
            lowered = text.lower()
            if lowered in ("true", "t"):
                return [True]
            if lowered in ("false", "f"):
                return [False]
            if lowered in ("inf", "infinity", "nan"):
                return [float(lowered)]
            return [text]  # an enum value
        raise ConfigError(f"line {line}: expected a value for {name!r}, got {text!r}")


def _unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body)


def _number(text: str) -> int | float:
    text = text.rstrip("fF") if not text.lower().startswith(("0x", "-0x", "+0x")) else text
    try:
        return int(text, 0)
    except ValueError:
        return float(text)


def parse_text_format(text: str) -> dict[str, list[Any]]:
    """Protobuf text format as nested dicts: each field name -> the list of its values
    (scalars, or dicts for messages), every field treated as possibly repeated."""
    return _Parser(text).message(None)


# ------------------------------------------------------------------------------ the subset


def _one(fields: dict[str, list[Any]], name: str, kind: type | tuple[type, ...]) -> Any:
    values = fields.get(name)
    if not values:
        return None
    value = values[-1]  # text format: the last occurrence of a singular field wins
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ConfigError(f"{name}: expected {_kind_name(kind)}, got {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {int: "an integer", str: "a string", dict: "a { ... } block"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _ints(fields: dict[str, list[Any]], name: str) -> tuple[int, ...]:
    values = fields.get(name, [])
    if not all(type(v) is int for v in values):
        raise ConfigError(f"{name}: expected integers, got {values!r}")
    return tuple(values)


def _tensors(fields: dict[str, list[Any]], name: str) -> tuple[TensorConfig, ...]:
    tensors: list[TensorConfig] = []
    for entry in fields.get(name, []):
        if not isinstance(entry, dict):
            raise ConfigError(f"{name}: expected a {{ ... }} block, got {entry!r}")
        tensor_name = _one(entry, "name", str)
        if not tensor_name:
            raise ConfigError(f"{name}: an entry has no name")
        data_type = _one(entry, "data_type", str)
        try:
            datatype = datatype_from_config(data_type) if data_type else None
        except ValueError as exc:
            raise ConfigError(f"{name} {tensor_name!r}: {exc}") from None
        dims = _ints(entry, "dims") if "dims" in entry else None
        if dims is not None and any(d < -1 or d == 0 for d in dims):
            raise ConfigError(
                f"{name} {tensor_name!r}: dims must be positive or -1, got {list(dims)}"
            )
        tensors.append(TensorConfig(tensor_name, datatype, dims))
    return tuple(tensors)


def _version_policy(fields: dict[str, list[Any]]) -> VersionPolicy:
    block = _one(fields, "version_policy", dict)
    if block is None:
        return VersionPolicy()
    if "all" in block:
        return VersionPolicy("all")
    if "specific" in block:
        specific = _one(block, "specific", dict) or {}
        versions = _ints(specific, "versions")
        if not versions or any(v < 1 for v in versions):
            raise ConfigError(
                f"version_policy specific: versions must be positive, got {list(versions)}"
            )
        return VersionPolicy("specific", versions=versions)
    if "latest" in block:
        latest = _one(block, "latest", dict) or {}
        count = _one(latest, "num_versions", int)
        if count is None or count < 1:
            raise ConfigError(f"version_policy latest: num_versions must be >= 1, got {count}")
        return VersionPolicy("latest", num_versions=count)
    raise ConfigError(f"version_policy: expected latest, all or specific, got {sorted(block)}")


def parse_config(text: str) -> ModelConfig:
    """The ModelConfig subset of a config.pbtxt; raises ConfigError saying what is wrong."""
    fields = parse_text_format(text)
    platform = _one(fields, "platform", str)
    backend = _one(fields, "backend", str)
    if platform is not None and platform not in PLATFORMS:
        raise ConfigError(f"platform {platform!r} is not served here (only onnxruntime_onnx)")
    if backend is not None and backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r} is not served here (only onnxruntime)")
    max_batch_size = _one(fields, "max_batch_size", int)
    if max_batch_size is not None and max_batch_size < 0:
        raise ConfigError(f"max_batch_size must be >= 0, got {max_batch_size}")
    delay_us = 0
    preferred: tuple[int, ...] = ()
    batching = _one(fields, "dynamic_batching", dict)
    if batching is not None:
        delay_us = _one(batching, "max_queue_delay_microseconds", int) or 0
        preferred = _ints(batching, "preferred_batch_size")
        if delay_us < 0 or any(p < 1 for p in preferred):
            raise ConfigError("dynamic_batching: delay and preferred sizes must be positive")
    return ModelConfig(
        name=_one(fields, "name", str),
        max_batch_size=max_batch_size,
        inputs=_tensors(fields, "input"),
        outputs=_tensors(fields, "output"),
        version_policy=_version_policy(fields),
        max_queue_delay=delay_us / 1e6,
        preferred_batch_sizes=preferred,
        model_filename=_one(fields, "default_model_filename", str) or "model.onnx",
    )
