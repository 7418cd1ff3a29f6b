"""Shared by the inference tests: a repository of tiny models in tmp_path, a running server
on free ports, and clients for it."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio
from orbiter.inference import InferenceServer
from orbiter.inference.protos import grpc_predict_v2_pb2_grpc as pb_grpc

from .models import (
    fixed_model,
    int64_model,
    linear_model,
    pair_model,
    ragged_model,
    versioned_model,
    write_model,
)

CAP = 1024 * 1024  # the test servers' max_request_bytes


@pytest.fixture(autouse=True)
def _grpc_released() -> Iterator[None]:
    """grpc.aio keeps a poller thread while any channel or server object lives, and a failed
    call's traceback holds its channel in a reference cycle: collect those before the suite's
    leaked-thread check (the DMI tests' pattern)."""
    yield
    gc.collect()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    write_model(root, "linear", 1, linear_model())
    write_model(root, "pair", 1, pair_model())
    write_model(root, "int64", 1, int64_model())
    write_model(root, "fixed", 1, fixed_model())
    write_model(root, "ragged", 1, ragged_model())
    write_model(root, "versioned", 1, versioned_model(1))
    return root


def make_server(repo: Path | None, **options: Any) -> InferenceServer:
    settings: dict[str, Any] = {
        "http_port": 0,
        "grpc_port": 0,
        "metrics_port": 0,
        "max_request_bytes": CAP,
        "batch_history": 100_000,
        "intra_op_threads": 1,
    }
    return InferenceServer(repo, **(settings | options))


@pytest_asyncio.fixture
async def server(repo: Path) -> AsyncIterator[InferenceServer]:
    async with make_server(repo) as running:
        yield running


@pytest_asyncio.fixture
async def http(server: InferenceServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as session:
        yield session


@pytest_asyncio.fixture
async def stub(server: InferenceServer) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        yield stub
    # pytest holds the test's arguments through teardown: the stub's callables must let go
    # of the channel for grpc's poller thread to end before the leaked-thread check.
    vars(stub).clear()
