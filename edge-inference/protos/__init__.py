"""Generated Open Inference Protocol v2 gRPC stubs (`make protos`)."""
