import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.models import build_repository

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    process: subprocess.Popen
    http_port: int
    grpc_port: int
    metrics_port: int
    log: Path

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def output(self) -> str:
        return self.log.read_text()


def start_server(repository: Path, log: Path, *args: str, ready_model: str | None = None):
    ports = free_port(), free_port(), free_port()
    command = [
        sys.executable,
        "-m",
        "server",
        "--model-repository",
        str(repository),
        "--host",
        "127.0.0.1",
        "--http-port",
        str(ports[0]),
        "--grpc-port",
        str(ports[1]),
        "--metrics-port",
        str(ports[2]),
        *args,
    ]
    handle = log.open("w")
    process = subprocess.Popen(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    server = ServerProcess(process, *ports, log)
    deadline = time.monotonic() + 60
    url = f"http://{server.http_url}/v2/" + (f"models/{ready_model}/ready" if ready_model else "health/live")
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.output()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server did not become ready:\n{server.output()}")


def stop_server(server: ServerProcess) -> int:
    server.process.terminate()
    try:
        return server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        raise


@pytest.fixture(scope="session")
def repository(tmp_path_factory) -> Path:
    return build_repository(tmp_path_factory.mktemp("repository"))


@pytest.fixture(scope="session")
def server(repository, tmp_path_factory):
    """One server for the API tests: explicit mode with every model loaded at start."""
    log = tmp_path_factory.mktemp("logs") / "server.log"
    process = start_server(
        repository,
        log,
        "--model-control-mode",
        "explicit",
        "--load-model",
        "*",
        "--max-request-bytes",
        str(1024 * 1024),
        ready_model="simple",
    )
    yield process
    assert stop_server(process) == 0, process.output()


os.environ.setdefault("PYTHONUNBUFFERED", "1")
