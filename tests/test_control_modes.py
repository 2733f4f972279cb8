"""Model control modes, readiness and shutdown of a real server process."""

import shutil
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import onnxruntime
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from exporters.demo import SIMPLE_CONFIG, publish, simple_model
from tests.conftest import free_ports, start_server, stop_server
from tests.models import int32_pair, relu_model


@pytest.fixture
def good_repository(tmp_path):
    root = tmp_path / "repository"
    publish(root, "simple", simple_model(), SIMPLE_CONFIG)
    publish(root, "relu", relu_model(), None)
    return root


def wait_for(condition, seconds=30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_mode_none_serves_all_and_refuses_load(good_repository, tmp_path):
    server = start_server(good_repository, tmp_path / "log", "--access-log", "false", ready_model="simple")
    try:
        http = httpclient.InferenceServerClient(server.http_url)
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        assert http.is_server_ready() and grpc.is_server_ready()
        assert http.is_model_ready("relu")
        for client, status in ((http, "503"), (grpc, "StatusCode.UNAVAILABLE")):
            for action in (client.load_model, client.unload_model):
                with pytest.raises(InferenceServerException) as error:
                    action("relu")
                assert error.value.status() == status
                refusal = "explicit model load / unload is not allowed if polling is enabled"
                assert refusal in error.value.message()
                assert "--model-control-mode explicit" in error.value.message()
        assert http.is_model_ready("relu")
    finally:
        assert stop_server(server) == 0
    assert "ortserve.access" not in server.output()


def test_bad_padding_parameters_make_only_that_model_unavailable(good_repository, tmp_path):
    publish(
        good_repository,
        "padded_badly",
        relu_model(),
        """
parameters { key: "pad_inputs" value { string_value: "x:zero" } }
""",
    )
    server = start_server(
        good_repository, tmp_path / "log", "--strict-readiness", "false", ready_model="simple"
    )
    try:
        client = httpclient.InferenceServerClient(server.http_url)
        rows = {row["name"]: row for row in client.get_model_repository_index()}
        assert rows["padded_badly"]["state"] == "UNAVAILABLE"
        assert "pad_inputs" in rows["padded_badly"]["reason"]
        assert rows["relu"]["state"] == "READY"
    finally:
        assert stop_server(server) == 0


def test_explicit_mode_loads_only_named_models(good_repository, tmp_path):
    server = start_server(
        good_repository,
        tmp_path / "log",
        "--model-control-mode",
        "explicit",
        "--load-model",
        "relu",
        ready_model="relu",
    )
    try:
        client = httpclient.InferenceServerClient(server.http_url)
        assert client.is_server_ready()
        assert not client.is_model_ready("simple")
        states = {row["name"]: row["state"] for row in client.get_model_repository_index()}
        assert states == {"relu": "READY", "simple": "UNAVAILABLE"}
        client.load_model("simple")
        assert client.is_model_ready("simple")
    finally:
        assert stop_server(server) == 0


def test_poll_mode_follows_the_repository(good_repository, tmp_path):
    server = start_server(
        good_repository,
        tmp_path / "log",
        "--model-control-mode",
        "poll",
        "--repository-poll-secs",
        "0.3",
        ready_model="simple",
    )
    try:
        client = httpclient.InferenceServerClient(server.http_url)
        publish(good_repository, "relu2", relu_model(), None)
        assert wait_for(lambda: client.is_model_ready("relu2")), server.output()
        x = np.array([[-1.0, 1.0]], dtype=np.float32)
        tensor = httpclient.InferInput("x", [1, 2], "FP32")
        tensor.set_data_from_numpy(x)
        np.testing.assert_array_equal(client.infer("relu2", [tensor]).as_numpy("y"), [[0.0, 1.0]])
        shutil.rmtree(good_repository / "relu2")
        assert wait_for(lambda: not client.is_model_ready("relu2")), server.output()
        # unready as its unloading starts (the index says UNLOADING), gone from the index once it is done
        assert wait_for(lambda: "relu2" not in {row["name"] for row in client.get_model_repository_index()})
    finally:
        assert stop_server(server) == 0


def test_readiness_without_strictness(repository, tmp_path):
    server = start_server(repository, tmp_path / "log", "--strict-readiness", "false", ready_model="simple")
    try:
        assert httpclient.InferenceServerClient(server.http_url).is_server_ready()
        assert "failed to load model 'broken'" in server.output()
    finally:
        assert stop_server(server) == 0


@pytest.mark.parametrize("flags, ready", [
    (("--strict-readiness", "true"), True),  # Triton's: every model it serves is ready, with none too
    (("--strict-readiness", "false"), True),
    (("--min-ready-models", "1"), False),  # ortserve's, for probes that must wait for a model
])
def test_a_server_with_no_model_is_ready_unless_it_must_have_some(good_repository, tmp_path, flags, ready):
    server = start_server(good_repository, tmp_path / "log", "--model-control-mode", "explicit", *flags)
    try:
        http = httpclient.InferenceServerClient(server.http_url)
        assert http.is_server_live()
        assert http.is_server_ready() == ready
        assert grpcclient.InferenceServerClient(server.grpc_url).is_server_ready() == ready
    finally:
        assert stop_server(server) == 0


def test_missing_repository_fails_at_start(tmp_path):
    with pytest.raises(RuntimeError, match="not a directory"):
        start_server(tmp_path / "nowhere", tmp_path / "log")


def test_gpu_instance_falls_back_to_cpu_and_says_so(tmp_path):
    root = tmp_path / "repository"
    publish(root, "relu", relu_model(), "instance_group [{ kind: KIND_GPU, count: 1 }]")
    server = start_server(root, tmp_path / "log", ready_model="relu")
    try:
        client = httpclient.InferenceServerClient(server.http_url)
        tensor = httpclient.InferInput("x", [1, 2], "FP32")
        tensor.set_data_from_numpy(np.array([[-2.0, 2.0]], dtype=np.float32))
        np.testing.assert_array_equal(client.infer("relu", [tensor]).as_numpy("y"), [[0.0, 2.0]])
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            assert "ONNX Runtime has no CUDAExecutionProvider" in server.output()
    finally:
        assert stop_server(server) == 0


def test_access_log_lines(server):
    """The session server logs one JSON line per request, for both front ends, and one per gRPC stream."""
    import json

    def entries(protocol: str, target: str) -> list[dict]:
        lines = [line.split("ortserve.access: ", 1)[1] for line in server.output().splitlines()
                 if "ortserve.access: " in line]
        return [e for e in map(json.loads, lines) if e["protocol"] == protocol and e["target"] == target]

    infer_target = "/v2/models/simple/infer"
    earlier = len(entries("http", infer_target))  # the session's other tests' requests
    httpclient.InferenceServerClient(server.http_url).is_model_ready("simple")
    grpcclient.InferenceServerClient(server.grpc_url).is_model_ready("simple")
    httpx.post(f"http://{server.http_url}{infer_target}", content=b"{")  # the lean route too
    streams = len(entries("grpc", "ModelStreamInfer"))
    client, answered = grpcclient.InferenceServerClient(server.grpc_url), threading.Event()
    client.start_stream(callback=lambda result, error: answered.set())
    tensor = grpcclient.InferInput("x", [1, 2], "FP32")
    tensor.set_data_from_numpy(np.array([[-1.0, 2.0]], np.float32))
    client.async_stream_infer("relu", [tensor])
    assert answered.wait(30)
    client.stop_stream()  # a stream's line comes once it ends
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        http = entries("http", "/v2/models/simple/ready")
        grpc = entries("grpc", "ModelReady")
        infer = entries("http", infer_target)[earlier:]
        stream = entries("grpc", "ModelStreamInfer")[streams:]
        if http and grpc and infer and stream:
            assert http[-1]["status"] == "200" and grpc[-1]["status"] == "OK" and infer[-1]["status"] == "400"
            assert stream[-1]["status"] == "OK" and stream[-1]["client"]
            assert http[-1]["ms"] >= 0
            return
        time.sleep(0.1)
    raise AssertionError("no access log lines for both protocols")


def run_to_exit(repository, *flags: str) -> subprocess.CompletedProcess:
    ports = [str(port) for port in free_ports(3)]
    return subprocess.run([sys.executable, "-m", "server", "--model-repository", str(repository),
                           "--host", "127.0.0.1", "--http-port", ports[0], "--grpc-port", ports[1],
                           "--metrics-port", ports[2], *flags], capture_output=True, text=True, timeout=120)


def test_exit_on_error_stops_a_start_where_a_model_failed_to_load(good_repository):
    (good_repository / "broken" / "1").mkdir(parents=True)
    (good_repository / "broken" / "1" / "model.onnx").write_bytes(b"not ONNX")
    stopped = run_to_exit(good_repository, "--exit-on-error", "true")
    assert stopped.returncode == 1
    assert "failed to load all models (broken); --exit-on-error false serves the models" in stopped.stderr
    refused = run_to_exit(good_repository, "--strict-model-config=true")
    assert refused.returncode == 2 and "--strict-model-config true" in refused.stderr


def test_a_tritonserver_command_line_starts_and_says_what_it_ignores(good_repository, tmp_path):
    log = tmp_path / "server.log"
    server = start_server(good_repository, tmp_path / "stdout", "--strict-model-config=false",
                          "--model-load-thread-count=4", "--pinned-memory-pool-byte-size=268435456",
                          "--allow-gpu-metrics=false",
                          "--backend-config=onnxruntime,enable-global-threadpool=1",
                          f"--log-file={log}", "--log-info=false", "--id=edge-7", ready_model="simple")
    try:
        httpclient.InferenceServerClient(server.http_url).infer("simple", int32_pair(httpclient)[0])
        assert httpclient.InferenceServerClient(server.http_url).get_server_metadata()["name"] == "edge-7"
        assert grpcclient.InferenceServerClient(server.grpc_url).get_server_metadata().name == "edge-7"
    finally:
        assert stop_server(server) == 0
    written = log.read_text()
    assert "--model-load-thread-count is ignored: models load one after another" in written
    assert "--backend-config is ignored" in written and "--id" not in written
    assert " INFO " not in written  # --log-info=false
    assert "WARNING" not in server.output()  # the log went to the file
