"""An ortserve server process on free loopback ports, for benchmarks, the load test and the tests."""

import contextlib
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (0 once it is gone)."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields else 0.0


def minor_faults(pid: int) -> int:
    """Page faults of one process so far that read nothing from disk: its first touches of fresh pages."""
    fields = _stat(pid)
    return int(fields[7]) if fields else 0


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat's fields after the command name (from the state on), or [] once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` ports free now, all different: each socket is held until all are chosen (ports chosen one
    after another may come back the same)."""
    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


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


def start_server(repository: Path, log: Path, *args: str, ready_model: str | None = None, verify=None,
                 timeout: float = 60.0) -> ServerProcess:
    """Starts `python -m server` on free ports and waits until `ready_model` (or the server) is ready.
    `verify`: for a server that serves HTTPS, its CA file or an SSL context (polled over https then)."""
    ports = free_ports(3)
    command = [sys.executable, "-m", "server", "--model-repository", str(repository), "--host", "127.0.0.1",
               "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]),
               *args]
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    server = ServerProcess(process, *ports, log)
    scheme = "http" if verify is None else "https"
    path = f"models/{ready_model}/ready" if ready_model else "health/live"
    context = verify if isinstance(verify, ssl.SSLContext) or verify is None else (
        ssl.create_default_context(cafile=str(verify)))
    wait_ready(process, f"{scheme}://{server.http_url}/v2/{path}", log, timeout, context)
    return server


def wait_ready(process: subprocess.Popen, url: str, log: Path, timeout: float,
               context: ssl.SSLContext | None = None) -> None:
    """Polls `url` until it answers 200; a process that exits or stays unready fails with its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=1, context=context) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server did not become ready:\n{log.read_text()}")


def stop_server(server: ServerProcess) -> int:
    return stop_process(server.process)


def stop_process(process: subprocess.Popen) -> int:
    """SIGTERM, then SIGKILL after 30 s (and TimeoutExpired: a server that does not stop is a fault)."""
    process.terminate()
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
