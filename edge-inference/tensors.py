"""Tensors on the wire: the Open Inference Protocol's datatypes and numpy's, and the ways a
tensor travels — JSON ``data`` (flat row-major or nested lists), raw little-endian bytes (the
binary tensor extension and gRPC's ``raw_*_contents``) and gRPC's typed ``contents``.

Every decoder checks what the request declared (datatype, shape, element count, byte size)
and raises :class:`InvalidInput` naming the tensor and what was expected against what came."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import InvalidInput

__all__ = [
    "CONTENTS_FIELDS",
    "DTYPES",
    "datatype_from_config",
    "datatype_from_onnx",
    "datatype_of",
    "decode_contents",
    "decode_data",
    "decode_raw",
    "encode_data",
    "encode_raw",
    "shape_of",
]

# Explicit little-endian dtypes: the protocol's byte order whatever the host's.
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
_DATATYPES = {dtype: name for name, dtype in DTYPES.items()}

_ONNX = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

# gRPC InferTensorContents: which repeated field carries each datatype (FP16 has none).
CONTENTS_FIELDS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def datatype_of(dtype: np.dtype[Any]) -> str:
    """The protocol's name of a numpy dtype (``"FP32"`` for float32)."""
    name = _DATATYPES.get(dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype)
    if name is None:
        if dtype.kind in "SUO":
            return "BYTES"
        raise InvalidInput(f"numpy dtype {dtype} has no Open Inference Protocol datatype")
    return name


def datatype_from_onnx(onnx_type: str) -> str | None:
    """``"tensor(float)"`` (onnxruntime's NodeArg.type) -> ``"FP32"``; None if not a tensor
    type we can carry (sequences, maps, bfloat16)."""
    return _ONNX.get(onnx_type)


def datatype_from_config(data_type: str) -> str:
    """Triton's ``TYPE_FP32`` -> ``"FP32"`` (``TYPE_STRING`` is BYTES)."""
    name = data_type.removeprefix("TYPE_")
    name = "BYTES" if name == "STRING" else name
    if name not in DTYPES:
        raise ValueError(f"unknown data_type {data_type!r}")
    return name


def shape_of(name: str, shape: Any) -> tuple[int, ...]:
    """A request's ``shape``, checked: a list of non-negative integers."""
    if not isinstance(shape, list | tuple) or not all(type(d) is int and d >= 0 for d in shape):
        raise InvalidInput(
            f"input {name!r}: shape must be a list of non-negative integers, got {shape!r}"
        )
    return tuple(shape)


def _dtype(name: str, datatype: Any) -> np.dtype[Any]:
    dtype = DTYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise InvalidInput(
            f"input {name!r}: unknown datatype {datatype!r} (expected one of {', '.join(DTYPES)})"
        )
    return dtype


def _count_mismatch(name: str, shape: tuple[int, ...], count: int, got: str) -> InvalidInput:
    return InvalidInput(f"input {name!r}: shape {list(shape)} has {count} elements but {got}")


def decode_data(name: str, datatype: Any, shape: tuple[int, ...], data: Any) -> np.ndarray:
    """A JSON tensor's ``data`` (flat row-major or nested lists) as an array of ``shape``."""
    dtype = _dtype(name, datatype)
    if not isinstance(data, list):
        data = [data]  # a lone scalar
    try:
        # object arrays: np.array, since asarray would keep a list of lists as one object
        array = np.array(data, dtype=object) if dtype.kind == "O" else np.asarray(data, dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(f"input {name!r}: data is not a {datatype} tensor: {exc}") from None
    count = math.prod(shape)
    if array.size != count:
        raise _count_mismatch(name, shape, count, f"data has {array.size}")
    if dtype.kind == "O":
        array = np.array([_text(v) for v in array.reshape(-1)], dtype=object)
    return array.reshape(shape)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise InvalidInput(f"BYTES elements must be strings, got {value!r}")


def decode_raw(
    name: str, datatype: Any, shape: tuple[int, ...], raw: bytes | memoryview
) -> np.ndarray:
    """Raw little-endian row-major bytes (binary extension, ``raw_input_contents``)."""
    dtype = _dtype(name, datatype)
    count = math.prod(shape)
    if dtype.kind == "O":
        return _decode_bytes(name, shape, count, raw)
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(
            f"input {name!r}: shape {list(shape)} of {datatype} needs "
            f"{count * dtype.itemsize} bytes but {len(raw)} were sent"
        )
    array = np.frombuffer(raw, dtype=dtype)
    if not array.flags.aligned:  # the binary section starts after a JSON header of any size
        array = array.copy()
    return array.reshape(shape)


def _decode_bytes(
    name: str, shape: tuple[int, ...], count: int, raw: bytes | memoryview
) -> np.ndarray:
    """BYTES in the binary form: each element a 4-byte little-endian length, then its bytes."""
    items: list[str] = []
    view = memoryview(raw)
    offset = 0
    try:
        while offset < len(view):
            (length,) = struct.unpack_from("<I", view, offset)
            offset += 4
            if offset + length > len(view):
                raise struct.error("element overruns the data")
            items.append(bytes(view[offset : offset + length]).decode("utf-8", "replace"))
            offset += length
    except struct.error as exc:
        raise InvalidInput(f"input {name!r}: malformed BYTES data: {exc}") from None
    if len(items) != count:
        raise _count_mismatch(name, shape, count, f"{len(items)} BYTES elements were sent")
    return np.array(items, dtype=object).reshape(shape)


def decode_contents(name: str, datatype: Any, shape: tuple[int, ...], contents: Any) -> np.ndarray:
    """gRPC's typed ``InferTensorContents``: the repeated field of the datatype."""
    dtype = _dtype(name, datatype)
    field = CONTENTS_FIELDS.get(datatype)
    if field is None:
        raise InvalidInput(
            f"input {name!r}: {datatype} has no typed contents: send raw_input_contents"
        )
    values: Sequence[Any] = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise _count_mismatch(name, shape, count, f"{field} has {len(values)}")
    if dtype.kind == "O":
        return np.array([_text(v) for v in values], dtype=object).reshape(shape)
    try:
        return np.array(values, dtype=dtype).reshape(shape)
    except OverflowError as exc:
        raise InvalidInput(f"input {name!r}: {exc}") from None


def encode_raw(array: np.ndarray) -> bytes:
    """An output as raw little-endian bytes (BYTES as 4-byte length-prefixed elements)."""
    if array.dtype.kind in "OSU":
        parts: list[bytes] = []
        for value in array.reshape(-1):
            item = value if isinstance(value, bytes) else str(value).encode()
            parts.append(struct.pack("<I", len(item)))
            parts.append(item)
        return b"".join(parts)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array).tobytes()


def encode_data(array: np.ndarray) -> Any:
    """An output's JSON ``data``, flat row-major: the array itself where orjson's numpy
    support takes it (no Python list in between), else a list."""
    if array.dtype.kind in "OSU":
        return [
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            for v in array.reshape(-1)
        ]
    if array.dtype.kind in "biuf" and array.dtype.itemsize <= 8:
        return np.ascontiguousarray(array).reshape(-1)
    return array.reshape(-1).tolist()
