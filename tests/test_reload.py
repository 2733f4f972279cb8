"""Reloads under traffic: no request fails, and a failed reload leaves the model serving."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from exporters.demo import SIMPLE_CONFIG, publish, simple_model
from tests.conftest import start_server, stop_server

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
