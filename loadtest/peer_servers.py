"""The servers bench_peers measures, as processes on loopback: ortserve, KServe's and MLServer's Python
servers (each in its own virtual environment under .bench/, installed on first use) and a grpc.aio server
that answers without work; with the CPU time of each one's process tree."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from loadtest.server_process import free_port, start_server, stop_server

VENVS = Path(__file__).resolve().parent.parent / ".bench"
PEERS_DIR = Path(__file__).resolve().parent / "peers"
PEERS = {"kserve": "kserve==0.21.0", "mlserver": "mlserver==1.7.1"}
FLOOR = "grpc-floor"  # a grpc.aio server that answers without work: grpcio's own cost per call


def model_file(root: Path, model: str) -> Path:
    return root / model / "1" / "model.onnx"


@dataclass
class Running:
    name: str
    process: subprocess.Popen
    http_port: int
    grpc_port: int
    stop: object

    def cpu_seconds(self) -> float:
        return sum(_cpu(pid) for pid in _tree(self.process.pid))


def _tree(pid: int) -> list[int]:
    pids, index = [pid], 0
    while index < len(pids):
        for task in Path(f"/proc/{pids[index]}/task").glob("*/children"):
            pids += [int(child) for child in task.read_text().split()]
        index += 1
    return pids


def _cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peer_python(name: str) -> tuple[Path | None, str]:
    """The peer's environment (pip-installed on first use with this ONNX Runtime); (None, why) if it fails."""
    venv = VENVS / f"{name}-venv"
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    if not marker.exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        print(f"installing {PEERS[name]} into {venv}", flush=True)
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", PEERS[name],
                               f"onnxruntime=={ort.__version__}"], capture_output=True, text=True)
        if done.returncode:
            shutil.rmtree(venv, ignore_errors=True)
            return None, f"pip install {PEERS[name]} failed: {done.stderr.strip()[-400:]}"
        marker.touch()
    return python, ""


def peer_version(python: Path, package: str) -> str:
    code = f"import importlib.metadata as m; print(m.version('{package}'))"
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True).stdout.strip()


def wait_ready(process: subprocess.Popen, url: str, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}: {log.read_text()[-600:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"not ready after {timeout:.0f} s: {log.read_text()[-600:]}")


def start_ortserve(root: Path, work: Path, model: str) -> Running:
    server = start_server(root, work / "ortserve.log", "--access-log", "false", "--model-control-mode",
                          "explicit", "--load-model", model, ready_model=model)
    return Running("ortserve", server.process, server.http_port, server.grpc_port,
                   lambda: stop_server(server))


def start_kserve(python: Path, root: Path, work: Path, model: str) -> Running:
    http, grpc_port = free_port(), free_port()
    log = work / f"kserve-{model}.log"
    command = [str(python), str(PEERS_DIR / "kserve_server.py"), model, str(model_file(root, model)), "0",
               "--http_port", str(http), "--grpc_port", str(grpc_port), "--enable_latency_logging", "false"]
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    wait_ready(process, f"http://127.0.0.1:{http}/v2/models/{model}/ready", log)
    return Running("kserve", process, http, grpc_port, lambda: _terminate(process))


def start_mlserver(python: Path, root: Path, work: Path, model: str) -> Running:
    http, grpc_port = free_port(), free_port()
    folder = work / f"mlserver-{model}"
    folder.mkdir()
    shutil.copy(PEERS_DIR / "mlserver_runtime.py", folder)
    # parallel_workers 0: inference in the server's own process, as the other two run it (and faster
    # for these models than MLServer's default of one worker process); debug false: no access log
    settings = {"debug": False, "parallel_workers": 0, "http_port": http, "grpc_port": grpc_port,
                "metrics_port": free_port(), "host": "127.0.0.1"}
    (folder / "settings.json").write_text(json.dumps(settings))
    model_settings = {"name": model, "implementation": "mlserver_runtime.OnnxModel",
                      "parameters": {"extra": {"path": str(model_file(root, model)), "intra_op_threads": 0}}}
    (folder / "model-settings.json").write_text(json.dumps(model_settings))
    log = work / f"mlserver-{model}.log"
    process = subprocess.Popen([str(python.parent / "mlserver"), "start", str(folder)], cwd=folder,
                               stdout=log.open("w"), stderr=subprocess.STDOUT)
    wait_ready(process, f"http://127.0.0.1:{http}/v2/models/{model}/ready", log)
    return Running("mlserver", process, http, grpc_port, lambda: _terminate(process))


def start_floor(work: Path) -> Running:
    grpc_port = free_port()
    log = work / "grpc-floor.log"
    process = subprocess.Popen([sys.executable, str(PEERS_DIR / "grpc_floor.py"), str(grpc_port)],
                               stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", grpc_port)) == 0:
                return Running(FLOOR, process, 0, grpc_port, lambda: _terminate(process))
        time.sleep(0.2)
    _terminate(process)
    raise RuntimeError(f"the grpc.aio floor server did not start: {log.read_text()[-300:]}")


def _terminate(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
