# `make demo` runs the story on embedded defaults; `make test` runs the tests;
# `make check` lints, type-checks and enforces the layers. Each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test check bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# mypy and import-linter need the import tree on disk; the product's folders are mapped by
# setuptools, so build a tree of symlinks that mirrors the `orbiter.*` namespace.
build/pkgview/orbiter: $(STAMP) $(wildcard orbiter/*.py)
	rm -rf build/pkgview && mkdir -p build/pkgview/orbiter
	for f in orbiter/*; do ln -s ../../../$$f build/pkgview/orbiter/; done
	ln -s ../../../orchestration build/pkgview/orbiter/orchestration
	ln -s ../../../ai-collab build/pkgview/orbiter/collab
	ln -s ../../../edge-inference build/pkgview/orbiter/inference
	ln -s ../../../models build/pkgview/orbiter/models
	ln -s ../../../satellite build/pkgview/orbiter/satellite

demo: $(STAMP)
	$(BIN)/orbiter demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

check: $(STAMP) build/pkgview/orbiter
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	cd build/pkgview && ../../$(BIN)/mypy --config-file ../../pyproject.toml -p orbiter
	PYTHONPATH=build/pkgview $(BIN)/lint-imports --config pyproject.toml

bench: $(STAMP)
	$(BIN)/python bench/apiserver.py

clean:
	rm -rf build $(VENV)
