"""Triton's response cache against a real server process (`--cache-config local,size=N`): a repeated
request is answered from the cache without running the model, each different input or set of outputs is
its own entry, the least recently used entries go first past the size, and the statistics and metrics
count hits and misses in Triton's names."""

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto

from exporters.demo import SIMPLE_CONFIG, publish, simple_model
from server.service.response_cache import cache_bytes
from tests.conftest import start_server, stop_server
from tests.models import int32_pair, relu_model, sequence_accumulator_config, sequence_accumulator_model

CACHED = "\nresponse_cache { enable: true }\n"
SIZE = 1 << 20


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    repository = tmp_path_factory.mktemp("cache")
    publish(repository, "simple", simple_model(), SIMPLE_CONFIG + CACHED)
    publish(repository, "uncached", simple_model(), SIMPLE_CONFIG.replace('"simple"', '"uncached"'))
    publish(repository, "relu", relu_model(), "max_batch_size: 4" + CACHED)
    publish(repository, "accumulator", sequence_accumulator_model(TensorProto.FLOAT),
            sequence_accumulator_config("oldest {}", "fp32_false_true: [ 0, 1 ]", CACHED))
    process = start_server(repository, repository.parent / "server.log", "--cache-config",
                           f"local,size={SIZE}", ready_model="relu")
    yield process
    assert stop_server(process) == 0, process.output()


def stats(client, model: str) -> dict:
    return client.get_inference_statistics(model)["model_stats"][0]


def test_a_repeated_request_is_answered_from_the_cache_without_running_the_model(served):
    http = httpclient.InferenceServerClient(served.http_url)
    grpc = grpcclient.InferenceServerClient(served.grpc_url)
    inputs, a, b = int32_pair(httpclient)
    for _ in range(3):
        result = http.infer("simple", inputs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    grpc_inputs, _, _ = int32_pair(grpcclient)  # the same tensors over gRPC: the same entry
    np.testing.assert_array_equal(grpc.infer("simple", grpc_inputs).as_numpy("OUTPUT0"), a + b)
    only = http.infer("simple", inputs, outputs=[httpclient.InferRequestedOutput("OUTPUT1")])  # its own entry
    np.testing.assert_array_equal(only.as_numpy("OUTPUT1"), a - b)
    other, c, d = int32_pair(httpclient, seed=1)
    np.testing.assert_array_equal(http.infer("simple", other).as_numpy("OUTPUT0"), c + d)
    model = stats(http, "simple")
    assert model["execution_count"] == 3  # the first request, the one asking for OUTPUT1, the other input
    inference = model["inference_stats"]
    assert inference["cache_hit"]["count"] == 3 and inference["cache_miss"]["count"] == 3
    assert inference["success"]["count"] == 6 and inference["cache_hit"]["ns"] > 0
    for _ in range(2):
        http.infer("uncached", inputs)
    uncached = stats(http, "uncached")
    assert uncached["execution_count"] == 2 and uncached["inference_stats"]["cache_hit"]["count"] == 0
    metrics = httpx.get(f"http://127.0.0.1:{served.metrics_port}/metrics", timeout=10).text
    assert 'nv_cache_num_hits_per_model{model="simple",version="1"} 3.0' in metrics
    assert 'nv_cache_num_misses_per_model{model="simple",version="1"} 3.0' in metrics
    assert 'nv_cache_hit_duration_per_model{model="simple"' in metrics
    assert 'model="uncached"' not in "".join(line for line in metrics.splitlines() if "nv_cache" in line)


def test_past_its_size_the_cache_forgets_the_least_recently_used_first(served):
    client = httpclient.InferenceServerClient(served.http_url)

    def relu(seed: int) -> None:  # 256 KiB in, 256 KiB out: four outputs fill the cache
        x = httpclient.InferInput("x", [1, 65536], "FP32")
        data = np.random.default_rng(seed).standard_normal((1, 65536), dtype=np.float32)
        x.set_data_from_numpy(data)
        np.testing.assert_array_equal(client.infer("relu", [x]).as_numpy("y"), np.maximum(data, 0))

    def executions() -> int:
        return stats(client, "relu")["execution_count"]

    for seed in range(4):
        relu(seed)
    relu(0)  # a hit: 0 is now the most recently used
    assert executions() == 4
    relu(4)  # a fifth entry: 1, the least recently used, goes
    relu(0)
    assert executions() == 5
    relu(1)
    assert executions() == 6


def test_a_stateful_model_cannot_enable_the_cache(served):
    client = httpclient.InferenceServerClient(served.http_url)
    assert not client.is_model_ready("accumulator")
    index = {row["name"]: row for row in client.get_model_repository_index()}
    assert "response_cache cannot serve a stateful model" in index["accumulator"]["reason"]


def test_cache_flags_take_triton_s_forms_and_refuse_others():
    assert cache_bytes([]) == 0 and cache_bytes(["local,size=1048576"]) == 1048576
    assert cache_bytes([], 4096) == 4096  # --response-cache-byte-size
    with pytest.raises(ValueError, match="'local' .* not 'redis'"):
        cache_bytes(["redis,host=localhost"])
    with pytest.raises(ValueError, match="expected local,size=<bytes>"):
        cache_bytes(["local,size=big"])


def test_without_a_server_cache_a_models_setting_changes_nothing(tmp_path):
    publish(tmp_path, "simple", simple_model(), SIMPLE_CONFIG + CACHED)
    process = start_server(tmp_path, tmp_path / "server.log", ready_model="simple")
    try:
        client = httpclient.InferenceServerClient(process.http_url)
        inputs, a, b = int32_pair(httpclient)
        for _ in range(2):
            np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), a + b)
        assert stats(client, "simple")["execution_count"] == 2
    finally:
        assert stop_server(process) == 0


def test_a_cached_answer_cannot_be_changed_by_the_requests_it_answers():
    """A hit hands out the kept arrays themselves: they are read-only, and each hit gets its own mapping,
    so a front end that wrote into an answer, or added to it, could not change the next one's."""
    import asyncio
    from types import SimpleNamespace

    from server.core.stats import ModelStats, Timing
    from server.service.response_cache import ResponseCache

    cache, model = ResponseCache(SIZE), SimpleNamespace(name="m", version=1, stats=ModelStats())
    feeds, computed = {"x": np.arange(4, dtype=np.float32)}, []

    async def run():
        computed.append(1)
        return {"y": feeds["x"] * 2}, Timing()

    async def ask():
        return (await cache.through(model, feeds, ["y"], run))[0]

    first, hit, again = (asyncio.run(ask()) for _ in range(3))
    assert len(computed) == 1 and first["y"].flags.writeable  # the run's own array goes to its request
    with pytest.raises(ValueError, match="read-only"):
        hit["y"][0] = 7
    hit["z"] = np.zeros(1)
    assert set(again) == {"y"} and again["y"].tolist() == [0, 2, 4, 6]
