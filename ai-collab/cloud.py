"""The cloud side of joint inference: a small Open Inference Protocol client for the big
model, and the server that hosts it.

There is no separate "big model service" as in Sedna: the big model is an ONNX file served
by ``orbiter.inference`` (REST ``POST /v2/models/{name}/infer``). :class:`CloudClient` is a
synchronous client over one keep-alive connection (stdlib ``http.client``) with a deadline
per request that covers connecting, sending and reading; :func:`big_model_server` builds the
server for one model file.

Every failure is a :class:`CloudError` (:class:`CloudDeadlineExceeded` for the deadline), so
the caller has one thing to catch to fall back to the edge. A request that fails on a reused
connection (the server closed it while idle) is retried once on a fresh one, within the
same deadline; nothing else is retried: the edge's answer is the fallback, not a wait.
"""

from __future__ import annotations

import http.client
import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import orjson

from .context import DEFAULT_BIG_MODEL_PORT, DEFAULT_DEADLINE, JointInferenceConfig

if TYPE_CHECKING:
    from orbiter.inference import InferenceServer

__all__ = [
    "CloudClient",
    "CloudDeadlineExceeded",
    "CloudError",
    "CloudModel",
    "big_model_server",
]

MAX_REPLY = 64 * 1024 * 1024  # bytes read from the big model per answer, at most

# Open Inference Protocol datatypes <-> numpy (BYTES is not a numeric tensor: not sent here).
_DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
_DATATYPES = {np.dtype(t): name for name, t in _DTYPES.items()}
# What a server closing an idle keep-alive connection looks like on the next request.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class CloudError(Exception):
    """The cloud did not answer usably (unreachable, an error status, a malformed reply)."""


class CloudDeadlineExceeded(CloudError):
    """The cloud did not answer within the deadline."""


@runtime_checkable
class CloudModel(Protocol):
    """What joint inference asks the cloud: the big model's output for ``data``, within
    ``timeout`` seconds (None: no limit); raises on failure."""

    def infer(self, data: Any, *, timeout: float | None = None) -> Any: ...


class CloudClient:
    """Open Inference Protocol client for model ``model`` at ``http://host:port``.

    ``data`` is one array (the model's single input; its name and datatype are read once
    from the model's metadata unless ``input_name`` is given) or a mapping of input names to
    arrays. The answer is the output ``output_name`` (default: the first) as an array of its
    shape. Thread-safe: callers share the one connection in turn.
    """

    def __init__(
        self,
        host: str,
        port: int = DEFAULT_BIG_MODEL_PORT,
        model: str = "",
        *,
        version: str = "",
        input_name: str | None = None,
        output_name: str | None = None,
        timeout: float | None = DEFAULT_DEADLINE,
    ) -> None:
        if not model:
            raise ValueError("the big model's name is needed: set BIG_MODEL_NAME or SERVICE_NAME")
        self.host, self.port, self.model = host, port, model
        self.timeout = timeout
        self.input_name = input_name
        self.output_name = output_name
        self._input_datatype: str | None = None
        base = f"/v2/models/{model}" + (f"/versions/{version}" if version else "")
        self._infer_path = f"{base}/infer"
        self._metadata_path = base
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()
        self.connections = 0  # opened so far: keep-alive reuse is observable

    @classmethod
    def from_config(cls, config: JointInferenceConfig) -> CloudClient:
        return cls(
            config.big_model_ip,
            config.big_model_port,
            config.big_model_name or "",
            timeout=config.deadline,
        )

    def infer(self, data: Any, *, timeout: float | None = None) -> np.ndarray:
        """The big model's output for ``data``; ``timeout`` overrides the client's."""
        deadline = _deadline(self.timeout if timeout is None else timeout)
        with self._lock:
            if self.input_name is None and not isinstance(data, Mapping):
                self._discover(deadline)
            body = orjson.dumps(self._request(data), option=orjson.OPT_SERIALIZE_NUMPY)
            document = self._exchange("POST", self._infer_path, body, deadline)
        return self._output(document)

    def metadata(self, *, timeout: float | None = None) -> dict[str, Any]:
        """The model's metadata document (``GET /v2/models/{name}``)."""
        deadline = _deadline(self.timeout if timeout is None else timeout)
        with self._lock:
            return self._exchange("GET", self._metadata_path, None, deadline)

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> CloudClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------ internals

    def _discover(self, deadline: float | None) -> None:
        inputs = self._exchange("GET", self._metadata_path, None, deadline).get("inputs")
        if not isinstance(inputs, list) or not inputs or not isinstance(inputs[0], dict):
            raise CloudError(f"model {self.model!r}: its metadata lists no inputs")
        if len(inputs) > 1:
            names = [i.get("name") for i in inputs]
            raise CloudError(
                f"model {self.model!r} has inputs {names}: pass a mapping of name to array"
            )
        self.input_name = str(inputs[0].get("name"))
        datatype = inputs[0].get("datatype")
        self._input_datatype = datatype if datatype in _DTYPES else None

    def _request(self, data: Any) -> dict[str, Any]:
        named: list[tuple[str, Any, str | None]] = (
            [(str(k), v, None) for k, v in data.items()]
            if isinstance(data, Mapping)
            else [(str(self.input_name), data, self._input_datatype)]
        )
        tensors = []
        for name, value, wanted in named:
            array = np.asarray(value)
            if wanted is not None:
                array = array.astype(_DTYPES[wanted], copy=False)
            datatype = _DATATYPES.get(array.dtype)
            if datatype is None:
                raise CloudError(f"input {name!r}: dtype {array.dtype} has no protocol datatype")
            tensors.append(
                {
                    "name": name,
                    "shape": list(array.shape),
                    "datatype": datatype,
                    "data": np.ascontiguousarray(array).reshape(-1),
                }
            )
        request: dict[str, Any] = {"inputs": tensors}
        if self.output_name is not None:
            request["outputs"] = [{"name": self.output_name}]
        return request

    def _output(self, document: dict[str, Any]) -> np.ndarray:
        outputs = document.get("outputs")
        if not isinstance(outputs, list) or not outputs:
            raise CloudError(f"model {self.model!r}: the reply has no outputs")
        wanted = [o for o in outputs if isinstance(o, dict)]
        if self.output_name is not None:
            wanted = [o for o in wanted if o.get("name") == self.output_name]
        if not wanted:
            raise CloudError(f"model {self.model!r}: no output {self.output_name!r} in the reply")
        tensor = wanted[0]
        dtype = _DTYPES.get(tensor.get("datatype", ""))
        try:
            if dtype is None:
                raise ValueError(f"datatype {tensor.get('datatype')!r} is not numeric")
            return np.asarray(tensor["data"], dtype=dtype).reshape(tensor["shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CloudError(f"model {self.model!r}: malformed output tensor ({exc})") from None

    def _exchange(
        self, method: str, path: str, body: bytes | None, deadline: float | None
    ) -> dict[str, Any]:
        """One request and its JSON reply, reconnecting once if a reused connection was
        closed by the server meanwhile."""
        for attempt in range(2):
            reused = self._conn is not None
            try:
                status, payload = self._roundtrip(method, path, body, deadline)
                break
            except _STALE:
                self._drop()
                if attempt or not reused:
                    raise CloudError(f"{self._where()}: the connection was closed") from None
        try:
            document = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise CloudError(f"{self._where()}: HTTP {status}, reply is not JSON") from None
        if status != 200:
            message = document.get("error") if isinstance(document, dict) else None
            raise CloudError(f"{self._where()}{path}: HTTP {status}: {message or payload[:200]!r}")
        if not isinstance(document, dict):
            raise CloudError(f"{self._where()}: the reply is not a JSON object")
        return document

    def _roundtrip(
        self, method: str, path: str, body: bytes | None, deadline: float | None
    ) -> tuple[int, bytes]:
        try:
            conn = self._connection(deadline)
            conn.putrequest(method, path, skip_accept_encoding=True)
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(len(body or b"")))
            conn.endheaders(body)
            self._arm(deadline)
            response = conn.getresponse()
            payload = response.read(MAX_REPLY + 1)
            if len(payload) > MAX_REPLY:  # the cloud's reply is a peer's size: never unbounded
                self._drop()
                raise CloudError(f"{self._where()}: reply over {MAX_REPLY} bytes")
            if response.will_close:
                self._drop()
        except _STALE:
            raise
        except TimeoutError:
            self._drop()
            raise CloudDeadlineExceeded(f"{self._where()}: no answer within the deadline") from None
        except (OSError, http.client.HTTPException) as exc:
            self._drop()
            raise CloudError(f"{self._where()}: {exc or type(exc).__name__}") from None
        if deadline is not None and time.monotonic() > deadline:
            raise CloudDeadlineExceeded(f"{self._where()}: answered past the deadline")
        return response.status, payload

    def _connection(self, deadline: float | None) -> http.client.HTTPConnection:
        if self._conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=_left(deadline))
            conn.connect()
            # Small requests and replies: Nagle's algorithm would hold each for ~40 ms.
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conn = conn
            self.connections += 1
        else:
            self._arm(deadline)
        return self._conn

    def _arm(self, deadline: float | None) -> None:
        if self._conn is not None and self._conn.sock is not None:
            self._conn.sock.settimeout(_left(deadline))

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _where(self) -> str:
        return f"big model {self.model!r} at {self.host}:{self.port}"


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _left(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the deadline has passed")
    return left


def big_model_server(
    model_path: str | os.PathLike[str],
    *,
    name: str,
    port: int = DEFAULT_BIG_MODEL_PORT,
    host: str = "0.0.0.0",
    **options: Any,
) -> InferenceServer:
    """An ``orbiter.inference`` server (REST only) serving ``model_path`` as ``name``; start
    it with ``async with`` or ``await server.serve_forever()``. ``options`` go to
    :class:`~orbiter.inference.InferenceServer`."""
    from orbiter.inference import InferenceServer

    settings: dict[str, Any] = {"grpc_port": None, "metrics_port": None} | options
    server = InferenceServer(None, http_port=port, host=host, **settings)
    server.repository.add_version(name, 1, model_path)
    return server
