"""The servers the benchmarks measure ortserve beside, as processes on loopback: KServe's and MLServer's
Python servers (each in its own virtual environment under .bench/, installed on first use), a grpc.aio
server that answers without work, uvicorn and grpc.aio echoing requests back, and ortserve itself; with
the CPU time of each one's process tree."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from loadtest.server_process import (
    cpu_seconds,
    free_port,
    free_ports,
    start_server,
    stop_process,
    stop_server,
    wait_ready,
)
from server.runtime.heap import KEPT_FREE, LARGEST_FROM_HEAP

VENVS = Path(__file__).resolve().parent.parent / ".bench"
PEERS_DIR = Path(__file__).resolve().parent / "peers"
PEERS = {"kserve": "kserve==0.21.0", "mlserver": "mlserver==1.7.1"}
READY_SECONDS = 120  # a peer's first start imports its whole stack
FLOOR = "grpc-floor"  # a grpc.aio server that answers without work: grpcio's own cost per call
ECHO_FLOOR = "echo-floor"  # uvicorn and grpc.aio answering each request with its own bytes


def model_file(root: Path, model: str) -> Path:
    return root / model / "1" / "model.onnx"


@dataclass
class Running:
    name: str
    process: subprocess.Popen
    http_port: int
    grpc_port: int
    stop: Callable[[], object]

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in _tree(self.process.pid))


def _tree(pid: int) -> list[int]:
    pids, index = [pid], 0
    while index < len(pids):
        for task in Path(f"/proc/{pids[index]}/task").glob("*/children"):
            pids += [int(child) for child in task.read_text().split()]
        index += 1
    return pids


def environment(name: str, packages: list[str]) -> tuple[Path | None, str]:
    """The python of .bench/NAME-venv with `packages` pip-installed on first use; (None, why) when the
    install fails (a half-installed environment is removed)."""
    venv = VENVS / f"{name}-venv"
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    if not marker.exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        print(f"installing {' '.join(packages)} into {venv}", flush=True)
        # --no-compile: byte-compiling every file of torch-sized wheels costs as much as unpacking them
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-compile", *packages],
                              capture_output=True, text=True)
        if done.returncode:
            shutil.rmtree(venv, ignore_errors=True)
            return None, f"pip install {' '.join(packages)} failed: {done.stderr.strip()[-400:]}"
        marker.touch()
    return python, ""


def peer_python(name: str) -> tuple[Path | None, str]:
    """The peer's environment, with this ONNX Runtime."""
    return environment(name, [PEERS[name], f"onnxruntime=={ort.__version__}"])


def peer_version(python: Path, package: str) -> str:
    code = f"import importlib.metadata as m; print(m.version('{package}'))"
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True).stdout.strip()


def start_ortserve(root: Path, work: Path, model: str) -> Running:
    server = start_server(root, work / "ortserve.log", "--access-log", "false", "--model-control-mode",
                          "explicit", "--load-model", model, ready_model=model)
    return Running("ortserve", server.process, server.http_port, server.grpc_port,
                   lambda: stop_server(server))


def start_kserve(python: Path, root: Path, work: Path, model: str) -> Running:
    http, grpc_port = free_ports(2)
    log = work / f"kserve-{model}.log"
    command = [str(python), str(PEERS_DIR / "kserve_server.py"), model, str(model_file(root, model)), "0",
               "--http_port", str(http), "--grpc_port", str(grpc_port), "--enable_latency_logging", "false"]
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    wait_ready(process, f"http://127.0.0.1:{http}/v2/models/{model}/ready", log, READY_SECONDS)
    return Running("kserve", process, http, grpc_port, lambda: stop_process(process))


def start_mlserver(python: Path, root: Path, work: Path, model: str) -> Running:
    http, grpc_port, metrics_port = free_ports(3)
    folder = work / f"mlserver-{model}"
    folder.mkdir()
    shutil.copy(PEERS_DIR / "mlserver_runtime.py", folder)
    # parallel_workers 0: inference in the server's own process, as the other two run it (and faster
    # for these models than MLServer's default of one worker process); debug false: no access log
    settings = {"debug": False, "parallel_workers": 0, "http_port": http, "grpc_port": grpc_port,
                "metrics_port": metrics_port, "host": "127.0.0.1"}
    (folder / "settings.json").write_text(json.dumps(settings))
    model_settings = {"name": model, "implementation": "mlserver_runtime.OnnxModel",
                      "parameters": {"extra": {"path": str(model_file(root, model)), "intra_op_threads": 0}}}
    (folder / "model-settings.json").write_text(json.dumps(model_settings))
    log = work / f"mlserver-{model}.log"
    process = subprocess.Popen([str(python.parent / "mlserver"), "start", str(folder)], cwd=folder,
                               stdout=log.open("w"), stderr=subprocess.STDOUT)
    wait_ready(process, f"http://127.0.0.1:{http}/v2/models/{model}/ready", log, READY_SECONDS)
    return Running("mlserver", process, http, grpc_port, lambda: stop_process(process))


def start_floor(work: Path) -> Running:
    return _started_script(FLOOR, "grpc_floor.py", work, [free_port()])


def start_echo_floor(work: Path) -> Running:
    """With glibc's allocator keeping request-sized buffers, as ortserve's `keep_request_buffers` does."""
    allocator = {"MALLOC_MMAP_THRESHOLD_": str(LARGEST_FROM_HEAP), "MALLOC_TRIM_THRESHOLD_": str(KEPT_FREE)}
    return _started_script(ECHO_FLOOR, "echo_floor.py", work, free_ports(2),
                           environment={**os.environ, **allocator})


def _started_script(name: str, script: str, work: Path, ports: list[int],
                    environment: dict | None = None) -> Running:
    """One of `peers/`'s servers, given its ports (gRPC's, after HTTP's where it serves both), once every
    port takes connections."""
    log = work / f"{name}.log"
    process = subprocess.Popen([sys.executable, str(PEERS_DIR / script), *map(str, ports)],
                               stdout=log.open("w"), stderr=subprocess.STDOUT, env=environment)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        if all(_accepts(port) for port in ports):
            http_port = ports[0] if len(ports) > 1 else 0
            return Running(name, process, http_port, ports[-1], lambda: stop_process(process))
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{name} did not start: {log.read_text()[-300:]}")


def _accepts(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


PEER_STARTERS = {"kserve": start_kserve, "mlserver": start_mlserver}
