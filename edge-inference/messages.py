"""Inference requests and responses as the handlers see them, and their two wire forms: REST
JSON with Triton's binary tensor extension, and the gRPC ``ModelInfer`` messages.

REST binary extension: with header ``Inference-Header-Content-Length: N`` the first N body
bytes are the JSON header and the rest the raw tensors, in input order, each input saying its
size in ``parameters.binary_data_size``. Outputs asked for with ``binary_data: true`` (or all
of them, with request parameter ``binary_data_output: true``) come back the same way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from .errors import InvalidInput
from .protos import grpc_predict_v2_pb2 as pb
from .tensors import (
    datatype_of,
    decode_contents,
    decode_data,
    decode_raw,
    encode_data,
    encode_raw,
    shape_of,
)

__all__ = [
    "InferRequest",
    "InferResponse",
    "OutputTensor",
    "RequestedOutput",
    "grpc_request",
    "grpc_response",
    "rest_request",
    "rest_response",
]


@dataclass(slots=True)
class RequestedOutput:
    name: str
    binary: bool | None = None  # None: the request's default


@dataclass(slots=True)
class InferRequest:
    """A decoded inference request: ``inputs`` maps each name to its array (whose dtype is
    the declared datatype's); ``version`` "" means whatever the model serves as latest."""

    model: str
    version: str
    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput] | None = None
    binary_output: bool = False


@dataclass(slots=True)
class OutputTensor:
    name: str
    array: np.ndarray
    binary: bool = False


@dataclass(slots=True)
class InferResponse:
    model: str
    version: str
    id: str | None
    outputs: list[OutputTensor]


# ------------------------------------------------------------------------------------ REST


def _parameters(item: dict[str, Any], what: str) -> dict[str, Any]:
    parameters = item.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise InvalidInput(f"{what}: parameters must be an object, got {parameters!r}")
    return parameters


def rest_request(model: str, version: str, body: bytes, header_length: int | None) -> InferRequest:
    """Decodes a REST infer body (JSON, or JSON header + binary tensors)."""
    if header_length is not None:
        if not 0 < header_length <= len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length {header_length} does not fit a body of "
                f"{len(body)} bytes"
            )
        header, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        header, binary = body, memoryview(b"")
    try:
        document = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON request: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidInput("the request must be a JSON object")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("the request needs a non-empty 'inputs' list")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for item in raw_inputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(f"each input needs a 'name', got {item!r:.200}")
        name = item["name"]
        if name in inputs:
            raise InvalidInput(f"input {name!r} is given twice")
        datatype = item.get("datatype")
        shape = shape_of(name, item.get("shape"))
        size = _parameters(item, f"input {name!r}").get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0:
                raise InvalidInput(f"input {name!r}: binary_data_size must be a byte count")
            if offset + size > len(binary):
                raise InvalidInput(
                    f"input {name!r}: binary_data_size {size} overruns the binary data "
                    f"({len(binary) - offset} bytes left)"
                )
            inputs[name] = decode_raw(name, datatype, shape, binary[offset : offset + size])
            offset += size
        elif "data" in item:
            inputs[name] = decode_data(name, datatype, shape, item["data"])
        else:
            raise InvalidInput(f"input {name!r} has neither 'data' nor binary_data_size")
    if offset != len(binary):
        raise InvalidInput(
            f"the binary data has {len(binary)} bytes but the inputs' binary_data_size "
            f"total {offset}"
        )
    parameters = _parameters(document, "request")
    outputs: list[RequestedOutput] | None = None
    raw_outputs = document.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise InvalidInput("'outputs' must be a list")
        outputs = []
        for item in raw_outputs:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise InvalidInput(f"each requested output needs a 'name', got {item!r:.200}")
            binary_flag = _parameters(item, f"output {item['name']!r}").get("binary_data")
            outputs.append(
                RequestedOutput(item["name"], None if binary_flag is None else bool(binary_flag))
            )
    request_id = document.get("id")
    return InferRequest(
        model,
        version,
        None if request_id is None else str(request_id),
        inputs,
        outputs,
        bool(parameters.get("binary_data_output", False)),
    )


def rest_response(response: InferResponse) -> tuple[bytes, int | None]:
    """The REST body and, when some outputs are binary, its JSON header's length."""
    document: dict[str, Any] = {"model_name": response.model, "model_version": response.version}
    if response.id is not None:
        document["id"] = response.id
    tensors: list[dict[str, Any]] = []
    binaries: list[Any] = []
    for output in response.outputs:
        array = output.array
        tensor: dict[str, Any] = {
            "name": output.name,
            "datatype": datatype_of(array.dtype),
            "shape": list(array.shape),
        }
        if output.binary:
            raw: Any = (
                encode_raw(array) if array.dtype.kind in "OSU" else np.ascontiguousarray(array)
            )
            tensor["parameters"] = {
                "binary_data_size": raw.nbytes if isinstance(raw, np.ndarray) else len(raw)
            }
            binaries.append(raw)
        else:
            tensor["data"] = encode_data(array)
        tensors.append(tensor)
    document["outputs"] = tensors
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not binaries:
        return header, None
    return b"".join([header, *binaries]), len(header)


# ------------------------------------------------------------------------------------ gRPC


def grpc_request(message: Any) -> InferRequest:
    """Decodes a ModelInferRequest: typed ``contents`` or ``raw_input_contents``."""
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs"
        )
    if not message.inputs:
        raise InvalidInput("the request has no inputs")
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(message.inputs):
        name = tensor.name
        if name in inputs:
            raise InvalidInput(f"input {name!r} is given twice")
        shape = shape_of(name, list(tensor.shape))
        if raw:
            inputs[name] = decode_raw(name, tensor.datatype, shape, raw[index])
        else:
            inputs[name] = decode_contents(name, tensor.datatype, shape, tensor.contents)
    outputs = [RequestedOutput(o.name) for o in message.outputs] or None
    return InferRequest(
        message.model_name, message.model_version, message.id or None, inputs, outputs
    )


def grpc_response(response: InferResponse) -> Any:
    """A ModelInferResponse with every output in ``raw_output_contents``."""
    message = pb.ModelInferResponse(
        model_name=response.model, model_version=response.version, id=response.id or ""
    )
    for output in response.outputs:
        array = output.array
        message.outputs.add(name=output.name, datatype=datatype_of(array.dtype), shape=array.shape)
        message.raw_output_contents.append(encode_raw(array))
    return message
