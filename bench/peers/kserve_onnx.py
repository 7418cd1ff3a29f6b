"""KServe's Python model server serving one ONNX file: the peer `bench/inference.py` measures.

Runs in its own virtual environment (KServe pins protobuf<7 and a web stack of its own), e.g.
``python -m venv /tmp/kserve-venv && /tmp/kserve-venv/bin/pip install kserve==0.21.0
onnxruntime==1.32.0``. Usage: ``python kserve_onnx.py MODEL.onnx NAME HTTP_PORT GRPC_PORT``.
The model follows KServe's custom-model recipe: onnxruntime in ``load``, v2 tensors in and out.
"""

from __future__ import annotations

import logging
import sys

import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class OnnxModel(Model):  # type: ignore[misc]
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.session: ort.InferenceSession | None = None
        self.load()

    def load(self) -> bool:
        self.session = ort.InferenceSession(self.path, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.ready = True
        return True

    async def predict(
        self,
        payload: InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> InferResponse:
        assert self.session is not None
        x = payload.inputs[0].as_numpy()
        (y,) = self.session.run([self.output_name], {self.input_name: x})
        # Binary tensors back when they came in binary (REST); gRPC answers in raw contents.
        binary = bool(headers and "inference-header-content-length" in headers)
        out = InferOutput(name=self.output_name, shape=list(y.shape), datatype="FP32")
        out.set_data_from_numpy(np.ascontiguousarray(y), binary_data=binary)
        return InferResponse(
            response_id=payload.id or "",
            model_name=self.name,
            infer_outputs=[out],
            use_binary_outputs=binary,
        )


if __name__ == "__main__":
    path, name, http_port, grpc_port = sys.argv[1:5]
    del sys.argv[1:]  # KServe parses sys.argv for its own flags at import and start
    server = ModelServer(
        http_port=int(http_port), grpc_port=int(grpc_port), workers=1, enable_latency_logging=False
    )
    # A log line per request is not what is being measured: give the peer its best setting.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    server.start([OnnxModel(name, path)])
