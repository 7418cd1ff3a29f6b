"""ONNX Runtime inference server (Open Inference Protocol). Not built yet."""
