"""Reloads under traffic: no request fails, and a failed reload leaves the model serving."""

import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from exporters.demo import SIMPLE_CONFIG, publish, simple_model
from tests.conftest import ROOT, free_ports, start_server, stop_server
from tests.models import offset_model

SIMPLE_CONFIG_JSON = json.dumps({"max_batch_size": 8, "dynamic_batching": {}})
BROKEN = '{"input": [{"name": "NOT_AN_INPUT", "data_type": "TYPE_INT32", "dims": [16]}]}'


@pytest.fixture
def reload_server(tmp_path):
    root = tmp_path / "repository"
    publish(root, "simple", simple_model(), SIMPLE_CONFIG)
    server = start_server(root, tmp_path / "server.log", "--model-control-mode", "explicit",
                          "--load-model", "*", "--access-log", "false", ready_model="simple")
    yield server
    assert stop_server(server) == 0, server.output()


def _infer_until(stop: threading.Event, server, index: int) -> tuple[int, list[str]]:
    module = httpclient if index % 2 else grpcclient
    client = module.InferenceServerClient(server.http_url if index % 2 else server.grpc_url)
    data = np.arange(16, dtype=np.int32)[None] + index
    inputs = [module.InferInput(name, [1, 16], "INT32") for name in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(data)
    done, failures = 0, []
    while not stop.is_set():
        try:
            result = client.infer("simple", inputs)
            assert np.array_equal(result.as_numpy("OUTPUT0"), data * 2)
            done += 1
        except InferenceServerException as error:
            failures.append(error.message())
    client.close()
    return done, failures


def test_twenty_reloads_under_traffic_fail_no_request_and_a_broken_one_keeps_the_model(reload_server):
    control = httpclient.InferenceServerClient(reload_server.http_url)
    stop = threading.Event()
    with ThreadPoolExecutor(8) as pool:
        clients = [pool.submit(_infer_until, stop, reload_server, index) for index in range(8)]
        for _ in range(20):
            control.load_model("simple")
        with pytest.raises(InferenceServerException) as broken:
            control.load_model("simple", config=BROKEN)
        for _ in range(3):  # traffic goes on after the failed reload
            control.load_model("simple")
        stop.set()
        results = [future.result() for future in clients]
    assert [failures for _, failures in results] == [[]] * 8
    assert all(done > 0 for done, _ in results), results
    assert broken.value.status() == "400"
    assert "NOT_AN_INPUT" in broken.value.message()
    assert "keep serving" in broken.value.message()
    assert reload_server.output().count("reloaded model 'simple'") == 23


def test_a_failed_reload_leaves_the_model_ready_and_says_why_in_the_index(reload_server):
    control = httpclient.InferenceServerClient(reload_server.http_url)
    with pytest.raises(InferenceServerException):
        control.load_model("simple", config=BROKEN)
    assert control.is_model_ready("simple") and control.is_server_ready()
    rows = [row for row in control.get_model_repository_index() if row["name"] == "simple"]
    assert rows[0]["state"] == "READY"
    assert "reload failed" in rows[0]["reason"] and "NOT_AN_INPUT" in rows[0]["reason"]
    data = np.ones((1, 16), np.int32)
    inputs = [httpclient.InferInput(name, [1, 16], "INT32") for name in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(data)
    assert np.array_equal(control.infer("simple", inputs).as_numpy("OUTPUT1"), data * 0)
    control.load_model("simple")  # a good reload clears the reason
    rows = [row for row in control.get_model_repository_index() if row["name"] == "simple"]
    assert rows[0]["reason"] == ""


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_load_with_file_overrides_serves_those_files_and_a_plain_reload_keeps_them(reload_server, protocol):
    module = httpclient if protocol == "http" else grpcclient
    url = reload_server.http_url if protocol == "http" else reload_server.grpc_url
    client = module.InferenceServerClient(url)
    model = offset_model(7).SerializeToString()
    config = json.dumps({"max_batch_size": 2})
    client.load_model("simple", config=config, files={"file:1/model.onnx": model})

    def infer():
        tensor = module.InferInput("x", [1, 1], "INT64")
        tensor.set_data_from_numpy(np.array([[5]], np.int64))
        return int(client.infer("simple", [tensor]).as_numpy("y")[0, 0])

    assert infer() == 12
    client.load_model("simple")  # no config: the last override stays, as in Triton
    assert infer() == 12
    for key in ("file:../escape/model.onnx", "file:/etc/model.onnx", "file:1/a\0b", "file:"):
        with pytest.raises(InferenceServerException) as refused:
            client.load_model("simple", config=config, files={key: model})
        assert "inside the model directory" in refused.value.message()
    with pytest.raises(InferenceServerException) as no_config:
        client.load_model("simple", files={"file:1/model.onnx": model})
    assert "need a 'config' override" in no_config.value.message()
    assert infer() == 12  # refused loads changed nothing
    client.load_model("simple", config=SIMPLE_CONFIG_JSON)  # a new config, the repository's files again
    tensor = module.InferInput("INPUT0", [1, 16], "INT32")
    tensor.set_data_from_numpy(np.ones((1, 16), np.int32))
    other = module.InferInput("INPUT1", [1, 16], "INT32")
    other.set_data_from_numpy(np.ones((1, 16), np.int32))
    assert client.infer("simple", [tensor, other]).as_numpy("OUTPUT0").tolist() == [[2] * 16]
    client.close()


def test_a_file_override_that_is_not_base64_is_refused(reload_server):
    body = {"parameters": {"config": "{}", "file:1/model.onnx": "not base64!"}}
    response = httpx.post(f"http://{reload_server.http_url}/v2/repository/models/simple/load", json=body)
    assert response.status_code == 400 and "is not valid base64" in response.json()["error"]


FROZEN_AT_LOAD = """
import asyncio, gc, sys
from pathlib import Path
from server.main import serve
from server.repository.registry import ModelRegistry
from server.settings import Settings

async def start(self):
    print(gc.get_freeze_count(), flush=True)
    raise SystemExit(0)

ModelRegistry.start = start
http, grpc, metrics = (int(p) for p in sys.argv[2:])
asyncio.run(serve(Settings(Path(sys.argv[1]), host="127.0.0.1", http_port=http, grpc_port=grpc,
                           metrics_port=metrics)))
"""


def test_the_modules_objects_are_frozen_before_the_models_load(tmp_path):
    """A full collection then scans what serving makes, not every module object (a pause of the event
    loop, and of every request in flight, under load), while what a model holds stays collectable once
    it is unloaded."""
    publish(tmp_path, "simple", simple_model(), SIMPLE_CONFIG)
    ports = [str(port) for port in free_ports(3)]
    done = subprocess.run([sys.executable, "-c", FROZEN_AT_LOAD, str(tmp_path), *ports], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) > 20_000, done.stdout
