"""Joint inference: both mining modes, the cloud fallback and deadline, counting each hard
example once, the Open Inference Protocol client, reports to the local controller, the
estimators, and the acceptance scenario S1 on digits with our models (slow)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from orbiter.collab import (
    IBT,
    CloudClient,
    CloudDeadlineExceeded,
    CloudError,
    CloudOnly,
    Context,
    CrossEntropy,
    InferenceResult,
    JointInference,
    JointInferenceConfig,
    JointInferenceStats,
    OnnxEstimator,
    ParameterError,
    Random,
    Reporter,
    TorchEstimator,
    big_model_server,
    call_accepting,
    hem_from_spec,
    instantiate,
    softmax,
)
from orbiter.collab.mining import HemFilter

from .digits import DigitsModels, accuracy, train_and_export
from .doubles import FakeLocalController, FakeOipServer, FixedEstimator, StubCloud, serve

CONFIDENT = np.array([[5.0, 0.0]])  # softmax (0.993, 0.007): CrossEntropy confidence 0.94
UNSURE = np.zeros((1, 2))  # softmax (0.5, 0.5): confidence 0
CLOUD = np.array([[0.0, 7.0]])
EASY, HARD = np.array([[1.0, 0.0]]), np.array([[-1.0, 0.0]])


def edge_model(x: Any) -> np.ndarray:
    return CONFIDENT if np.asarray(x)[0, 0] > 0 else UNSURE


def make_ji(
    estimator: Any, hem: HemFilter | str | Mapping[str, Any] | None, cloud: Any, **options: Any
) -> JointInference:
    """A joint inference configured only by its arguments (the environment left out)."""
    options.setdefault("config", JointInferenceConfig())
    options.setdefault("report", False)
    return JointInference(estimator, hem, cloud=cloud, **options)


def counts(stats: JointInferenceStats) -> tuple[int, int, int, int]:
    return stats.inferences, stats.hard_examples, stats.cloud_calls, stats.fallbacks


# ------------------------------------------------------------------ inference-then-mining


def test_inference_then_mining_sends_hard_examples_to_the_cloud() -> None:
    edge, cloud = FixedEstimator(edge_model), StubCloud(lambda x: CLOUD)
    with make_ji(edge, CrossEntropy(), cloud) as ji:
        easy = ji.inference(EASY, post_process="softmax")
        assert isinstance(easy, InferenceResult)
        assert easy.is_hard_example is False and easy.cloud_result is None
        assert easy.final_result is easy.edge_result
        np.testing.assert_allclose(easy.final_result, softmax(CONFIDENT))

        is_hard, final, edge_result, cloud_result = ji.inference(HARD, post_process=softmax)
        assert is_hard is True
        np.testing.assert_allclose(edge_result, [[0.5, 0.5]])  # what the filter judged
        np.testing.assert_allclose(final, softmax(CLOUD))  # post_process applied to the cloud's
        assert cloud_result is final
        assert len(cloud.calls) == 1 and cloud.calls[0] is HARD  # the raw input goes up
        assert cloud.timeouts == [ji.deadline]
        assert counts(ji.stats) == (2, 1, 1, 0) and ji.stats.upload_ratio == 0.5
    assert cloud.closed


def test_cloud_failure_keeps_the_edge_answer_and_counts_each_hard_example_once() -> None:
    cloud = StubCloud(lambda x: CLOUD)
    cloud.fail = True
    with make_ji(FixedEstimator(edge_model), CrossEntropy(), cloud) as ji:
        results = [ji.inference(x, post_process="softmax") for x in (HARD, EASY, HARD, HARD)]
        for r in results:
            assert r.final_result is r.edge_result and r.cloud_result is None
        assert [r.is_hard_example for r in results] == [True, False, True, True]
        # Sedna would report 7 inferences and ratio 3/7 here.
        assert counts(ji.stats) == (4, 3, 3, 3)
        assert ji.stats.upload_ratio == 0.75 and ji.stats.deadline_misses == 0
        cloud.fail = False  # the cloud is back: the next hard example is answered by it
        back = ji.inference(HARD, post_process="softmax")
        np.testing.assert_allclose(back.final_result, softmax(CLOUD))
        assert counts(ji.stats) == (5, 4, 4, 3)


def test_an_answer_past_the_deadline_is_a_fallback() -> None:
    now = [100.0]
    cloud = StubCloud(lambda x: CLOUD)
    cloud.on_call = lambda: now.__setitem__(0, now[0] + 2.0)  # the cloud takes 2 s
    ji = make_ji(
        FixedEstimator(edge_model), CrossEntropy(), cloud, deadline=1.0, clock=lambda: now[0]
    )
    late = ji.inference(HARD, post_process="softmax")
    assert late.is_hard_example and late.final_result is late.edge_result
    assert late.cloud_result is None
    assert counts(ji.stats) == (1, 1, 1, 1) and ji.stats.deadline_misses == 1
    cloud.on_call = lambda: now.__setitem__(0, now[0] + 0.5)
    in_time = ji.inference(HARD, post_process="softmax")
    assert in_time.final_result is in_time.cloud_result
    np.testing.assert_allclose(in_time.final_result, softmax(CLOUD))
    assert counts(ji.stats) == (2, 2, 2, 1)


def test_no_filter_means_every_example_is_easy() -> None:
    cloud = StubCloud(lambda x: CLOUD)
    ji = make_ji(FixedEstimator(edge_model), None, cloud)
    assert ji.hem is None
    assert not ji.inference(HARD).is_hard_example and not cloud.calls
    assert counts(ji.stats) == (1, 0, 0, 0)


def test_a_failing_filter_counts_as_easy() -> None:
    def broken(result: Any) -> bool:
        raise RuntimeError("bug in a user's filter")

    ji = make_ji(FixedEstimator(edge_model), broken, StubCloud(lambda x: CLOUD))
    assert ji.inference(HARD).is_hard_example is False


# ------------------------------------------------------------------ mining-then-inference


def test_mining_then_inference_routes_the_raw_input() -> None:
    edge, cloud = FixedEstimator(edge_model), StubCloud(lambda x: CLOUD)
    seen: list[Any] = []

    def on_input(data: Any) -> bool:  # judges the raw input, as an LLM router would
        seen.append(data)
        return bool(np.asarray(data)[0, 0] < 0)

    ji = make_ji(edge, on_input, cloud, mining_mode="mining-then-inference")
    easy = ji.inference(EASY)
    assert (easy.is_hard_example, easy.cloud_result) == (False, None)
    np.testing.assert_array_equal(easy.final_result, CONFIDENT)
    hard = ji.inference(HARD)
    assert hard.is_hard_example and hard.edge_result is None  # the edge did not run
    np.testing.assert_array_equal(hard.final_result, CLOUD)
    assert len(edge.predict_kwargs) == 1 and seen == [EASY, HARD]

    cloud.fail = True  # an answer is mandatory: the edge answers after all
    fallback = ji.inference(HARD)
    assert fallback.is_hard_example and fallback.cloud_result is None
    np.testing.assert_array_equal(fallback.final_result, UNSURE)
    assert fallback.edge_result is fallback.final_result
    assert counts(ji.stats) == (3, 2, 2, 1)


def test_mining_then_inference_needs_a_filter() -> None:
    with pytest.raises(ValueError, match="needs a hard-example filter"):
        make_ji(
            FixedEstimator(edge_model),
            None,
            StubCloud(lambda x: x),
            mining_mode=None,
            config=JointInferenceConfig(mining_mode="mining-then-inference"),
        )
    with pytest.raises(ValueError, match="mining mode 'both'"):
        make_ji(FixedEstimator(edge_model), "EdgeOnly", StubCloud(lambda x: x), mining_mode="both")


# ------------------------------------------------------------------ filters, estimators


def test_filter_from_the_environment_sedna_dict_or_name() -> None:
    cloud = StubCloud(lambda x: x)
    config = JointInferenceConfig(
        hem_name="CrossEntropy",
        hem_parameters='[{"key": "threshold_cross_entropy", "value": "0.9"}]',
    )
    from_env = make_ji(FixedEstimator(edge_model), None, cloud, config=config)
    assert isinstance(from_env.hem, CrossEntropy) and from_env.hem.threshold_cross_entropy == 0.9
    sedna = make_ji(
        FixedEstimator(edge_model), {"method": "IBT", "param": {"threshold_img": "0.9"}}, cloud
    )
    assert isinstance(sedna.hem, IBT) and sedna.hem.threshold_img == 0.9
    by_name = make_ji(FixedEstimator(edge_model), "CloudOnly", cloud)
    assert isinstance(by_name.hem, CloudOnly)
    bad = JointInferenceConfig(
        hem_name="Random", hem_parameters='[{"key": "random_ratio", "value": "lots"}]'
    )
    with pytest.raises(ParameterError, match="random_ratio='lots'"):
        make_ji(FixedEstimator(edge_model), None, cloud, config=bad)


def test_estimator_class_is_created_with_the_arguments_it_takes_and_loaded() -> None:
    class Edge:
        def __init__(self, model_url: str | None = None, scale: float = 1.0) -> None:
            self.created_with = (model_url, scale)
            self.loaded: list[str] = []

        def load(self, model_url: str) -> None:
            self.loaded.append(model_url)

        def predict(self, data: Any) -> Any:  # takes no keyword arguments
            return UNSURE

    ji = make_ji(
        Edge,
        "EdgeOnly",
        StubCloud(lambda x: x),
        model_url="/models/edge.onnx",
        estimator_kwargs={"scale": 2.0, "unrelated": True},
    )
    assert isinstance(ji.estimator, Edge)
    assert ji.estimator.created_with == ("/models/edge.onnx", 2.0)
    assert ji.estimator.loaded == ["/models/edge.onnx"]
    ji.inference(EASY, threshold=0.5)  # a keyword predict does not take is left out

    instance = FixedEstimator(edge_model)
    ji = make_ji(instance, "EdgeOnly", StubCloud(lambda x: x))
    assert ji.estimator is instance and instance.loaded == []  # no MODEL_URL: nothing to load
    ji.inference(EASY, threshold=0.25, unrelated=1)
    assert instance.predict_kwargs == [{"threshold": 0.25}]


def test_call_accepting_and_instantiate() -> None:
    def f(a: int, b: int = 0) -> int:
        return a + b

    def g(a: int, **kw: Any) -> int:
        return a + len(kw)

    assert call_accepting(f, 1, b=2, c=3) == 3
    assert call_accepting(g, 1, b=2, c=3) == 3
    obj = object()
    assert instantiate(obj, x=1) is obj
    assert isinstance(instantiate(dict), dict)


def test_torch_estimator_contract(tmp_path: Path) -> None:
    from orbiter.models import load_digits_split

    split = load_digits_split(seed=0)
    est = TorchEstimator("digits-edge", epochs=2, seed=0)
    metrics = est.train((split.x_train, split.y_train), (split.x_test, split.y_test))
    assert {"loss", "accuracy", "val_accuracy"} <= set(metrics)
    assert set(est.evaluate((split.x_test, split.y_test))) == {"loss", "accuracy"}
    logits = est.predict(split.x_test[:5])
    assert logits.shape == (5, 10) and logits.dtype == np.float32
    np.testing.assert_allclose(est.predict_proba(split.x_test[:5]).sum(1), 1.0, rtol=1e-5)

    weights = est.get_weights()
    other = TorchEstimator("digits-edge", seed=1)
    assert not np.allclose(other.predict(split.x_test[:5]), logits)
    other.set_weights(weights)
    np.testing.assert_array_equal(other.predict(split.x_test[:5]), logits)
    with pytest.raises(ValueError, match="expected"):
        other.set_weights(weights[:-1])

    path = est.save(tmp_path / "edge.pt")
    restored = TorchEstimator("digits-edge", seed=2)
    restored.load(path)
    np.testing.assert_array_equal(restored.predict(split.x_test[:5]), logits)


# ------------------------------------------------------------------------ configuration


def test_config_from_the_environment() -> None:
    env = {
        "WORKER_NAME": "helmet-edge-ab12c",
        "SERVICE_NAME": "helmet",
        "NAMESPACE": "ai",
        "LC_SERVER": "http://localhost:9100",
        "MODEL_URL": "/home/data/edge.onnx",
        "BIG_MODEL_IP": "helmet-cloud.ai",
        "HEM_NAME": "IBT",
        "HEM_PARAMETERS": '[{"key": "threshold_img", "value": "0.9"}]',
        "LC_PERIOD": "5",
    }
    config = JointInferenceConfig.from_env(env)
    assert config.worker_name == "helmet-edge-ab12c" and config.namespace == "ai"
    assert (config.big_model_ip, config.big_model_port) == ("helmet-cloud.ai", 5000)
    assert config.big_model_name == "helmet"  # BIG_MODEL_NAME defaults to SERVICE_NAME
    assert config.mining_mode == "inference-then-mining" and config.deadline == 10.0
    assert config.lc_period == 5.0 and config.model_url == "/home/data/edge.onnx"
    assert JointInferenceConfig.from_env({}).lc_server is None
    assert Context({"batch_size": "8"}).get_parameters("batch_size") == "8"
    assert Context({"BATCH_SIZE": "8"}).get_parameters("batch_size") == "8"
    assert Context({"BATCH_SIZE": ""}).get_parameters("batch_size", "d") == "d"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BIG_MODEL_PORT": "http"}, "BIG_MODEL_PORT='http' is not an integer"),
        ({"BIG_MODEL_PORT": "70000"}, "BIG_MODEL_PORT='70000' is out of range"),
        ({"LC_PERIOD": "0"}, "LC_PERIOD='0' must be > 0"),
        ({"BIG_MODEL_DEADLINE": "soon"}, "BIG_MODEL_DEADLINE='soon' is not a number"),
        ({"MINING_MODE": "sideways"}, "MINING_MODE='sideways' is not one of"),
    ],
)
def test_config_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        JointInferenceConfig.from_env(env)


# --------------------------------------------------------- the Open Inference Protocol client


async def test_cloud_client_speaks_the_protocol_over_one_connection() -> None:
    fake = FakeOipServer()
    async with serve(fake.app) as port:
        client = CloudClient("127.0.0.1", port, "double", timeout=5.0)

        def three() -> list[np.ndarray]:
            return [client.infer(np.array([[1.0, 2.5]], dtype=np.float64)) for _ in range(3)]

        outs = await asyncio.to_thread(three)
        for out in outs:
            assert out.dtype == np.float32
            np.testing.assert_array_equal(out, [[2.0, 5.0]])
        # The input's name and datatype came from the model's metadata, read once.
        assert fake.requests[0]["inputs"] == [
            {"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.5]}
        ]
        assert client.connections == 1 and len(fake.client_ports) == 1  # kept alive
        client.close()


async def test_cloud_client_errors() -> None:
    fake = FakeOipServer()
    async with serve(fake.app) as port:
        with CloudClient("127.0.0.1", port, "double", timeout=5.0) as client:
            fake.status = 500
            with pytest.raises(CloudError, match=r"HTTP 500.*model exploded"):
                await asyncio.to_thread(client.infer, np.ones((1, 2)))
        missing = CloudClient("127.0.0.1", port, "missing", timeout=5.0)
        with missing, pytest.raises(CloudError, match="HTTP 404"):
            await asyncio.to_thread(missing.infer, np.ones((1, 2)))
    with CloudClient("127.0.0.1", port, "double", timeout=5.0) as client:  # nobody listens
        with pytest.raises(CloudError) as err:
            await asyncio.to_thread(client.infer, np.ones((1, 2)))
        assert not isinstance(err.value, CloudDeadlineExceeded)
    with pytest.raises(ValueError, match="BIG_MODEL_NAME"):
        CloudClient("127.0.0.1", port, "")


async def test_cloud_client_refuses_an_oversized_reply(monkeypatch: pytest.MonkeyPatch) -> None:
    import orbiter.collab.cloud as cloud

    monkeypatch.setattr(cloud, "MAX_REPLY", 64)  # a reply of 2 numbers is over 64 bytes of JSON
    fake = FakeOipServer()
    async with serve(fake.app) as port:
        client = CloudClient("127.0.0.1", port, "double", timeout=5.0)
        with client, pytest.raises(CloudError, match="reply over 64 bytes"):
            await asyncio.to_thread(client.infer, np.ones((1, 2)))


async def test_cloud_client_reconnects_when_the_server_dropped_the_idle_connection() -> None:
    fake = FakeOipServer()
    async with serve(fake.app) as port:
        client = CloudClient("127.0.0.1", port, "double", timeout=5.0, input_name="x")
        await asyncio.to_thread(client.infer, np.ones((1, 2), dtype=np.float32))
    # The server restarted on the same port: the kept-alive connection is dead.
    runner_app = FakeOipServer()
    from aiohttp import web

    runner = web.AppRunner(runner_app.app, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        out = await asyncio.to_thread(client.infer, np.ones((1, 2), dtype=np.float32))
        np.testing.assert_array_equal(out, [[2.0, 2.0]])
        assert client.connections == 2
    finally:
        client.close()
        await runner.cleanup()


async def test_cloud_deadline_falls_back_to_the_edge() -> None:
    fake = FakeOipServer()
    fake.hang = True
    async with serve(fake.app) as port:
        try:
            client = CloudClient("127.0.0.1", port, "double", input_name="x")
            with make_ji(FixedEstimator(edge_model), "CloudOnly", client, deadline=0.3) as ji:
                started = time.monotonic()
                result = await asyncio.to_thread(ji.inference, HARD)
                elapsed = time.monotonic() - started
            assert 0.3 <= elapsed < 3.0
            assert result.final_result is result.edge_result and result.cloud_result is None
            assert counts(ji.stats) == (1, 1, 1, 1) and ji.stats.deadline_misses == 1
            with pytest.raises(CloudDeadlineExceeded):
                await asyncio.to_thread(client.infer, HARD, timeout=0.2)
        finally:
            fake.release()


# --------------------------------------------------------------- reports to the local controller


def lc_config(port: int, period: float = 3600.0) -> JointInferenceConfig:
    return JointInferenceConfig(
        lc_server=f"http://127.0.0.1:{port}",
        worker_name="helmet-edge-ab12c",
        service_name="helmet",
        namespace="ai",
        lc_period=period,
    )


async def test_reporter_posts_sedna_body_with_the_stats() -> None:
    lc = FakeLocalController()  # a test double: the local controller is not written yet
    async with serve(lc.app) as port:
        cloud = StubCloud(lambda x: CLOUD)
        ji = make_ji(
            FixedEstimator(edge_model), CrossEntropy(), cloud, config=lc_config(port), report=None
        )  # LC_SERVER is set: the reporter starts
        try:
            assert ji.reporter is not None
            assert not await asyncio.to_thread(ji.reporter.report)  # nothing happened yet
            for x in (HARD, EASY, EASY, HARD, EASY):
                ji.inference(x, post_process="softmax")
            assert await asyncio.to_thread(ji.reporter.report)
            body = lc.bodies.get_nowait()
            stats = ji.stats
            assert {k: v for k, v in body.items() if k != "ownerInfo"} == {
                "name": "helmet-edge-ab12c",
                "namespace": "ai",
                "ownerName": "helmet",
                "ownerKind": "jointinferenceservice",
                "kind": "inference",
                "status": "running",
                "results": [],
            }
            info = body["ownerInfo"]
            assert info["inferenceNumber"] == stats.inferences == 5
            assert info["hardExampleNumber"] == stats.hard_examples == 2
            assert info["uploadCloudRatio"] == stats.upload_ratio == 0.4
            assert info["fallbackNumber"] == 0 and info["cloudCallNumber"] == 2
            start = datetime.fromisoformat(info["startTime"])
            assert start <= datetime.fromisoformat(info["updateTime"])
            assert not await asyncio.to_thread(ji.reporter.report)  # unchanged: not posted
            assert lc.bodies.empty()
        finally:
            await asyncio.to_thread(ji.close)  # nothing new: the last report posts nothing
        assert lc.bodies.empty() and ji.reporter is None


async def test_reporter_thread_reports_each_period_and_stops_cleanly() -> None:
    lc = FakeLocalController()
    async with serve(lc.app) as port:
        ji = make_ji(
            FixedEstimator(edge_model),
            CrossEntropy(),
            StubCloud(lambda x: CLOUD),
            config=lc_config(port, period=0.05),
            report=True,
        )
        try:
            reporter = ji.reporter
            assert reporter is not None
            ji.inference(HARD, post_process="softmax")
            body = await asyncio.wait_for(lc.bodies.get(), 10)
            assert body["ownerInfo"]["inferenceNumber"] == 1
            assert body["ownerInfo"]["uploadCloudRatio"] == 1.0
            ji.inference(EASY, post_process="softmax")
            while (body := await asyncio.wait_for(lc.bodies.get(), 10))["ownerInfo"][
                "inferenceNumber"
            ] != 2:
                pass
            assert body["ownerInfo"]["uploadCloudRatio"] == 0.5
            ji.inference(EASY, post_process="softmax")
        finally:
            await asyncio.to_thread(ji.close)
        # Stopping reported what the last period had not yet (or nothing, if it had).
        last = body
        while not lc.bodies.empty():
            last = lc.bodies.get_nowait()
        assert last["ownerInfo"]["inferenceNumber"] == 3
        assert not any(t.name == "orbiter-lc-reporter" for t in threading.enumerate())


async def test_reporter_retries_what_the_lc_refused() -> None:
    lc = FakeLocalController()
    info = {"inferenceNumber": 0}
    async with serve(lc.app) as port:
        reporter = Reporter(
            f"127.0.0.1:{port}",
            worker_name="w",
            owner_name="s",
            owner_kind="jointinferenceservice",
            owner_info=lambda: dict(info),
        )
        info["inferenceNumber"] = 1
        lc.refuse = True
        assert not await asyncio.to_thread(reporter.report)
        lc.refuse = False
        assert await asyncio.to_thread(reporter.report)  # the change was not lost
        assert (await lc.bodies.get())["ownerInfo"] == {"inferenceNumber": 1}
        assert reporter.posted == 1
        await asyncio.to_thread(reporter.stop)  # never started: only the final report


def test_reporter_configuration_errors() -> None:
    def info() -> dict[str, Any]:
        return {}

    with pytest.raises(ValueError, match="WORKER_NAME"):
        Reporter.for_worker(
            JointInferenceConfig(lc_server="http://lc:9100"), kind="k", owner_info=info
        )
    with pytest.raises(ValueError, match="LC_SERVER is not set"):
        Reporter.for_worker(JointInferenceConfig(), kind="k", owner_info=info)
    with pytest.raises(ValueError, match="not an http"):
        Reporter("ftp://lc", worker_name="w", owner_name="s", owner_kind="k", owner_info=info)


# ------------------------------------------------------------ acceptance scenario S1 (slow)

THRESHOLD = "0.9"  # CrossEntropy confidence below which an example goes to the cloud


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DigitsModels:
    return train_and_export(tmp_path_factory.mktemp("digits"), seed=0)


def stream(
    models: DigitsModels, port: int, hem: HemFilter, indices: range | None = None
) -> Callable[[], tuple[list[InferenceResult], JointInferenceStats]]:
    """A job for a worker thread: the held-out split through a fresh joint inference, one
    sample per call (the edge is our ONNX export, created by class and loaded by URL)."""
    x = models.split.x_test

    def run() -> tuple[list[InferenceResult], JointInferenceStats]:
        cloud = CloudClient("127.0.0.1", port, "digits-cloud", timeout=10.0)
        with make_ji(OnnxEstimator, hem, cloud, model_url=str(models.edge_onnx)) as ji:
            results = [
                ji.inference(x[i : i + 1], post_process="softmax")
                for i in (indices or range(len(x)))
            ]
            return results, ji.stats

    return run


@pytest.mark.slow
def test_s1_models_meet_their_constraints(digits: DigitsModels, tmp_path: Path) -> None:
    x, y = digits.split.x_test, digits.split.y_test
    assert digits.edge_flops * 10 <= digits.cloud_flops
    edge = OnnxEstimator(digits.edge_onnx)
    np.testing.assert_allclose(edge.predict(x), digits.edge_logits_torch, atol=1e-4)
    np.testing.assert_allclose(edge.predict_proba(x[:3]).sum(1), 1.0, rtol=1e-5)
    assert edge.evaluate((x, y))["accuracy"] >= 0.85
    copy = Path(edge.save(tmp_path / "copy.onnx"))
    assert copy.read_bytes() == digits.edge_onnx.read_bytes()
    with pytest.raises(NotImplementedError):
        edge.train((x, y))


@pytest.mark.slow
async def test_s1_joint_inference_on_digits(
    digits: DigitsModels, record_property: Callable[[str, object], None]
) -> None:
    y = digits.split.y_test
    edge_only = OnnxEstimator(digits.edge_onnx).evaluate((digits.split.x_test, y))["accuracy"]
    server = big_model_server(
        digits.cloud_onnx, name="digits-cloud", port=0, host="127.0.0.1", intra_op_threads=1
    )
    async with server:
        assert server.http_port is not None
        port = server.http_port
        cloud_results, cloud_stats = await asyncio.to_thread(stream(digits, port, CloudOnly()))
        hem = hem_from_spec(
            "CrossEntropy", [{"key": "threshold_cross_entropy", "value": THRESHOLD}]
        )
        results, stats = await asyncio.to_thread(stream(digits, port, hem))
        ratio = sum(r.is_hard_example for r in results) / len(results)  # counted by hand
        random_hem = Random(random_ratio=ratio, seed=0)
        random_results, random_stats = await asyncio.to_thread(stream(digits, port, random_hem))

    cloud_only = accuracy([r.final_result for r in cloud_results], y)
    joint = accuracy([r.final_result for r in results], y)
    randomly = accuracy([r.final_result for r in random_results], y)
    gap_closed = (joint - edge_only) / (cloud_only - edge_only)
    numbers = {
        "threshold_cross_entropy": float(THRESHOLD),
        "samples": len(y),
        "edge_only": round(edge_only, 4),
        "cloud_only": round(cloud_only, 4),
        "joint": round(joint, 4),
        "upload_ratio": round(ratio, 4),
        "gap_closed": round(gap_closed, 4),
        "random_joint": round(randomly, 4),
        "random_upload_ratio": round(random_stats.upload_ratio, 4),
        "edge_flops": digits.edge_flops,
        "cloud_flops": digits.cloud_flops,
    }
    print(f"\nS1 digits: {numbers}")
    for key, value in numbers.items():
        record_property(key, value)

    assert edge_only >= 0.85 and cloud_only >= 0.97
    assert cloud_stats.upload_ratio == 1.0 and cloud_stats.fallbacks == 0
    assert ratio <= 0.30
    assert joint >= cloud_only - 0.02
    assert joint >= edge_only + 0.05
    assert gap_closed >= 0.75
    assert abs(random_stats.upload_ratio - ratio) <= 0.05  # an equal budget, give or take
    assert joint >= randomly + 0.03
    # The stats are the truth: every example counted once, each hard example once.
    hard = sum(r.is_hard_example for r in results)
    assert (stats.inferences, stats.hard_examples, stats.cloud_calls) == (len(y), hard, hard)
    assert stats.upload_ratio == ratio and stats.fallbacks == 0
    assert all(r.cloud_result is not None for r in results if r.is_hard_example)


@pytest.mark.slow
async def test_s1_cloud_stopped_mid_run_every_request_still_answered(
    digits: DigitsModels,
) -> None:
    x, y = digits.split.x_test, digits.split.y_test
    half = len(x) // 2
    hem = CrossEntropy(threshold_cross_entropy=THRESHOLD)
    server = big_model_server(
        digits.cloud_onnx, name="digits-cloud", port=0, host="127.0.0.1", intra_op_threads=1
    )
    await server.start()
    assert server.http_port is not None
    cloud = CloudClient("127.0.0.1", server.http_port, "digits-cloud", timeout=10.0)
    ji = make_ji(OnnxEstimator, hem, cloud, model_url=str(digits.edge_onnx))
    try:

        def run(indices: range) -> list[InferenceResult]:
            return [ji.inference(x[i : i + 1], post_process="softmax") for i in indices]

        before = await asyncio.to_thread(run, range(half))
        await server.stop()  # the cloud goes away mid-run
        after = await asyncio.to_thread(run, range(half, len(x)))
    finally:
        await server.stop()
        ji.close()

    results = before + after
    assert len(results) == len(x)
    for r in results:  # every request answered, with a full 1 x 10 result
        assert r.final_result is not None and np.asarray(r.final_result).shape == (1, 10)
    for r in after:  # the edge's answer, whenever the example was hard
        assert r.final_result is r.edge_result and r.cloud_result is None
    hard_after = sum(r.is_hard_example for r in after)
    hard = hard_after + sum(r.is_hard_example for r in before)
    assert hard_after > 0
    stats = ji.stats
    assert stats.fallbacks == hard_after
    assert (stats.inferences, stats.hard_examples, stats.cloud_calls) == (len(x), hard, hard)
    edge_after = OnnxEstimator(digits.edge_onnx).evaluate((x[half:], y[half:]))["accuracy"]
    assert accuracy([r.final_result for r in after], y[half:]) == edge_after
    print(f"\nS1 with the cloud stopped after {half}: {hard_after} fallbacks of {len(after)}")


@pytest.fixture(autouse=True)
def _no_reporter_threads() -> Iterator[None]:
    yield
    assert not any(t.name == "orbiter-lc-reporter" for t in threading.enumerate())
