"""The joint-inference worker processes a JointInferenceService's Deployments run::

    python -m orbiter.collab.workers joint-cloud   # the big model, behind orbiter.inference
    python -m orbiter.collab.workers joint-edge    # the little model, hard-example mining, and
                                                   # the endpoint the node's applications call

Both are configured by the environment the global manager injects (reference ``sedna.md``
§1.5), print ``serving: http HOST:PORT`` on stdout once they listen (port 0 binds a free
port: read it there), serve until SIGTERM or SIGINT and then exit 0. A configuration error
(``MODEL_URL`` missing or unloadable, an unknown filter, a malformed number) exits 2 with one
line on stderr naming the problem, so the pod's logs say why it is crash-looping.

``joint-cloud``:

- ``MODEL_URL``: the big model's ONNX file (required);
- ``BIG_MODEL_NAME``, else ``SERVICE_NAME``: the Open Inference Protocol model name;
- ``BIG_MODEL_BIND_PORT`` (5000), ``BIG_MODEL_BIND_IP``: the address to listen on. Sedna
  binds the host's IP; Orbiter binds 127.0.0.1 unless told (pods run as processes on the
  node, whose podIP is 127.0.0.1): set ``0.0.0.0`` to take requests from other machines.

``joint-edge``: everything :class:`~orbiter.collab.JointInferenceConfig` reads
(``MODEL_URL`` required, ``SERVICE_NAME`` required, ``BIG_MODEL_IP``, ``BIG_MODEL_PORT``,
``BIG_MODEL_NAME``, ``BIG_MODEL_DEADLINE``, ``HEM_NAME``, ``HEM_PARAMETERS``,
``MINING_MODE``; ``LC_SERVER``, ``WORKER_NAME``, ``NAMESPACE``, ``LC_PERIOD`` for the reports
to the local controller, started when ``LC_SERVER`` is set), and Orbiter's extensions:

- ``EDGE_BIND_PORT`` (5001), ``EDGE_BIND_IP`` (127.0.0.1): the edge's own Open Inference
  Protocol endpoint. Sedna's edge worker reads a video URL and calls no one back; here the
  applications on the node send samples to ``POST /v2/models/{SERVICE_NAME}/infer`` (JSON
  tensors, one example per request, the one input the little model takes) and get the final
  result as an output named after the model's output, with response ``parameters``
  ``{"is_hard_example": bool, "answered_by": "cloud" | "edge"}``. Also served:
  ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}`` and its ``/ready``.
- ``POST_PROCESS`` (``softmax``): the callback applied to the edge's and the cloud's output
  (a name registered as ``ClassType.CALLBACK``; ``none`` for the raw output). The filters
  judge probabilities, so for classifiers answering logits the default is what they need.

``LOG_LEVEL`` (INFO) sets the level of the log lines on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiohttp import web

from .context import Context, JointInferenceConfig
from .estimators import OnnxEstimator
from .joint import InferenceResult, JointInference
from .mining import hem_from_spec
from .registry import ClassType, registry

__all__ = [
    "CONFIG_ERROR",
    "DEFAULT_EDGE_PORT",
    "EdgeEndpoint",
    "WorkerConfigError",
    "main",
    "run_cloud",
    "run_edge",
]

log = logging.getLogger("orbiter.collab.workers")

CONFIG_ERROR = 2  # the exit status of a worker that cannot start as configured
DEFAULT_EDGE_PORT = 5001  # next to the big model's 5000; the inference server's are 8000-8002
DEFAULT_HOST = "127.0.0.1"
MAX_REQUEST_BYTES = 16 * 1024 * 1024


class WorkerConfigError(Exception):
    """The environment does not describe a worker that can start; the message says why."""


def _config(build: Callable[[], Any]) -> Any:
    """``build()``, with the configuration's ``ValueError`` turned into ours."""
    try:
        return build()
    except ValueError as exc:
        raise WorkerConfigError(str(exc)) from None


def _model_file(ctx: Context) -> str:
    url = ctx.get_str("MODEL_URL")
    if url is None:
        raise WorkerConfigError("MODEL_URL is not set: it names the model's ONNX file")
    if not Path(url).is_file():
        raise WorkerConfigError(f"MODEL_URL={url!r}: no such file")
    return url


def _port(ctx: Context, name: str, default: int) -> int:
    value: int = _config(lambda: ctx.get_int(name, default, lo=0, hi=65535))
    return value


async def _until_stopped() -> None:
    """Returns at SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _announce(host: str, port: int) -> None:
    print(f"serving: http {host}:{port}", flush=True)


# ------------------------------------------------------------------------------ the cloud


async def run_cloud(environ: Mapping[str, str] | None = None) -> None:
    """The big model, served by ``orbiter.inference`` until SIGTERM."""
    from .cloud import big_model_server

    ctx = Context(environ)
    model_url = _model_file(ctx)
    name = ctx.get_str("BIG_MODEL_NAME") or ctx.get_str("SERVICE_NAME")
    if name is None:
        raise WorkerConfigError("neither BIG_MODEL_NAME nor SERVICE_NAME is set: the model's name")
    port = _port(ctx, "BIG_MODEL_BIND_PORT", 5000)
    host = ctx.get_str("BIG_MODEL_BIND_IP") or DEFAULT_HOST
    server = _config(lambda: big_model_server(model_url, name=name, port=port, host=host))
    await server.start()
    try:
        if not server.service.model_ready(name):
            reasons = [row.get("reason") for row in server.repository.index() if row.get("reason")]
            raise WorkerConfigError(f"MODEL_URL={model_url!r}: cannot load: {'; '.join(reasons)}")
        assert server.http_port is not None
        log.info("big model %r from %s", name, model_url)
        _announce(host, server.http_port)
        await _until_stopped()
    finally:
        await server.stop()


# ------------------------------------------------------------------------------- the edge


def _signature(args: list[Any]) -> list[dict[str, Any]]:
    """onnxruntime's NodeArgs as protocol metadata (symbolic dimensions as -1)."""
    from orbiter.inference.tensors import datatype_from_onnx

    return [
        {
            "name": a.name,
            "datatype": datatype_from_onnx(a.type) or a.type,
            "shape": [d if isinstance(d, int) else -1 for d in a.shape],
        }
        for a in args
    ]


def _json(document: Any, status: int = 200) -> web.Response:
    body = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    return web.Response(body=body, status=status, content_type="application/json")


def _error(message: str, status: int) -> web.Response:
    return _json({"error": message}, status)


class EdgeEndpoint:
    """The edge worker's Open Inference Protocol endpoint for model ``name``: each request is
    one :meth:`JointInference.inference`, run on one worker thread (it blocks on the cloud)."""

    def __init__(
        self, name: str, ji: JointInference, post_process: str | None, session: Any
    ) -> None:
        self.name = name
        self.ji = ji
        self.post_process = post_process
        self.inputs = _signature(session.get_inputs())
        self.outputs = _signature(session.get_outputs())
        # The estimator fetches its first output (OnnxEstimator's default).
        self.output_name = str(self.outputs[0]["name"])
        self.ready = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="joint-inference")
        self.app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        routes = [
            web.get("/v2/health/live", self._live),
            web.get("/v2/health/ready", self._ready),
            web.get("/v2/models/{name}", self._metadata),
            web.get("/v2/models/{name}/ready", self._model_ready),
            web.post("/v2/models/{name}/infer", self._infer),
        ]
        self.app.add_routes(routes)

    def _unknown(self, request: web.Request) -> web.Response | None:
        if request.match_info["name"] == self.name:
            return None
        return _error(f"unknown model {request.match_info['name']!r}: this is {self.name!r}", 404)

    async def _live(self, request: web.Request) -> web.Response:
        return _json({"live": True})

    async def _ready(self, request: web.Request) -> web.Response:
        return _json({"ready": self.ready}, 200 if self.ready else 400)

    async def _model_ready(self, request: web.Request) -> web.Response:
        return self._unknown(request) or _json({"name": self.name, "ready": self.ready})

    async def _metadata(self, request: web.Request) -> web.Response:
        return self._unknown(request) or _json(
            {
                "name": self.name,
                "versions": [],
                "platform": "orbiter_joint_inference",
                "inputs": self.inputs,
                "outputs": self.outputs,
            }
        )

    async def _infer(self, request: web.Request) -> web.Response:
        from orbiter.inference.errors import InvalidInput
        from orbiter.inference.messages import rest_request
        from orbiter.inference.tensors import datatype_of, encode_data

        unknown = self._unknown(request)
        if unknown is not None:
            return unknown
        header = request.headers.get("Inference-Header-Content-Length")
        try:
            decoded = rest_request(
                self.name,
                "",
                await request.read(),
                int(header) if header is not None and header.isdigit() else None,
            )
            x = self._input(decoded.inputs)
        except InvalidInput as exc:
            return _error(exc.message, 400)
        loop = asyncio.get_running_loop()
        try:
            result: InferenceResult = await loop.run_in_executor(
                self._executor, self.ji.inference, x, self.post_process
            )
        except Exception as exc:  # the little model failed: this request has no answer
            log.exception("inference failed")
            return _error(f"inference failed: {exc}", 500)
        output = np.asarray(result.final_result)
        document: dict[str, Any] = {"model_name": self.name, "model_version": ""}
        if decoded.id is not None:
            document["id"] = decoded.id
        document["parameters"] = {
            "is_hard_example": bool(result.is_hard_example),
            "answered_by": "edge" if result.cloud_result is None else "cloud",
        }
        document["outputs"] = [
            {
                "name": self.output_name,
                "datatype": datatype_of(output.dtype),
                "shape": list(output.shape),
                "data": encode_data(output),
            }
        ]
        return _json(document)

    def _input(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The one input, checked against the model's signature (a mismatch is the client's
        error, answered 400, not the model's)."""
        from orbiter.inference.errors import InvalidInput

        [spec] = self.inputs
        if list(inputs) != [spec["name"]]:
            raise InvalidInput(f"the model takes one input {spec['name']!r}, got {list(inputs)}")
        array = inputs[spec["name"]]
        shape = spec["shape"]
        if len(array.shape) != len(shape) or any(
            want not in (-1, got) for want, got in zip(shape, array.shape, strict=True)
        ):
            raise InvalidInput(
                f"input {spec['name']!r}: shape {list(array.shape)} does not fit {shape}"
            )
        return array

    async def close(self) -> None:
        """Lets the inference in flight finish, then stops the joint inference (its reporter
        posts the final counts)."""
        self.ready = False
        await asyncio.to_thread(self._executor.shutdown)
        await asyncio.to_thread(self.ji.close)


def _edge_endpoint(environ: Mapping[str, str] | None) -> EdgeEndpoint:
    ctx = Context(environ)
    model_url = _model_file(ctx)
    config: JointInferenceConfig = _config(lambda: JointInferenceConfig.from_env(environ))
    if config.service_name is None:
        raise WorkerConfigError("SERVICE_NAME is not set: it names the edge's model endpoint")
    callback = ctx.get_str("POST_PROCESS") or "softmax"
    post_process = None if callback.lower() == "none" else callback
    if post_process is not None:
        _config(lambda: registry.get_cls(ClassType.CALLBACK, callback))
    hem = (
        None
        if config.hem_name is None
        else _config(lambda: hem_from_spec(str(config.hem_name), config.hem_parameters))
    )
    estimator = OnnxEstimator(model_url)
    try:
        estimator.load()
    except Exception as exc:  # onnxruntime's own exception types: whatever it says is why
        raise WorkerConfigError(f"MODEL_URL={model_url!r}: cannot load: {exc}") from None
    if len(estimator.session.get_inputs()) != 1:
        raise WorkerConfigError(f"MODEL_URL={model_url!r}: the little model must take one input")
    # Loaded above, so that a bad file reads as a configuration error: not again here.
    ji = _config(lambda: JointInference(estimator, hem, config=replace(config, model_url=None)))
    return EdgeEndpoint(config.service_name, ji, post_process, estimator.session)


async def run_edge(environ: Mapping[str, str] | None = None) -> None:
    """The little model with hard-example mining, served until SIGTERM."""
    ctx = Context(environ)
    port = _port(ctx, "EDGE_BIND_PORT", DEFAULT_EDGE_PORT)
    host = ctx.get_str("EDGE_BIND_IP") or DEFAULT_HOST
    endpoint = _edge_endpoint(environ)
    runner = web.AppRunner(endpoint.app, access_log=None, handle_signals=False)
    try:
        await runner.setup()
        site = web.TCPSite(runner, host, port, shutdown_timeout=5.0)
        await site.start()
        endpoint.ready = True
        config = endpoint.ji.config
        log.info(
            "model %r; hard examples (%s) go to %r at %s:%d",
            endpoint.name,
            config.hem_name or "no mining",
            config.big_model_name,
            config.big_model_ip,
            config.big_model_port,
        )
        _announce(host, int(runner.addresses[0][1]))
        await _until_stopped()
    finally:
        await runner.cleanup()
        await endpoint.close()
        s = endpoint.ji.stats
        log.info(
            "stopped after %d inferences: %d hard (upload ratio %.4f), %d cloud fallbacks",
            s.inferences,
            s.hard_examples,
            s.upload_ratio,
            s.fallbacks,
        )


# ---------------------------------------------------------------------------- entry point

_COMMANDS = {"joint-cloud": run_cloud, "joint-edge": run_edge}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orbiter.collab.workers",
        description="Run a joint-inference worker configured by its environment.",
    )
    parser.add_argument("worker", choices=sorted(_COMMANDS))
    args = parser.parse_args(argv)
    level = (Context().get_str("LOG_LEVEL") or "INFO").upper()
    try:
        logging.basicConfig(
            level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    except ValueError:
        print(f"{args.worker}: LOG_LEVEL={level!r} is not a logging level", file=sys.stderr)
        return CONFIG_ERROR
    try:
        asyncio.run(_COMMANDS[args.worker]())
    except WorkerConfigError as exc:
        print(f"{args.worker}: {exc}", file=sys.stderr)
        return CONFIG_ERROR
    except OSError as exc:  # e.g. the port is taken: one line, not a traceback
        print(f"{args.worker}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
