"""Known traffic moves every Triton counter by exactly what was sent; statistics agree with metrics."""

import asyncio

import httpx
import numpy as np
import pytest
import tritonclient.grpc.aio as grpcaio
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException


def scrape(server) -> dict[tuple, float]:
    text = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, model, **labels) -> float:
    key = (name, tuple(sorted({"model": model, "version": "1", **labels}.items())))
    return samples.get(key, 0.0)


def moved(before, after, name, model, **labels) -> float:
    return value(after, name, model, **labels) - value(before, name, model, **labels)


def lookup(api, indices):
    return api.client.infer("lookup", [api.input("index", np.array(indices, dtype=np.int64).reshape(-1, 1))])


def test_counters_move_by_what_was_sent(api, server):
    before = scrape(server)
    for _ in range(3):
        np.testing.assert_array_equal(lookup(api, [0, 3]).as_numpy("value"), [[10.0], [40.0]])
    with pytest.raises(InferenceServerException) as past:  # index 7 is past the table: ONNX Runtime refuses
        lookup(api, [7])
    api.assert_error(past.value, "INVALID_ARGUMENT", "the model rejected the input", "out of data bounds")
    with pytest.raises(InferenceServerException):  # wrong datatype: refused before running
        api.client.infer("lookup", [api.input("index", np.zeros((1, 1), dtype=np.float32))])
    after = scrape(server)

    assert moved(before, after, "nv_inference_request_success_total", "lookup") == 3
    assert (
        moved(before, after, "nv_inference_count_total", "lookup") == 6
    )  # 3 x 2 rows; failed runs do not count
    assert moved(before, after, "nv_inference_exec_count_total", "lookup") == 3
    # bad input is the client's fault, not the backend's: neither pages whoever watches BACKEND
    assert moved(before, after, "nv_inference_request_failure_total", "lookup", reason="BACKEND") == 0
    assert moved(before, after, "nv_inference_request_failure_total", "lookup", reason="OTHER") == 2
    assert moved(before, after, "nv_inference_request_failure_total", "lookup", reason="REJECTED") == 0
    assert moved(before, after, "ortserve_request_duration_seconds_count", "lookup") == 5
    assert moved(before, after, "ortserve_batch_size_count", "lookup") == 3
    assert (
        moved(
            before, after, "ortserve_inference_requests_total", "lookup", protocol=api.name, outcome="success"
        )
        == 3
    )
    assert moved(before, after, "nv_inference_request_duration_us_total", "lookup") > 0
    assert moved(before, after, "nv_inference_compute_infer_duration_us_total", "lookup") > 0


def test_rejections_are_counted(server):
    """A burst at a model whose queue holds one request: every 503 the clients saw is counted."""
    x = np.ones((1, 8), dtype=np.float32)

    async def burst():
        client = grpcaio.InferenceServerClient(server.grpc_url)
        try:
            tensor = grpcaio.InferInput("x", [1, 8], "FP32")
            tensor.set_data_from_numpy(x)
            return await asyncio.gather(
                *(client.infer("limited", [tensor]) for _ in range(24)), return_exceptions=True
            )
        finally:
            await client.close()

    before = scrape(server)
    results = asyncio.run(burst())
    after = scrape(server)
    rejected = [r for r in results if isinstance(r, InferenceServerException)]
    assert rejected, "the burst should overflow a queue of one"
    assert all(r.status() == "StatusCode.UNAVAILABLE" and "Exceeds maximum queue size" in r.message()
               for r in rejected)
    assert moved(before, after, "nv_inference_request_failure_total", "limited", reason="REJECTED") == len(
        rejected
    )
    assert moved(before, after, "nv_inference_request_success_total", "limited") == 24 - len(rejected)


def test_statistics_extension_agrees_with_metrics(api, server):
    lookup(api, [1])
    stats = api.statistics("lookup")[0]
    samples = scrape(server)
    assert value(samples, "nv_inference_request_success_total", "lookup") == int(
        stats["inference_stats"]["success"]["count"]
    )
    assert value(samples, "nv_inference_exec_count_total", "lookup") == int(stats["execution_count"])
    assert value(samples, "nv_inference_count_total", "lookup") == int(stats["inference_count"])
    queue_us = int(stats["inference_stats"]["queue"].get("ns", 0)) / 1000
    assert value(samples, "nv_inference_queue_duration_us_total", "lookup") == pytest.approx(queue_us)


def test_system_and_load_gauges(server):
    samples = scrape(server)
    assert 0.0 <= samples[("nv_cpu_utilization", ())] <= 1.0
    assert samples[("nv_cpu_memory_used_bytes", ())] > 0
    assert value(samples, "nv_model_load_duration_secs", "simple") > 0
    assert value(samples, "nv_inference_pending_request_count", "simple") == 0


def nvml_gpus() -> list[str]:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return []
    handles = [pynvml.nvmlDeviceGetHandleByIndex(index) for index in range(pynvml.nvmlDeviceGetCount())]
    return [pynvml.nvmlDeviceGetUUID(handle) for handle in handles]


@pytest.mark.gpu
@pytest.mark.skipif(not nvml_gpus(), reason="needs NVML (nvidia-ml-py) and an NVIDIA GPU")
def test_gpu_gauges_name_every_gpu_by_uuid(server):
    samples = scrape(server)
    for uuid in nvml_gpus():
        labels = (("gpu_uuid", uuid.decode() if isinstance(uuid, bytes) else uuid),)
        used = samples[("nv_gpu_memory_used_bytes", labels)]
        assert 0 < used <= samples[("nv_gpu_memory_total_bytes", labels)]
        assert 0.0 <= samples[("nv_gpu_utilization", labels)] <= 1.0


def dashboard_metrics() -> list[tuple[str, str]]:
    """(panel title, metric name) for every metric the Grafana dashboard queries."""
    import json
    import re
    from pathlib import Path

    dashboard = json.loads(
        (Path(__file__).parent.parent / "deploy/grafana/ortserve-dashboard.json").read_text()
    )
    return [
        (panel["title"], name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b(nv_\w+|ortserve_\w+)\b", target["expr"])
    ]


def assert_served(served: set[str], queried: list[tuple[str, str]]) -> None:
    suffixes = ("_total", "_bucket", "_count", "_sum", "")
    for title, name in queried:
        assert any(
            name + s in served or name.removesuffix("_bucket") + s in served for s in suffixes
        ), (title, name)


def test_dashboard_queries_name_served_metrics(server):
    """Every metric the Grafana dashboard queries is one the server exposes (generation metrics are
    checked where a generation model is served, in test_generation.py)."""
    served = {name for name, _ in scrape(server)}
    queried = [(t, n) for t, n in dashboard_metrics() if "generation" not in t.lower()
               and "token" not in t.lower() and "sequences" not in t.lower()]
    assert {"nv_inference_request_success", "nv_inference_queue_duration_us"} <= {n for _, n in queried}
    assert_served(served, queried)


def test_counters_carry_triton_names_exactly(server):
    """Triton writes `nv_inference_count{...}`, not `nv_inference_count_total`: dashboards depend on it."""
    text = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).text
    for name in (
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_input_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_compute_output_duration_us",
    ):
        assert f"# TYPE {name} counter\n" in text
        assert f'\n{name}{{model="simple",' in text
        assert f"{name}_total" not in text
    assert "\nnv_inference_pending_request_count{" in text and "\nnv_model_load_duration_secs{" in text
