# `make demo` runs the story on embedded defaults; `make test` runs the tests;
# `make check` lints, type-checks and enforces the layers. Each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test check bench clean protos

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# mypy and import-linter need the import tree on disk; the product's folders are mapped by
# setuptools, so copy them into a tree that mirrors the `orbiter.*` namespace.
.PHONY: build/pkgview
build/pkgview: $(STAMP)
	rm -rf build/pkgview && mkdir -p build/pkgview
	cp -r orbiter build/pkgview/orbiter
	cp -r orchestration build/pkgview/orbiter/orchestration
	cp -r ai-collab build/pkgview/orbiter/collab
	cp -r edge-inference build/pkgview/orbiter/inference
	cp -r models build/pkgview/orbiter/models
	cp -r satellite build/pkgview/orbiter/satellite
	find build/pkgview -name __pycache__ -prune -exec rm -rf {} +

demo: $(STAMP)
	$(BIN)/orbiter demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

check: $(STAMP) build/pkgview
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	cd build/pkgview && ../../$(BIN)/mypy --config-file ../../pyproject.toml -p orbiter
	cd build/pkgview && ../../$(BIN)/lint-imports --config ../../pyproject.toml --no-cache

bench: $(STAMP)
	$(BIN)/python bench/apiserver.py

# Regenerates the committed gRPC stubs: DMI (orchestration/apis/dmi/api.proto) and the Open
# Inference Protocol (edge-inference/protos/grpc_predict_v2.proto). The OIP messages go into a
# private descriptor pool: Triton's client defines the same `inference.*` names in the default one.
protos: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I orchestration/apis --python_out=orchestration/apis \
		--pyi_out=orchestration/apis --grpc_python_out=orchestration/apis \
		orchestration/apis/dmi/api.proto
	sed -i 's/^from dmi import api_pb2 as dmi_dot_api__pb2$$/from . import api_pb2 as dmi_dot_api__pb2/' \
		orchestration/apis/dmi/api_pb2_grpc.py
	$(BIN)/python -m grpc_tools.protoc -I edge-inference --python_out=edge-inference \
		--pyi_out=edge-inference --grpc_python_out=edge-inference \
		edge-inference/protos/grpc_predict_v2.proto
	sed -i 's/^from protos import grpc_predict_v2_pb2 as/from . import grpc_predict_v2_pb2 as/' \
		edge-inference/protos/grpc_predict_v2_pb2_grpc.py
	sed -i 's/^DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(/_POOL = _descriptor_pool.DescriptorPool()\nDESCRIPTOR = _POOL.AddSerializedFile(/' \
		edge-inference/protos/grpc_predict_v2_pb2.py

clean:
	rm -rf build $(VENV)
