"""A port in use stops a second server before it starts anything: one line naming the port, no traceback."""

import subprocess
import sys

import pytest
import tritonclient.grpc as grpcclient

from exporters.demo import SIMPLE_CONFIG, publish, simple_model
from tests.conftest import ROOT, free_ports, start_server, stop_server


@pytest.fixture(scope="module")
def first_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("repository")
    publish(root, "simple", simple_model(), SIMPLE_CONFIG)
    server = start_server(root, tmp_path_factory.mktemp("logs") / "first.log", ready_model="simple")
    yield root, server
    assert stop_server(server) == 0, server.output()


@pytest.mark.parametrize("taken, name", [("grpc", "gRPC"), ("http", "HTTP"), ("metrics", "metrics")])
def test_a_port_in_use_stops_the_server_with_one_line(first_server, taken, name):
    root, first = first_server
    ports = dict(zip(("http", "grpc", "metrics"), free_ports(3)))
    ports[taken] = getattr(first, f"{taken}_port")
    second = subprocess.run(
        [sys.executable, "-m", "server", "--model-repository", str(root), "--host", "127.0.0.1",
         *[arg for key, port in ports.items() for arg in (f"--{key}-port", str(port))]],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    output = second.stdout + second.stderr
    assert second.returncode == 1, output
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"cannot listen for {name} on 127.0.0.1:{ports[taken]}" in errors[0], output
    assert "in use" in errors[0]
    for never in ("Traceback", "service at", "metrics at", "loaded model", "Event loop is closed"):
        assert never not in output, output
    # the first server still owns its gRPC port and answers on it
    client = grpcclient.InferenceServerClient(first.grpc_url)
    assert client.is_server_ready()
    client.close()


def test_each_server_event_is_logged_once(first_server):
    """Two uvicorn servers run (HTTP and metrics); their lifecycle lines are written once."""
    _, server = first_server
    for line in ("Started server process", "Waiting for application startup", "Application startup complete"):
        assert server.output().count(line) == 1, server.output()


def test_log_format_json_writes_one_json_object_per_line(tmp_path):
    import json

    import httpx

    publish(tmp_path / "repository", "simple", simple_model(), SIMPLE_CONFIG)
    server = start_server(tmp_path / "repository", tmp_path / "server.log", "--log-format", "json",
                          ready_model="simple")
    httpx.post(f"http://{server.http_url}/v2/models/absent/infer", json={"inputs": []})
    assert stop_server(server) == 0, server.output()
    entries = [json.loads(line) for line in server.output().splitlines()]
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    assert any("loaded model 'simple'" in entry.get("message", "") for entry in entries), entries
    access = [entry["access"] for entry in entries if "access" in entry]
    expected = {"method": "POST", "target": "/v2/models/absent/infer", "status": "404"}
    assert expected.items() <= access[-1].items()
