"""Model zoo, ONNX export, registry and artifact store. Not built yet."""
